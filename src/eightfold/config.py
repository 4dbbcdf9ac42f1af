"""Typed objective configs: the enums, the structured-config schemas and ``ConfigError``.

The bottom layer of the package: it imports nothing from ``eightfold``, so any module may use it.

The values live in ``conf/objective/*.yaml``; the types and the documentation of every field live
here (in the style of TRL's ``DPOConfig``: each field's ``help`` says what it does). Each objective
file lists its schema in its ``defaults`` (``/schema/objective/<name>@_here_``), so a value that is
not one of a field's choices fails when the config is composed, before any data is generated or
any step is trained::

    eightfold-train objective=step_dpo objective.rejected=foo
    -> Error merging override objective.rejected=foo
       Invalid value 'foo', expected one of [pit, rest]
           full_key: objective.rejected

``compose_error_message`` turns such an error into one line, for a table or a log.

The schemas set no values (every field is ``MISSING``): a schema that added a key or turned
``epochs: 2`` into ``2.0`` would change the run hash of every existing run directory
(``tests/data/config_hashes.json`` checks that none moved).

Choices are string enums whose member names equal their values (``Positives["teacher+self"]``),
so a member is interchangeable with its plain string: ``==``, ``hash``, ``in (...)``, dict keys,
``str()``, f-strings and ``json.dumps`` all behave as for the string, and ``OmegaConf.to_yaml``
writes the plain value. Run hashes and cache keys are therefore byte-identical to those of the
plain-string configs that came before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value that cannot work; raised before any work starts."""


try:  # Python >= 3.11: str() and format() of a member give its value
    from enum import StrEnum as _StrEnum
except ImportError:  # pragma: no cover - Python 3.10

    class _StrEnum(str, Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, spec: str) -> str:
            return str.__format__(self, spec)


def _choices(name: str, values: tuple[str, ...]) -> type[_StrEnum]:
    """A string enum with member name == value (functional API: names like ``teacher+self``
    are allowed); ``module=__name__`` so that configs holding its members pickle (submitit)."""
    return _StrEnum(name, [(v, v) for v in values], module=__name__)


# One tuple per choice, the one place they are written: the enums below are built from them,
# and the objectives' own checks and messages import them from here.
REJECTED = ("pit", "rest")
PIT_RULES = ("first_zero", "argmin_advantage", "first_drop")
VALUES = ("bok", "bok_any", "mean")
SAMPLE_PROMPTS = ("train", "pool")
NEGATIVES_WHERE = ("greedy_wrong",)
POSITIVES = ("teacher+self", "self", "teacher")
INITS = ("sft", "base")
FILTERS = ("answer", "strict")
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "sigmoid_norm")
ROLLOUT_BACKENDS = ("hf",)  # a faster engine plugs in at rollouts.sample_continuations
CHOSEN_RULES = ("longest_prefix", "random")
PAIR_FORMS = ("shared_prefix", "paper")
WEIGHTINGS = ("signed", "exp", "chosen_only")

Rejected = _choices("Rejected", REJECTED)
PitRule = _choices("PitRule", PIT_RULES)
Value = _choices("Value", VALUES)
SamplePrompts = _choices("SamplePrompts", SAMPLE_PROMPTS)
NegativesWhere = _choices("NegativesWhere", NEGATIVES_WHERE)
Positives = _choices("Positives", POSITIVES)
Init = _choices("Init", INITS)
Filter = _choices("Filter", FILTERS)
LossType = _choices("LossType", LOSS_TYPES)
RolloutBackend = _choices("RolloutBackend", ROLLOUT_BACKENDS)
ChosenRule = _choices("ChosenRule", CHOSEN_RULES)
PairForm = _choices("PairForm", PAIR_FORMS)
Weighting = _choices("Weighting", WEIGHTINGS)

# The objective keys whose value is one of a fixed set, and their enums.
CHOICES: dict[str, type[_StrEnum]] = {
    "rejected": Rejected,
    "pit_rule": PitRule,
    "value": Value,
    "sample_prompts": SamplePrompts,
    "negatives_where": NegativesWhere,
    "positives": Positives,
    "init": Init,
    "filter": Filter,
    "module.loss_type": LossType,
    "rollout_backend": RolloutBackend,
    "chosen": ChosenRule,
    "pair_form": PairForm,
    "module.weighting": Weighting,
}


def _f(text: str) -> Any:
    """A schema field: no value (the YAML gives it), a help text."""
    return field(default=MISSING, metadata={"help": text})


# --- the LightningModule blocks (objective.module) -------------------------------------------


@dataclass
class ModuleConfig:
    """``objective.module``: the LightningModule and its AdamW + warmup/cosine schedule."""

    _target_: str = _f(
        "the LightningModule class, by import path (part of the run hash: the class stays there)"
    )
    lr: float = _f("peak learning rate of AdamW")
    weight_decay: float = _f("AdamW weight decay")
    betas: list[float] = _f("AdamW (beta1, beta2)")
    warmup_steps: int = _f("linear warmup steps before the cosine decay")
    min_lr_ratio: float = _f("the cosine decays to lr x this at the last step")


@dataclass
class RFTModuleConfig(ModuleConfig):
    base_lr: float = _f("init=base: the learning rate of the from-scratch run (the SFT recipe)")
    base_warmup_steps: int = _f("init=base: warmup steps of the from-scratch run")


@dataclass
class DPOModuleConfig(ModuleConfig):
    beta: float = _f("DPO beta: strength of the KL anchor to the frozen SFT model")
    loss_type: LossType = _f(  # type: ignore[valid-type]
        f"the preference loss: {' | '.join(LOSS_TYPES)} (sigmoid is the paper's)"
    )
    label_smoothing: float = _f("loss_type=robust only: assumed rate of flipped labels")
    nll_weight: float = _f("> 0 adds RPO's NLL term on the chosen completion, times this")
    preference_weight: float = _f(
        "weight of the preference loss; 0 = the matched control (the NLL term alone, same pairs)"
    )
    batch_size: int = _f("preference pairs per optimizer step (2x sequences in one forward)")
    ref_batch_size: int = _f("pairs per forward when scoring them under the frozen reference")
    collapse_threshold: float = _f(
        "warn when the chosen log-ratio falls below -this and keeps falling (likelihood collapse)"
    )


@dataclass
class AWRModuleConfig(ModuleConfig):
    weighting: Weighting = _f(  # type: ignore[valid-type]
        "signed: w = A (pushes the pit step down) | exp: w = exp(A/beta) (never negative) |"
        " chosen_only: the chosen continuations at weight 1 (the matched control)"
    )
    beta: float = _f("weighting=exp: temperature of exp(A/beta) (the per-step DPO beta)")
    max_weight: float = _f("weights are clipped to [-this, this]")
    batch_size: int = _f("weighted completions per optimizer step")


# --- shared blocks (conf/objective/common/*.yaml) --------------------------------------------


@dataclass
class _Named:
    name: str = _f("the objective's name: first part of the run name, the label in the analysis")


@dataclass
class _Samples:
    """conf/objective/common/samples.yaml: one cached sampling pass shared by rft/dpo/step_dpo/awr."""

    k: int = _f("samples drawn from pi_sft per problem")
    temperature: float = _f("sampling temperature")
    top_p: float = _f("nucleus sampling threshold (1.0 = off)")
    max_new_tokens: int = _f("token budget of one sampled solution")
    sample_batch_size: int = _f(
        "prompts per generate call; part of the RNG order, so of the result"
    )
    sample_prompts: SamplePrompts = _f(  # type: ignore[valid-type]
        "train: sample on the training problems (paper) | pool: on a fresh pool of generated"
        " problems (sources with a generator: procedural, procedural_teacher, star_graph)"
    )


@dataclass
class _Negatives:
    """conf/objective/common/negatives.yaml: which incorrect samples become rejected sides."""

    negatives_per_problem: int = _f("incorrect samples used per problem (at most k exist)")
    max_negatives: int | None = _f("incorrect samples used in all (null = every one)")
    negatives_where: NegativesWhere | None = _f(  # type: ignore[valid-type]
        "null: negatives of every problem | greedy_wrong: only of the problems whose greedy"
        " answer pi_sft gets wrong (its likely errors, not its sampling tail)"
    )


@dataclass
class _Budget:
    """conf/objective/common/budget.yaml: how long an objective on pi_sft (and its control) trains."""

    steps: int | None = _f(
        "optimizer steps: the same for an objective and its matched control (null: use epochs)"
    )
    epochs: float | None = _f("passes over the objective's data instead of steps (or null)")
    max_epochs: float = _f(
        "more passes than this over the data (too few pairs for the budget) are reported:"
        " budget_too_few_pairs in result.json, no multiplier in the report"
    )


@dataclass
class SpuriousAnalysisConfig:
    """``objective.spurious_analysis``: per-step advantages on pi_sft's positives (opt-in)."""

    positives: int | None = _f(
        "null: off (no rollouts, no result field, no run hash change: rundir.HASH_WHEN_ON) |"
        " n: roll out n of RFT's positives (unique correct samples, a seeded draw)"
    )
    margin: float = _f("a step of a positive is spurious when its advantage is below -this")


@dataclass
class _Rollouts:
    """conf/objective/common/rollouts.yaml: Monte Carlo step values, cached, shared by step_dpo/awr."""

    rollouts: int = _f("M: rollouts from pi_sft per prefix of a negative")
    rollout_temperature: float = _f("sampling temperature of the rollouts")
    rollout_top_p: float = _f("nucleus threshold of the rollouts")
    best_of_k: int = _f("K of the BoK(pi_sft) value estimate")
    value: Value = _f(  # type: ignore[valid-type]
        "step value: bok = 1-(1-q)^K | bok_any = any correct in a group of K | mean = q"
    )
    pit_rule: PitRule = _f(  # type: ignore[valid-type]
        "the pit (first wrong step): first_zero (V_{i-1} > 0, V_i = 0) | argmin_advantage |"
        " first_drop"
    )
    pit_threshold: float = _f(
        "argmin_advantage: the min advantage must be < -this; first_drop: advantage <= -this"
    )
    early_stop: bool = _f("stop rolling out a negative at its first dead prefix")
    prefix_reuse: bool = _f("one prefill per prefix, its KV cache expanded M times (speed only)")
    keep_correct: int = _f("correct continuations kept per prefix (the chosen candidates)")
    rollout_batch_size: int = _f("rows per decode batch (speed only: noise is per rollout)")
    rollout_backend: RolloutBackend = _f(  # type: ignore[valid-type]
        "hf: eightfold.rollouts' KV-cache engine, the only one (where another would plug in:"
        " docs/objectives.md#rollouts-the-cost-centre)"
    )
    spurious_analysis: SpuriousAnalysisConfig = field(
        default_factory=SpuriousAnalysisConfig,
        metadata={
            "help": "per-step advantages of pi_sft's positives from the same rollouts and"
            " estimator, spurious steps in result.json"
            " (docs/objectives.md#spurious-steps-advantages-on-positives)"
        },
    )


# --- one schema per objective ------------------------------------------------------------------


@dataclass
class SFTConfig(_Named):
    """objective=sft: fine-tune on the teacher's solutions (loss on solution tokens)."""

    module: ModuleConfig = field(
        default_factory=ModuleConfig,
        metadata={"help": "eightfold.objectives.sft.SFTModule and its optimizer"},
    )


@dataclass
class RFTConfig(_Budget, _Samples, _Named):
    """objective=rft: rejection fine-tuning on pi_sft's verified-correct samples (paper §3.2)."""

    filter: Filter = _f(  # type: ignore[valid-type]
        "which samples count as correct: answer (final answer, paper) | strict (every step"
        " right; procedural data only)"
    )
    max_per_problem: int = _f("unique correct samples kept per problem")
    positives: Positives = _f(  # type: ignore[valid-type]
        "the training set: teacher+self | self (the paper's D+ only) | teacher (the matched"
        " control: the same steps on teacher data only)"
    )
    init: Init = _f(  # type: ignore[valid-type]
        "sft: continue pi_sft for `steps` | base: retrain from the base model"
        " (for trainer.max_steps)"
    )
    module: RFTModuleConfig = field(
        default_factory=RFTModuleConfig,
        metadata={"help": "eightfold.objectives.rft.RFTModule and its optimizer"},
    )


@dataclass
class DPOConfig(_Budget, _Negatives, _Samples, _Named):
    """objective=dpo: standard DPO against the frozen SFT model (paper §3.3, the control)."""

    module: DPOModuleConfig = field(
        default_factory=DPOModuleConfig,
        metadata={"help": "eightfold.objectives.dpo.DPOModule: the loss and its budget"},
    )


@dataclass
class StepDPOConfig(_Rollouts, DPOConfig):
    """objective=step_dpo: DPO on pairs cut at the first pit found by rollouts (paper §4)."""

    rejected: Rejected = _f(  # type: ignore[valid-type]
        "the rejected side: pit (the negative cut after the pit step) | rest (the whole remainder)"
    )
    chosen: ChosenRule = _f(  # type: ignore[valid-type]
        "which correct continuation of the pre-pit prefix is chosen: longest_prefix (the one that"
        " shares the most tokens with the pit step, so the contrast starts at the wrong token) |"
        " random"
    )
    pair_form: PairForm = _f(  # type: ignore[valid-type]
        "shared_prefix: prompt + steps before the pit, chosen/rejected continue it (Thm 6.1) |"
        " paper: chosen = a full correct solution of x, rejected = the negative cut after its pit"
    )
    confirm_rollouts: int = _f(
        "extra rollouts from the prefix that ends with the pit step; a pit is kept only if none"
        " of them is correct (0 = no confirmation)"
    )


@dataclass
class AWRConfig(_Budget, _Rollouts, _Negatives, _Samples, _Named):
    """objective=awr: per-step advantage-weighted regression on step_dpo's rollouts."""

    chosen: ChosenRule = _f(  # type: ignore[valid-type]
        "the chosen continuation of step_dpo's pairs: longest_prefix | random"
    )

    module: AWRModuleConfig = field(
        default_factory=AWRModuleConfig,
        metadata={"help": "eightfold.objectives.awr.AWRModule: the weights and the budget"},
    )


SCHEMA_GROUP = "schema/objective"
SCHEMAS: dict[str, type] = {
    "sft": SFTConfig,
    "rft": RFTConfig,
    "dpo": DPOConfig,
    "step_dpo": StepDPOConfig,
    "awr": AWRConfig,
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore as ``schema/objective/<name>`` (idempotent:
    storing the same name again replaces the entry)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(group=SCHEMA_GROUP, name=name, node=schema)


def compose_error_message(err: BaseException) -> str:
    """One line for an error raised while composing a config (Hydra prints several), e.g.
    ``objective.rejected='foo' is not valid: expected one of [pit, rest]``; for a ``--dry-run``
    table or a log line."""
    from omegaconf.errors import OmegaConfBaseException

    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        first = (getattr(cause, "msg", None) or str(cause)).splitlines()[0]
        value = getattr(cause, "value", None)
        if value is None:
            return f"{cause.full_key}: {first}"
        _, sep, expected = first.partition(", expected one of ")
        reason = f"expected one of {expected}" if sep else first
        return f"{cause.full_key}={value!r} is not valid: {reason}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
