"""objective=rft: rejection fine-tuning on pi_sft's own verified-correct samples (paper §3.2).

Data: k samples per training problem from pi_sft (``PiSft.samples``, shared with dpo /
step_dpo), kept if ``verify.is_correct`` (``filter: strict`` additionally requires every step
right, procedural only, not paper-faithful), de-duplicated per problem on their steps, at most
``max_per_problem`` per problem. ``positives`` picks the training set:

* ``teacher+self`` (default): the teacher's solutions + the kept samples that differ from them;
* ``self``: the kept samples only (the paper's D+ of pi_sft);
* ``teacher``: the teacher's solutions only, i.e. the matched control (same start, same steps).

``init``: ``sft`` (default) continues from pi_sft for ``steps`` optimizer steps at the
continuation lr (the matched-control design, docs/results.md#cpu-testbed-2-step-dpo-pilots); ``base`` retrains from the model as
built by ``cfg.model`` (the paper's [M] recipe) for ``trainer.max_steps`` at ``base_lr``.
The samples go through the datamodule's own SFT path (``data.with_train_pairs``), so batching,
shuffling and the loss are exactly SFT's; a self-generated solution is trained on as the token
ids pi_sft sampled (``encode_response`` keeps ids), the teacher's as text tokenised like SFT.
"""

from __future__ import annotations

import logging

from eightfold.config import FILTERS, INITS, POSITIVES
from eightfold.generation import Completion
from eightfold.objectives.base import step_budget
from eightfold.objectives.pi_sft import sample_completion
from eightfold.objectives.sft import SFTModule
from eightfold.objectives.spurious import generator_spurious_steps
from eightfold.verify import split_steps

log = logging.getLogger("eightfold")


def rft_positives(
    samples, max_per_problem: int | None, filter_: str = "answer"
) -> tuple[dict[int, list[Completion]], dict]:
    """Verified-correct samples per problem, unique by their steps (capped), and counts."""
    if filter_ not in FILTERS:
        raise ValueError(
            f"objective.filter={filter_!r} is not valid: expected one of {', '.join(FILTERS)}"
        )
    kept: dict[int, list[Completion]] = {}
    dropped_cap = dropped_filter = 0
    novel = spurious = 0
    for p in sorted(samples.by_problem):
        seen: set[tuple[str, ...]] = set()
        for r in samples.by_problem[p]:
            steps = tuple(split_steps(r["completion"]))
            if not r["correct"] or steps in seen:
                continue
            seen.add(steps)
            if filter_ == "strict" and r["first_wrong_step"] is not None:
                dropped_filter += 1
                continue
            if max_per_problem is not None and len(kept.get(p, [])) >= max_per_problem:
                dropped_cap += 1
                continue
            kept.setdefault(p, []).append(sample_completion(r))
            novel += not r["teacher"]
            # a wrong step, or a wasted one (a distractor computed, an unused variable)
            spurious += bool(generator_spurious_steps(samples.examples[p].problem, r["completion"]))
    stats = {
        "rft_kept": sum(len(v) for v in kept.values()),
        "rft_kept_novel": novel,
        "rft_kept_spurious": spurious
        if all(e.problem is not None for e in samples.examples)
        else None,
        "rft_dropped_cap": dropped_cap,
        "rft_dropped_filter": dropped_filter,
    }
    return kept, stats


class RFTModule(SFTModule):
    name = "rft"
    needs_pi_sft = True

    def __init__(
        self,
        model,
        tokenizer,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 10,
        min_lr_ratio: float = 0.0,
        base_lr: float = 3e-3,
        base_warmup_steps: int = 50,
    ):
        super().__init__(model, tokenizer, lr, weight_decay, betas, warmup_steps, min_lr_ratio)
        self.base_lr, self.base_warmup_steps = base_lr, base_warmup_steps
        self.train_steps: int | None = None
        self._fields: dict = {}

    def prepare(self, cfg, data, pi_sft):
        o = cfg.objective
        if o.init not in INITS:
            raise ValueError(
                f"objective.init={o.init!r} is not valid: expected one of {', '.join(INITS)}"
            )
        if o.positives not in POSITIVES:
            raise ValueError(
                f"objective.positives={o.positives!r} is not valid: expected one of {', '.join(POSITIVES)}"
            )
        # 1. the starting point: pi_sft for `steps` at the continuation lr, or the base model
        #    retrained with the SFT recipe's lr schedule and budget
        if o.init == "sft":
            self.model.load_state_dict(pi_sft.model.state_dict())
        else:
            self.lr, self.warmup_steps = self.base_lr, self.base_warmup_steps
        # 2. pi_sft's verified-correct samples, unique per problem, capped
        samples = pi_sft.samples()
        pi_sft.release()
        kept, kstats = rft_positives(samples, o.get("max_per_problem"), o.get("filter", "answer"))
        # 3. the training set: teacher solutions and/or the samples that differ from them
        examples = samples.examples
        teacher = [(e.prompt, e.solution) for e in data.train_examples]
        teacher_steps = {(e.prompt, tuple(split_steps(e.solution))) for e in data.train_examples}
        own = [
            (examples[p].prompt, list(c.ids))  # the sampled ids, not the text encoded again
            for p in sorted(kept)
            for c in kept[p]
            if (examples[p].prompt, tuple(split_steps(c.text))) not in teacher_steps
            or o.positives == "self"
        ]
        pairs = {"teacher+self": teacher + own, "self": own, "teacher": teacher}[o.positives]
        if not pairs:
            raise RuntimeError(
                "rft: no training pairs (no correct self-generated sample and positives=self)"
            )
        # 4. the budget: objective.steps (the same for the control), or trainer.max_steps (base)
        self.train_steps, budget = step_budget(o, len(pairs), data.batch_size)
        if o.init == "base":
            self.train_steps = None
            budget["objective_steps"] = None
        self._fields = {
            **budget,
            **kstats,
            "rft_self_added": len(own) if o.positives != "teacher" else 0,
            "rft_train_pairs": len(pairs),
            "init": o.init,
            "positives_used": o.positives,
            **pi_sft.stats(),
        }
        return data.with_train_pairs(pairs)

    def result_fields(self) -> dict:
        return dict(self._fields)
