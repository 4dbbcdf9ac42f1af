"""Spurious steps on positives (paper §5): the data's labels and the positives' rollouts.

A spurious positive reaches the right answer through a wrong or useless step, the failure mode
RFT amplifies. Three labels of it, compared by ``step_values.spurious_analysis``:

* the generator's (procedural data, ``generator_spurious_steps``): the first wrong step
  (``arithmetic.first_wrong_step``: a wrong value the trace recovers from, an invented variable)
  and the unneeded steps (``arithmetic.unneeded_steps``: a distractor computed, a variable the
  target does not need, a variable computed again);
* the teacher's (``data=teacher``, ``teacher_spurious_kind``): the kind of spurious step it
  injected (``wrong_value``, ``extra_step``, ``distractor``) into the solution a positive copies;
* Monte Carlo (``step_values.positive_step_labels``): a step after which the value falls by
  more than a margin, from rollouts of the positive's prefixes (``positive_rollouts``).

It imports nothing from the other objective modules, so pi_sft's ``spurious_positives`` and
rft's ``rft_kept_spurious`` count with the same rule.
"""

from __future__ import annotations

import hashlib
import logging

from eightfold.data.arithmetic import Problem, first_wrong_step, unneeded_steps
from eightfold.data.cache import load_or_build
from eightfold.generation import Completion
from eightfold.rollouts import NegativeValues, rollout_negatives, rollout_settings
from eightfold.verify import is_correct, split_steps

log = logging.getLogger(__name__)

# Part of the positives' rollout cache key (the negatives' is pi_sft.RECORD_FORMAT).
RECORD_FORMAT = 1


def generator_spurious_steps(problem, text: str) -> list[int] | None:
    """0-based steps of ``text`` the generator calls spurious when the answer is right: its first
    wrong step and its unneeded steps (star graph: the first wrong step only); None when the
    problem is unknown (non-procedural data)."""
    if problem is None:
        return None
    out = set(unneeded_steps(problem, text)) if isinstance(problem, Problem) else set()
    wrong = first_wrong_step(problem, text)
    if wrong is not None:
        out.add(wrong)
    return sorted(out)


def unneeded_step_outcomes(examples, texts: list[str], kind: str = "procedural") -> dict:
    """How often outputs (one per example, e.g. greedy on the test set) compute an unneeded step,
    and the accuracy of those with one and of the others: whether a spurious step costs
    answers, and whether an objective unlearns it (docs/results.md, issue 14, candidate 2)."""
    flags = [bool(unneeded_steps(e.problem, t)) for e, t in zip(examples, texts)]
    right = [is_correct(t, e.answer, kind) for e, t in zip(examples, texts)]
    with_ = [r for f, r in zip(flags, right) if f]
    without = [r for f, r in zip(flags, right) if not f]
    return {
        "outputs": len(texts),
        "accuracy": sum(right) / max(1, len(right)),
        "unneeded_step_rate": len(with_) / max(1, len(texts)),
        "accuracy_with_unneeded": sum(with_) / len(with_) if with_ else None,
        "accuracy_without_unneeded": sum(without) / len(without) if without else None,
    }


def teacher_spurious_kind(example, text: str) -> str | None:
    """The spurious kind the teacher injected (``wrong_value`` ...) when ``text`` has the steps
    of the example's teacher solution and the data recorded one (``meta["injected"]`` =
    ``spurious:<kind>``); else None."""
    injected = (example.meta or {}).get("injected") or ""
    if not injected.startswith("spurious:") or split_steps(text) != split_steps(example.solution):
        return None
    return injected.split(":", 1)[1]


def positive_rollouts(
    pi_sft, positives: list[tuple[int, Completion]]
) -> tuple[list[NegativeValues], dict]:
    """M rollouts from every step prefix of each positive ``(problem, completion)``, cached.

    The negatives' engine and rollout knobs (``rollouts``, ``rollout_temperature``,
    ``rollout_top_p``, ``max_new_tokens``, seed), without early stop (a positive's value can
    fall to 0 and come back) and keeping no continuation. Cached under
    ``<cache>/positive_rollouts/``, keyed by the samples, the positives and those knobs, so
    step_dpo and awr share one pass.
    """
    samples, o = pi_sft.samples(), pi_sft.obj
    key = {
        "samples": samples.key,
        "positives": hashlib.sha256(repr(positives).encode()).hexdigest(),
        "rollouts": int(o.rollouts),
        "temperature": float(o.rollout_temperature),
        "top_p": float(o.rollout_top_p),
        "max_new_tokens": int(o.max_new_tokens),
        "seed": int(pi_sft.cfg.seed),
        "format": RECORD_FORMAT,
    }
    built: list[bool] = []

    def build():
        built.append(True)
        items, stats = rollout_negatives(
            pi_sft.model,
            pi_sft.tokenizer,
            positives,
            [e.prompt for e in samples.examples],
            [e.answer for e in samples.examples],
            pi_sft.kind,
            **rollout_settings(o),
            seed=int(pi_sft.cfg.seed),
            early_stop=False,
            keep_correct=0,
        )
        log.info("rolled out %d positives: %s", len(items), stats.as_dict())
        return [{"type": "summary", **stats.as_dict()}] + [
            {"type": "positive", **n.to_record()} for n in items
        ]

    records = load_or_build(
        pi_sft.cache, "positive_rollouts", key, build, meta={"sft_dir": str(pi_sft.dir)}
    )
    summary = next(r for r in records if r["type"] == "summary")
    items = [NegativeValues.from_record(r) for r in records if r["type"] == "positive"]
    stats = {
        "spurious_rollouts": summary["rollouts"],
        "spurious_rollout_prefixes": summary["rollout_prefixes"],
        "spurious_rollout_time_s": summary["rollout_time_s"],
        "spurious_rollouts_cached": not built,
    }
    return items, stats
