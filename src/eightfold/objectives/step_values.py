"""Step values, advantages, the first pit, and the per-step pairs built at it (paper §4).

Definitions (docs/objectives.md#definitions-per-step-dpo; paper §4, Algorithm 1):

* q_i = fraction of the M rollouts from prefix i (:mod:`eightfold.rollouts`) that end correct.
  The step value V_i estimates the value of prefix i under BoK(pi_sft): ``bok`` 1-(1-q_i)^K
  (PAV's identity), ``bok_any`` the fraction of the M/K disjoint groups of K rollouts with at
  least one correct one (the paper's "any of K" estimator when M = K), or ``mean`` q_i (the
  pi_sft value itself). Prefix L (the whole wrong solution) has value 0.
* Step advantage A_i = V_i - V_{i-1} for step i = 1..L (0-based step index i-1).
* On a positive (a correct solution, paper §5) the same values with V_L = 1 (its reward); a
  step is spurious when its advantage is below -margin (``positive_step_labels``): it is
  followed by a correct answer but lowers the chance of reaching one.
* First pit (0-based step index), rule ``first_zero`` (default; Self-Explore arXiv 2404.10346):
  the step after which the value collapses, i.e. the first i >= 1 with V_{i-1} > 0 and V_i = 0;
  step i-1 is the pit. Needs V_0 > 0 (a problem the policy can solve at all). Alternatives:
  ``argmin_advantage`` (first step with the lowest A, paper §4 "the first step with the lowest
  Q"), ``first_drop`` (first step with A <= -threshold).

Every rule is computed on early-stopped values (a prefix after the first dead one is 0).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

from eightfold.config import CHOSEN_RULES, PAIR_FORMS, PIT_RULES, REJECTED, VALUES
from eightfold.data.arithmetic import first_wrong_step
from eightfold.generation import Completion
from eightfold.objectives.preference import NONE, PreferencePair, correct_solutions
from eightfold.objectives.spurious import (
    generator_spurious_steps,
    positive_rollouts,
    teacher_spurious_kind,
)
from eightfold.rollouts import NegativeValues
from eightfold.verify import split_steps

VALUE_ESTIMATORS = VALUES  # the names used in messages below
REJECTED_MODES = REJECTED


def step_value(
    n_correct: int,
    m: int,
    estimator: str = "bok",
    k: int = 5,
    correct_flags: Sequence[bool] | None = None,
) -> float:
    """The value estimate of one prefix from ``n_correct`` successes out of ``m`` rollouts."""
    if estimator not in VALUE_ESTIMATORS:
        raise ValueError(
            f"value estimator {estimator!r} is not valid: expected one of {', '.join(VALUE_ESTIMATORS)}"
        )
    if m <= 0:
        raise ValueError("a value needs at least one rollout")
    q = n_correct / m
    if estimator == "mean":
        return q
    if estimator == "bok":
        return 1.0 - (1.0 - q) ** k
    # bok_any: disjoint groups of k rollouts, success if any in the group is correct
    if correct_flags is None:
        raise ValueError("value estimator 'bok_any' needs the per-rollout correctness flags")
    groups = len(correct_flags) // k
    if groups == 0:
        raise ValueError(
            f"value estimator 'bok_any' needs rollouts >= best_of_k ({len(correct_flags)} < {k})"
        )
    return sum(any(correct_flags[g * k : (g + 1) * k]) for g in range(groups)) / groups


def advantages(values: Sequence[float]) -> list[float]:
    """A_i = V_i - V_{i-1}: one per step (len(values) - 1 of them)."""
    return [values[i] - values[i - 1] for i in range(1, len(values))]


def first_pit(
    values: Sequence[float], rule: str = "first_zero", threshold: float = 0.0
) -> int | None:
    """0-based index of the pit step given prefix values V_0..V_L; None when there is no pit.

    ``first_zero``: first i >= 1 with V_{i-1} > 0 and V_i == 0, pit = i - 1 (None if V_0 == 0).
    ``argmin_advantage``: the first step with the lowest advantage, if that advantage < -threshold.
    ``first_drop``: the first step whose advantage is <= -threshold (threshold > 0).
    """
    if rule not in PIT_RULES:
        raise ValueError(f"pit rule {rule!r} is not valid: expected one of {', '.join(PIT_RULES)}")
    if len(values) < 2:
        return None
    if rule == "first_zero":
        if values[0] <= 0:
            return None
        for i in range(1, len(values)):
            if values[i] <= 0:
                return i - 1 if values[i - 1] > 0 else None
        return None
    adv = advantages(values)
    if rule == "argmin_advantage":
        low = min(adv)
        return adv.index(low) if low < -threshold else None
    if threshold <= 0:
        raise ValueError("pit rule 'first_drop' needs a positive pit_threshold, e.g. 0.5")
    for i, a in enumerate(adv):
        if a <= -threshold:
            return i
    return None


def prefix_values(
    neg: NegativeValues, estimator: str = "bok", k: int = 5, terminal: float = 0.0
) -> list[float]:
    """V_0..V_L of one rolled-out solution: scored prefixes by ``step_value``, unscored ones
    (after a dead prefix, early stop) 0, and the terminal prefix L (the solution itself) its
    reward, ``terminal``: 0 for a negative, 1 for a positive."""
    vals = [step_value(c, neg.m, estimator, k, f) for c, f in zip(neg.counts, neg.flags)]
    return vals + [0.0] * (len(neg.steps) - len(vals)) + [terminal]


def pit_analysis(
    items: list[NegativeValues], examples, rule: str, threshold: float, estimator: str, k: int
):
    """[(negative, values, pit, exact first wrong step or None)] and agreement statistics."""
    rows, pits, exacts = [], Counter(), Counter()
    agree = n_agree = agree_all = n_all = dead = 0
    for neg in items:
        values = prefix_values(neg, estimator, k)
        pit = first_pit(values, rule, threshold)
        problem = examples[neg.problem].problem
        exact = first_wrong_step(problem, neg.text) if problem is not None else None
        rows.append((neg, values, pit, exact))
        dead += values[0] <= 0
        if pit is not None:
            pits[pit] += 1
        if problem is not None:
            exacts[exact] += 1
            n_all += 1
            agree_all += pit == exact
            if values[0] > 0:
                n_agree += 1
                agree += pit == exact
    stats = {
        "negatives_rolled_out": len(items),
        "dead_prompt_negatives": dead,  # V_0 = 0: no rollout from the bare prompt was correct
        "pits_found": sum(pits.values()),
        "pit_rule": rule,
        "pit_histogram": {str(k): v for k, v in sorted(pits.items())},
        "prefixes_scored_per_negative": round(
            sum(len(n.counts) for n in items) / max(1, len(items)), 3
        ),
    }
    if n_all:
        stats.update(
            {
                "first_pit_agreement": round(agree / n_agree, 4)
                if n_agree
                else None,  # among V_0 > 0
                "first_pit_agreement_n": n_agree,
                "first_pit_agreement_all": round(
                    agree_all / n_all, 4
                ),  # all negatives (no pit = disagree)
                "exact_first_wrong_histogram": {
                    str(k): v for k, v in sorted(exacts.items(), key=lambda x: str(x[0]))
                },
            }
        )
    return rows, stats


def shared_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (tokens) ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def step_pairs(
    rows,
    examples,
    rejected_mode: str,
    seed: int,
    *,
    chosen_rule: str = "random",
    decode: Callable[[Sequence[int]], str] | None = None,
    pair_form: str = "shared_prefix",
    positives: dict[int, list[Completion]] | None = None,
    confirmed: Callable[[int, tuple[int, ...]], bool] | None = None,
) -> tuple[list[PreferencePair], dict]:
    """Preference pairs at the first pit of each negative (``rows`` from :func:`pit_analysis`).

    Every side is cut from sampled token ids at step boundaries (``NegativeValues.cuts``) or is
    a sampled continuation, never text encoded again; ``decode`` gives the cut pieces their
    text (for logs; None: the text is left empty).

    1. skip a negative without a pit, or whose pit ``confirmed(problem, prefix ids through the
       pit)`` (extra rollouts after the pit step) does not confirm;
    2. the chosen side: ``shared_prefix`` form (Thm 6.1): a correct rollout continuation of the
       prefix before the pit whose first step differs from the pit step; ``chosen_rule``
       ``longest_prefix`` takes the one sharing the most tokens with the pit step, so the
       contrast starts at the first wrong token (ties and ``random``: a seeded draw).
       ``paper`` form (§4): a full correct solution of the problem (a correct self-sample from
       ``positives``, else a correct rollout from the bare prompt), from the prompt;
    3. the rejected side: the pit step's tokens (``rejected: pit``, no EOS unless it is the last
       step) or the whole remainder (``rest``); in the paper form the negative through the pit;
    4. drop duplicates (the same problem and steps through the pit).
    """

    def cut(ids: tuple[int, ...]) -> Completion:
        return Completion(ids, decode(ids) if decode is not None else "")

    if rejected_mode not in REJECTED_MODES:
        raise ValueError(
            f"objective.rejected={rejected_mode!r} is not valid: expected one of"
            f" {', '.join(REJECTED_MODES)}"
        )
    if chosen_rule not in CHOSEN_RULES or pair_form not in PAIR_FORMS:
        raise ValueError(
            f"chosen={chosen_rule!r} / pair_form={pair_form!r} is not valid: expected one of"
            f" {', '.join(CHOSEN_RULES)} / {', '.join(PAIR_FORMS)}"
        )
    rng = random.Random(f"step-pairs-{seed}")
    pairs, seen = [], set()
    no_pit = no_chosen = duplicate = unconfirmed = 0
    for neg, _values, pit, _exact in rows:
        if pit is None:
            no_pit += 1
            continue
        steps = neg.steps
        if confirmed is not None and not confirmed(neg.problem, neg.prefix_ids(pit + 1)):
            unconfirmed += 1
            continue
        last = pit == len(steps) - 1
        if pair_form == "paper":
            prefix = NONE
            options = (positives or {}).get(neg.problem) or (neg.correct[0] if neg.correct else [])
            rejected, rejected_eos = cut(neg.prefix_ids(pit + 1)), last
            key = (neg.problem, pit, tuple(steps[: pit + 1]))
        else:
            prefix = cut(neg.prefix_ids(pit))
            # correct continuations of the prefix before the pit whose first step is not the pit
            options = [
                c
                for c in (neg.correct[pit] if pit < len(neg.correct) else [])
                if (split_steps(c.text) or [""])[0] != steps[pit]
            ]
            if rejected_mode == "pit":
                rejected, rejected_eos = cut(neg.piece(pit, pit + 1)), last
            else:
                rejected, rejected_eos = cut(neg.piece(pit)), True
            key = (
                neg.problem,
                pit,
                tuple(steps[: pit + 1]) if rejected_mode == "pit" else tuple(steps),
            )
        if not options:
            no_chosen += 1
            continue
        if key in seen:
            duplicate += 1
            continue
        seen.add(key)
        if chosen_rule == "longest_prefix" and pair_form == "shared_prefix":
            pit_tokens = neg.piece(pit, pit + 1)
            lengths = [shared_prefix_length(c.ids, pit_tokens) for c in options]
            options = [c for c, n in zip(options, lengths) if n == max(lengths)]
        ex = examples[neg.problem]
        pairs.append(
            PreferencePair(
                neg.problem,
                ex.prompt,
                prefix,
                rng.choice(options),
                rejected,
                chosen_eos=True,
                rejected_eos=rejected_eos,
                meta={"pit": pit, "text": neg.text},
            )
        )
    return pairs, {
        "pairs_skipped_no_pit": no_pit,
        "pairs_skipped_no_chosen": no_chosen,
        "pairs_skipped_unconfirmed": unconfirmed,
        "pairs_duplicate": duplicate,
        "pair_form": pair_form,
        "chosen_rule": chosen_rule,
    }


# -----------------------------------------------------------------------------
# spurious steps on positives (paper §5): the same estimator, with V_L = 1


def positive_step_labels(
    pos: NegativeValues, estimator: str = "bok", k: int = 5, margin: float = 0.2
) -> tuple[list[float], list[float], list[int]]:
    """(V_0..V_L, A_1..A_L, spurious steps) of one rolled-out positive.

    1. V_0..V_{L-1}: each prefix's rollouts through ``step_value`` (the estimator of the
       negatives), V_L = 1: the positive itself is correct;
    2. A_i = V_i - V_{i-1}, one per step;
    3. 0-based step i-1 is spurious when A_i < -margin: the value after the step is lower than
       before it by more than ``margin``, though the solution goes on to the right answer.
    """
    if margin < 0:
        raise ValueError(
            f"objective.spurious_analysis.margin={margin!r} is not valid: expected a number >= 0"
        )
    values = prefix_values(pos, estimator, k, terminal=1.0)
    adv = advantages(values)
    return values, adv, [i for i, a in enumerate(adv) if a < -margin]


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def spurious_analysis(
    items: list[NegativeValues], examples, margin: float, estimator: str, k: int
) -> dict:
    """Counts for result.json: positives with a Monte Carlo spurious step, with a generator
    label (procedural data), with a teacher-injected spurious step (``data=teacher``), and how
    the Monte Carlo rule agrees with the generator, per positive and per step."""
    mc = mc_steps = gen = gen_steps = both = agree = hits = 0
    min_adv: list[float] = []
    teacher: dict[str, int] = {}
    teacher_mc = 0
    known = bool(items) and all(examples[p.problem].problem is not None for p in items)
    recorded = any("injected" in (e.meta or {}) for e in examples)
    for pos in items:
        _values, adv, steps = positive_step_labels(pos, estimator, k, margin)
        min_adv.append(min(adv) if adv else 0.0)
        mc += bool(steps)
        mc_steps += len(steps)
        ex = examples[pos.problem]
        if known:
            labels = generator_spurious_steps(ex.problem, pos.text) or []
            gen += bool(labels)
            gen_steps += len(labels)
            both += bool(steps) and bool(labels)
            agree += bool(steps) == bool(labels)
            hits += len(set(steps) & set(labels))
        kind = teacher_spurious_kind(ex, pos.text) if recorded else None
        if kind is not None:
            teacher[kind] = teacher.get(kind, 0) + 1
            teacher_mc += bool(steps)
    n = len(items)
    out = {
        "spurious_analysed": n,
        "spurious_margin": margin,
        "spurious_mc_positives": mc,  # at least one step with A < -margin
        "spurious_mc_steps": mc_steps,
        "spurious_min_advantage_mean": round(sum(min_adv) / n, 4) if n else None,
    }
    if known:
        out.update(
            {
                "spurious_generator_positives": gen,  # first wrong step or unneeded steps
                "spurious_generator_steps": gen_steps,
                "spurious_both": both,
                "spurious_agreement": _rate(agree, n),  # same yes/no per positive
                "spurious_step_precision": _rate(hits, mc_steps),  # MC steps the generator labels
                "spurious_step_recall": _rate(hits, gen_steps),  # generator steps MC finds
            }
        )
    if recorded:
        out.update(
            {
                "spurious_teacher_positives": sum(teacher.values()),  # copies of injected ones
                "spurious_teacher_kinds": dict(sorted(teacher.items())),
                "spurious_teacher_mc": teacher_mc,
            }
        )
    return out


def spurious_report(pi_sft, o, seed: int) -> dict:
    """The opt-in ``objective.spurious_analysis`` ({positives: n, margin: m}) of a run on
    pi_sft: {} when it is off (positives null); else the advantages of at most n of RFT's
    positives (the unique correct samples, a seeded draw) and :func:`spurious_analysis`'s
    counts. Costs at most n x steps x M rollouts (shared prefixes once), cached."""
    switch = o.get("spurious_analysis") or {}
    n, margin = switch.get("positives"), switch.get("margin")
    if n is None:
        return {}
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(
            f"objective.spurious_analysis.positives={n!r} is not valid: expected a positive"
            " integer, e.g. 200"
        )
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(
            f"objective.spurious_analysis.margin={margin!r} is not valid: expected a number >= 0,"
            " e.g. 0.2"
        )
    samples = pi_sft.samples()
    # 1. RFT's positives: unique correct samples per problem; a seeded draw of at most n
    every = [(p, c) for p, cs in sorted(correct_solutions(samples).items()) for c in cs]
    chosen = list(every)
    random.Random(f"spurious-positives-{seed}").shuffle(chosen)
    chosen = sorted(chosen[:n], key=lambda x: x[0])
    # 2. rollouts from every prefix (cached), 3. advantages, labels and their agreement
    items, rstats = positive_rollouts(pi_sft, chosen)
    stats = spurious_analysis(items, samples.examples, float(margin), o.value, int(o.best_of_k))
    return {"spurious_available": len(every), **stats, **rstats}
