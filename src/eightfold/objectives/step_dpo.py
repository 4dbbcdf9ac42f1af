"""objective=step_dpo: per-step DPO around the first pit (paper §4, Algorithm 1).

For each selected negative of pi_sft (``PiSft.negatives``, at most ``negatives_per_problem`` per
problem, ``max_negatives`` in all):

1. split it into steps; score prefix values V_0..V_L by M rollouts from pi_sft, BoK(K)
   estimator, left to right with early stop (``PiSft.rollouts``, cached and shared with
   objective=awr);
2. find the first pit c (``step_values.first_pit``; default rule ``first_zero``: the step after
   which the value collapses to 0, which needs V_0 > 0);
3. pair: prompt + the negative's steps before the pit (shared, masked), chosen = a correct
   rollout from that same prefix (already drawn in step 1; none -> no pair, never a teacher
   solution), rejected = the pit step (the negative cut after the pit; ``rejected: rest`` keeps
   the whole remainder instead);
4. train with DPO against pi_sft (everything else is ``DPOModule``'s).

On the procedural source every run records how often the MC pit equals the generator's exact
first wrong step (``first_pit_agreement``, over negatives with V_0 > 0).
"""

from __future__ import annotations

from eightfold.objectives.dpo import DPOModule
from eightfold.objectives.preference import PreferencePair
from eightfold.objectives.step_values import pit_analysis, step_pairs


class StepDPOModule(DPOModule):
    name = "step_dpo"

    def build_pairs(self, cfg, pi_sft) -> tuple[list[PreferencePair], dict]:
        o = cfg.objective
        items, rstats = pi_sft.rollouts()
        examples = pi_sft.samples().examples
        rows, pstats = pit_analysis(
            items, examples, o.pit_rule, float(o.pit_threshold), o.value, int(o.best_of_k)
        )
        pairs, stats = step_pairs(rows, examples, o.rejected, int(cfg.seed))
        return pairs, {**rstats, **pstats, **stats}
