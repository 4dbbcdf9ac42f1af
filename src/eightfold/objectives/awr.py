"""objective=awr: per-step advantage-weighted training on the same rollouts as step_dpo.

The paper (Thm 6.1) shows per-step DPO on first-pit pairs has the optimum of per-step
advantage-weighted RL, pi*(a|s) ∝ pi_sft(a|s) exp(A(s,a)/beta). This objective trains on exactly
the data per-step DPO uses (same negatives, same rollouts from ``PiSft.rollouts``, same pits,
same chosen continuation), so a sweep compares the two head to head. Each pair gives two
weighted sequences:

* the negative's steps up to and including its pit (its sampled tokens, cut at the step
  boundaries), step i weighted by its advantage A_i = V_{i+1} - V_i (the pit step has a large
  negative one);
* the chosen continuation (a correct rollout from the prefix before the pit) as one action,
  with advantage 1 - V_c (its return under BoK is 1, the prefix's value is V_c).

What it optimises, by ``module.weighting``:

* ``signed`` (default): minimise -sum_t A_t log pi(token_t) / sum_t |A_t|, the policy gradient
  of the per-step advantage objective at pi = pi_sft (the first step towards Thm 6.1's optimum):
  the pit step's probability goes down, the chosen continuation's up, steps with A ~ 0 get no
  gradient. There is no KL term: the fixed step budget and the small lr keep it near pi_sft.
* ``exp``: AWR (Peng et al. 2019), weights exp(A/beta) clipped at ``max_weight``, normalised by
  the number of tokens (the form before issue 13): weights are never negative, so the pit is
  only dropped (weight ~0), never pushed down: weighted SFT on pi_sft's correct steps.
* ``chosen_only``: the chosen continuations at weight 1, the negatives dropped: awr_control.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from eightfold.config import WEIGHTINGS
from eightfold.data.datamodule import collate_sft
from eightfold.generation import encode_prompt
from eightfold.objectives.base import PolicyModule, TrainData, model_token_logps, step_budget
from eightfold.objectives.losses import awr_weights, weighted_nll
from eightfold.objectives.step_values import pit_analysis, spurious_report, step_pairs

log = logging.getLogger("eightfold")


@dataclass
class WeightedItem:
    prompt: list[int]
    response: list[int]
    weights: list[float]  # one per response token


def collate_weighted(items: list[WeightedItem], pad_id: int) -> dict[str, torch.Tensor]:
    """SFT's batch layout (``collate_sft``) plus a per-token weight aligned with the labels."""
    batch = collate_sft([(it.prompt, it.response) for it in items], pad_id)
    weights = torch.zeros(batch["labels"].shape, dtype=torch.float32)
    for i, it in enumerate(items):
        p = len(it.prompt)
        weights[i, p : p + len(it.response)] = torch.tensor(it.weights)
    batch["weights"] = weights
    return batch


def awr_items(
    tokenizer, rows, pairs, beta: float, max_weight: float, weighting: str = "signed"
) -> tuple[list[WeightedItem], dict]:
    """Two weighted sequences per pair: the negative through its pit, and the chosen continuation.

    ``signed``: w = A, clipped to [-max_weight, max_weight] (the pit step's negative advantage
    pushes it down); ``exp``: w = exp(A/beta) clipped at max_weight (never negative: the pit is
    only dropped); ``chosen_only``: the chosen continuation at weight 1, no negative (the control).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"objective.module.weighting={weighting!r} is not valid: expected one of"
            f" {', '.join(WEIGHTINGS)}"
        )

    def w(a: float) -> float:
        if weighting == "exp":
            return float(awr_weights(torch.tensor(a), beta, max_weight))
        if weighting == "chosen_only":
            return 1.0
        return max(-max_weight, min(max_weight, float(a)))

    eos = [tokenizer.eos_token_id]
    by_key = {(neg.problem, neg.text): (neg, values) for neg, values, _pit, _exact in rows}
    items, all_w = [], []
    for pair in pairs:
        neg, values = by_key[(pair.problem, pair.meta["text"])]
        pit = pair.meta["pit"]
        prompt = encode_prompt(tokenizer, pair.prompt)
        response, weights = [], []
        for i in range(pit + 1 if weighting != "chosen_only" else 0):
            # step i's sampled tokens (its line and newline; EOS after the answer line)
            last = i == len(neg.steps) - 1
            toks = list(neg.piece(i, i + 1)) + (eos if last else [])
            wi = w(values[i + 1] - values[i])
            response += toks
            weights += [wi] * len(toks)
            all_w.append(wi)
        if response:
            items.append(WeightedItem(prompt, response, weights))
        chosen = list(pair.chosen.ids) + eos
        wc = w(1.0 - values[pit])
        all_w.append(wc)
        items.append(WeightedItem(prompt + list(pair.prefix.ids), chosen, [wc] * len(chosen)))
    stats = {
        "awr_items": len(items),
        "awr_mean_weight": round(sum(all_w) / len(all_w), 4) if all_w else None,
        "awr_clipped_weights": sum(abs(x) >= max_weight for x in all_w),
        "awr_negative_weights": sum(x < 0 for x in all_w),
        "awr_weighting": weighting,
    }
    return items, stats


class AWRModule(PolicyModule):
    name = "awr"
    needs_pi_sft = True

    def __init__(
        self,
        model,
        tokenizer,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 2,
        min_lr_ratio: float = 0.0,
        weighting: str = "signed",
        beta: float = 0.1,
        max_weight: float = 20.0,
        batch_size: int = 32,
    ):
        super().__init__(model, tokenizer, lr, weight_decay, betas, warmup_steps, min_lr_ratio)
        self.weighting, self.beta, self.max_weight = weighting, float(beta), float(max_weight)
        self.batch_size = int(batch_size)
        self.train_steps: int | None = None
        self._fields: dict = {}

    def prepare(self, cfg, data, pi_sft) -> TrainData:
        o = cfg.objective
        seed = int(cfg.seed)
        # 1. the policy starts as pi_sft; the rollouts, pits and chosen sides are step_dpo's
        self.model.load_state_dict(pi_sft.model.state_dict())
        samples = pi_sft.samples()
        negs, rstats = pi_sft.rollouts()
        rows, pstats = pit_analysis(
            negs, samples.examples, o.pit_rule, float(o.pit_threshold), o.value, int(o.best_of_k)
        )
        pairs, pair_stats = step_pairs(
            rows,
            samples.examples,
            "pit",
            seed,
            chosen_rule=o.get("chosen", "random"),
            decode=self._text,
        )
        spurious = spurious_report(pi_sft, o, seed)  # opt-in: {} when off
        pi_sft.release()
        # 2. two weighted sequences per pair, then the budget (the same steps as awr_control)
        items, astats = awr_items(
            self.tokenizer, rows, pairs, self.beta, self.max_weight, self.weighting
        )
        self.train_steps, budget = step_budget(o, len(items), self.batch_size)
        self._fields = {
            **rstats,
            **pstats,
            **pair_stats,
            "pairs": len(pairs),
            **astats,
            **budget,
            **spurious,
            **pi_sft.stats(),
        }
        if not items:
            log.warning("awr: no weighted steps could be built; the policy stays pi_sft")
        collate = functools.partial(collate_weighted, pad_id=self.tokenizer.pad_token_id)
        return TrainData(items, self.batch_size, seed, collate)

    def result_fields(self) -> dict:
        return dict(self._fields)

    def _text(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tok, mask = model_token_logps(self.model, batch, self.logits_chunk_size)
        normalise = "tokens" if self.weighting == "exp" else "weights"
        loss = weighted_nll(tok, batch["weights"][:, 1:], mask, normalise)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
