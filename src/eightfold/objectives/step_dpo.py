"""objective=step_dpo: per-step DPO around the first pit (paper §4, Algorithm 1; objectives.md §2.4).

For each selected negative of pi_sft (``SftSource.negatives``, at most
``negatives_per_problem`` per problem, ``max_negatives`` in all):

1. split it into steps; score prefix values V_0..V_L by M rollouts from pi_sft, BoK(K)
   estimator, left to right with early stop (``rollouts.rollout_negatives``, cached and shared
   with objective=awr);
2. find the first pit c (``rollouts.first_pit``; default rule ``first_zero``: the step after
   which the value collapses to 0, which needs V_0 > 0);
3. pair: prompt + the negative's steps before the pit (shared, masked), chosen = a correct
   rollout from that same prefix (already drawn in step 1; none -> no pair, never a teacher
   solution), rejected = the pit step (the negative cut after the pit; ``rejected: rest`` keeps
   the whole remainder instead, as in cpu-testbed-2);
4. train with DPO against pi_sft (everything else is ``DPOModule``).

On the procedural source every run records how often the MC pit equals the generator's exact
first wrong step (``first_pit_agreement``, over negatives with V_0 > 0).
"""

from __future__ import annotations

import random
from collections import Counter

from eightfold.objectives.dpo import DPOModule
from eightfold.objectives.pairs import PreferencePair
from eightfold.objectives.rollouts import NegativeValues, first_pit, prefix_text
from eightfold.verify import join_steps, split_steps

REJECTED_MODES = ("pit", "rest")


def pit_analysis(
    items: list[NegativeValues], examples, rule: str, threshold: float, estimator: str, k: int
):
    """[(negative, values, pit, exact first wrong step or None)] and agreement statistics."""
    from eightfold.data.arithmetic import first_wrong_step

    rows, pits, exacts = [], Counter(), Counter()
    agree = n_agree = agree_all = n_all = dead = 0
    for neg in items:
        values = neg.values(estimator, k)
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


def step_pairs(rows, examples, rejected_mode: str, seed: int) -> tuple[list[PreferencePair], dict]:
    if rejected_mode not in REJECTED_MODES:
        raise ValueError(
            f"objective.rejected={rejected_mode!r} is not valid: expected one of {', '.join(REJECTED_MODES)}"
        )
    rng = random.Random(f"step-pairs-{seed}")
    pairs, seen = [], set()
    no_pit = no_chosen = duplicate = 0
    for neg, _values, pit, _exact in rows:
        if pit is None:
            no_pit += 1
            continue
        steps = neg.steps
        # correct continuations of the prefix before the pit whose first step is not the pit step
        options = [
            c
            for c in (neg.correct[pit] if pit < len(neg.correct) else [])
            if (split_steps(c) or [""])[0] != steps[pit]
        ]
        if not options:
            no_chosen += 1
            continue
        last = pit == len(steps) - 1
        if rejected_mode == "pit":
            rejected, rejected_eos = steps[pit] + ("" if last else "\n"), last
        else:
            rejected, rejected_eos = join_steps(steps[pit:]), True
        key = (
            neg.problem,
            pit,
            tuple(steps[: pit + 1]) if rejected_mode == "pit" else tuple(steps),
        )
        if key in seen:
            duplicate += 1
            continue
        seen.add(key)
        ex = examples[neg.problem]
        pairs.append(
            PreferencePair(
                neg.problem,
                ex.prompt,
                prefix_text(steps, pit),
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
        "pairs_duplicate": duplicate,
    }


class StepDPOModule(DPOModule):
    name = "step_dpo"

    def build_pairs(self, source) -> tuple[list[PreferencePair], dict]:
        o = source.obj
        items, rstats = source.rollouts()
        examples = source.samples().examples
        rows, pstats = pit_analysis(
            items, examples, o.pit_rule, float(o.pit_threshold), o.value, int(o.best_of_k)
        )
        pairs, stats = step_pairs(rows, examples, o.rejected, int(source.cfg.seed))
        return pairs, {**rstats, **pstats, **stats}
