"""Config checks that run before any data is generated or any step is trained.

Every message names the bad value and says what would be valid.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from eightfold.config import ConfigError
from eightfold.data.arithmetic import max_variables, pool_size

__all__ = ["ConfigError", "validate_config"]

# Kept in step with eightfold.data.synthetic.SOURCES (a test checks it); listed here so that
# validation stays import-light.
SOURCES = ("procedural", "procedural_teacher", "gsm8k_teacher", "math_teacher", "gsm8k", "math")
KINDS = ("procedural", "gsm8k", "math")


def _positive_int(value, key: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"{key}={value!r} is not valid: expected a positive integer, e.g. {key}={example}"
        )
    return value


def validate_config(cfg: DictConfig) -> None:
    _check_objective(cfg)
    data = cfg.data
    size = _positive_int(data.size, "data.size", "500")
    _positive_int(data.test_size, "data.test_size", "500")
    _positive_int(cfg.trainer.max_steps, "trainer.max_steps", "600")
    perf = cfg.get("perf") or {}
    for key, example in (("logits_chunk_size", "4096"), ("pack_length", "4096")):
        if perf.get(key) is not None:  # checked here, so a sweep rejects it before submitting
            _positive_int(perf[key], f"perf.{key}", example)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} is not valid: expected an integer, e.g. seed=0")
    if data.source == "self":  # self-generated data needs pi_sft: it is an objective, not a file
        raise ConfigError(
            "data.source='self' is not a data source: training on the SFT model's own correct samples"
            " is objective=rft objective.positives=self (sweep objective.positives=teacher,self,teacher+self"
            " for the teacher-vs-self comparison)"
        )
    if data.source not in SOURCES:
        raise ConfigError(
            f"data.source={data.source!r} is not valid: expected one of {', '.join(SOURCES)}"
        )
    if data.kind not in KINDS:
        raise ConfigError(
            f"data.kind={data.kind!r} is not valid: expected one of {', '.join(KINDS)}"
        )
    if data.source.endswith("_teacher"):
        _check_teacher(data)
    if data.source in ("procedural", "procedural_teacher"):
        task = data.task
        chains = _positive_int(task.chains, "data.task.chains", "2")
        steps = _positive_int(task.steps, "data.task.steps", "2")
        modulus = task.modulus
        if modulus not in (2, 3, 5, 7, 11, 13):
            raise ConfigError(
                f"data.task.modulus={modulus!r} is not valid: expected a prime whose residues are"
                " written as digits or short numbers: 2, 3, 5, 7, 11 or 13"
            )
        if max_variables(chains, steps) > 26:
            raise ConfigError(
                f"data.task.chains={chains} x data.task.steps={steps} needs {max_variables(chains, steps)}"
                " variables; at most 26 (a-z) are available"
            )
        available = pool_size(chains, steps, modulus) - data.test_size
        if size > available:
            raise ConfigError(
                f"data.size={size} is larger than the problem pool: chains={chains}, steps={steps},"
                f" modulus={modulus} give {available} distinct problems outside the test set;"
                f" use data.size<={available} or raise data.task.steps / data.task.chains"
            )


def _check_objective(cfg: DictConfig) -> None:
    """The values' types and choices are checked at compose time (eightfold.config); a key that
    an objective's YAML leaves at the schema's ??? is caught here, before any work."""
    missing = sorted(OmegaConf.missing_keys(cfg.objective))
    if missing:
        raise ConfigError(
            f"objective={cfg.objective.get('name', '?')} leaves {', '.join(missing)} unset:"
            " give each a value in its conf/objective/*.yaml or on the command line"
        )


def _check_teacher(data: DictConfig) -> None:
    from eightfold.data.synthetic import LABELS
    from eightfold.data.teachers import check_config

    if data.get("teacher") is None:
        raise ConfigError(
            f"data.source={data.source!r} needs data.teacher: use data=teacher (or +teacher@data.teacher=...)"
        )
    try:
        check_config(OmegaConf.to_container(data.teacher, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if data.get("label", "reference") not in LABELS:
        raise ConfigError(
            f"data.label={data.label!r} is not valid: expected one of {', '.join(LABELS)}"
        )
