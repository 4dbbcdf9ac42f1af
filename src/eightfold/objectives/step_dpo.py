"""objective=step_dpo: per-step DPO around the first pit (paper §4, Algorithm 1).

For each selected negative of pi_sft (``PiSft.negatives``, at most ``negatives_per_problem`` per
problem, ``max_negatives`` in all):

1. split it into steps; score prefix values V_0..V_L by M rollouts from pi_sft, BoK(K)
   estimator, left to right with early stop (``PiSft.rollouts``, cached and shared with
   objective=awr);
2. find the first pit c (``step_values.first_pit``; default rule ``first_zero``: the step after
   which the value collapses to 0, which needs V_0 > 0);
3. optionally confirm the pit (``confirm_rollouts`` more rollouts after the pit step, none
   correct), then pair (``step_values.step_pairs``): prompt + the negative's steps before the
   pit (shared, masked), chosen = the correct rollout from that same prefix that shares the
   most tokens with the pit step (``chosen: longest_prefix``; already drawn in step 1; none ->
   no pair, never a teacher solution), rejected = the pit step (the negative cut after the pit;
   ``rejected: rest`` keeps the whole remainder instead). ``pair_form: paper`` builds the
   paper's pairs instead: chosen = a full correct solution of x, rejected = the negative cut
   after its pit, both from the prompt;
4. train with DPO against pi_sft (everything else is ``DPOModule``'s).

On the procedural source every run records how often the MC pit equals the generator's exact
first wrong step (``first_pit_agreement``, over negatives with V_0 > 0). With
``objective.spurious_analysis`` on, it also reports the spurious steps of pi_sft's positives
(``step_values.spurious_report``; docs/objectives.md#spurious-steps-advantages-on-positives).
"""

from __future__ import annotations

from eightfold.objectives.dpo import DPOModule
from eightfold.objectives.preference import PreferencePair, correct_solutions
from eightfold.objectives.step_values import pit_analysis, spurious_report, step_pairs


class StepDPOModule(DPOModule):
    name = "step_dpo"

    def build_pairs(self, cfg, pi_sft) -> tuple[list[PreferencePair], dict]:
        o = cfg.objective
        items, rstats = pi_sft.rollouts()
        samples = pi_sft.samples()
        rows, pstats = pit_analysis(
            items, samples.examples, o.pit_rule, float(o.pit_threshold), o.value, int(o.best_of_k)
        )
        confirmed, cstats = None, {}
        if int(o.get("confirm_rollouts", 0)) > 0:
            confirmed, cstats = pi_sft.confirm_pits(rows, int(o.confirm_rollouts))
        pairs, stats = step_pairs(
            rows,
            samples.examples,
            o.rejected,
            int(cfg.seed),
            chosen_rule=o.get("chosen", "random"),
            decode=lambda ids: self.tokenizer.decode(list(ids), skip_special_tokens=True),
            pair_form=o.get("pair_form", "shared_prefix"),
            positives=correct_solutions(samples),
            confirmed=confirmed,
        )
        spurious = spurious_report(pi_sft, o, int(cfg.seed))  # opt-in: {} when off
        return pairs, {**rstats, **pstats, **cstats, **stats, **spurious}
