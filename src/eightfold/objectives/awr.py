"""objective=awr: per-step advantage-weighted regression on the same rollouts as step_dpo.

The paper (Thm 6.1) shows per-step DPO on first-pit pairs has the optimum of per-step
advantage-weighted RL, pi*(a|s) ∝ pi_sft(a|s) exp(A(s,a)/beta). This objective fits that form
directly (AWR, Peng et al. 2019): maximise sum_steps w * log pi(step | state) with
w = min(exp(A/beta), max_weight), on exactly the data per-step DPO uses, so a sweep compares the
two head to head (same negatives, same rollouts from ``SftSource.rollouts``, same pits, same
chosen continuation):

* the negative's steps up to and including its pit, step i weighted by exp(A_i/beta) with
  A_i = V_{i+1} - V_i (the pit step gets its large negative advantage, so ~0 weight);
* the chosen continuation (a correct rollout from the prefix before the pit) as one action,
  weighted by exp((1 - V_c)/beta): its return under BoK is 1, the prefix's value is V_c.

No reference model is needed (the KL to pi_sft is implicit in sampling the data from pi_sft).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader

from eightfold.generation import encode_prompt
from eightfold.objectives.base import PolicyModule, model_token_logps
from eightfold.objectives.dpo import StepBudgetMixin
from eightfold.objectives.losses import awr_weights, weighted_nll
from eightfold.objectives.step_dpo import pit_analysis, step_pairs

log = logging.getLogger("eightfold")


@dataclass
class WeightedItem:
    prompt: list[int]
    response: list[int]
    weights: list[float]  # one per response token


def collate_weighted(items: list[WeightedItem], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(it.prompt) + len(it.response) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    weights = torch.zeros((len(items), width), dtype=torch.float32)
    for i, it in enumerate(items):
        p, n = len(it.prompt), len(it.prompt) + len(it.response)
        ids[i, :n] = torch.tensor(it.prompt + it.response)
        labels[i, p:n] = torch.tensor(it.response)
        weights[i, p:n] = torch.tensor(it.weights)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def awr_items(
    tokenizer, rows, pairs, beta: float, max_weight: float
) -> tuple[list[WeightedItem], dict]:
    """Two weighted sequences per pair: the negative through its pit, and the chosen continuation."""

    def w(a: float) -> float:
        return float(awr_weights(torch.tensor(a), beta, max_weight))

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    by_key = {(neg.problem, neg.text): (neg, values) for neg, values, _pit, _exact in rows}
    items, all_w = [], []
    for pair in pairs:
        neg, values = by_key[(pair.problem, pair.meta["text"])]
        pit = pair.meta["pit"]
        prompt = encode_prompt(tokenizer, pair.prompt)
        response, weights = [], []
        for i in range(pit + 1):
            last = i == len(neg.steps) - 1
            toks = ids(neg.steps[i] + ("" if last else "\n")) + (
                [tokenizer.eos_token_id] if last else []
            )
            wi = w(values[i + 1] - values[i])
            response += toks
            weights += [wi] * len(toks)
            all_w.append(wi)
        items.append(WeightedItem(prompt, response, weights))
        chosen = ids(pair.chosen) + [tokenizer.eos_token_id]
        wc = w(1.0 - values[pit])
        all_w.append(wc)
        items.append(WeightedItem(prompt + ids(pair.prefix), chosen, [wc] * len(chosen)))
    stats = {
        "awr_items": len(items),
        "awr_mean_weight": round(sum(all_w) / len(all_w), 4) if all_w else None,
        "awr_clipped_weights": sum(x >= max_weight for x in all_w),
    }
    return items, stats


class AWRModule(StepBudgetMixin, PolicyModule):
    name = "awr"

    def __init__(
        self,
        model,
        tokenizer,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 2,
        min_lr_ratio: float = 0.0,
        beta: float = 0.1,
        max_weight: float = 20.0,
        batch_size: int = 32,
        epochs: float = 2,
        max_steps: int | None = None,
    ):
        super().__init__(model, tokenizer, lr, weight_decay, betas, warmup_steps, min_lr_ratio)
        self.beta, self.max_weight = float(beta), float(max_weight)
        self.batch_size, self.epochs, self.max_steps = int(batch_size), float(epochs), max_steps
        self.items: list[WeightedItem] = []
        self.run_stats: dict = {}
        self.seed = 0

    def prepare_data_for_run(self, cfg, datamodule, directory) -> None:
        from eightfold.data.self_generated import SftSource, sample_stats

        t0 = time.perf_counter()
        self.seed = int(cfg.seed)
        source = SftSource(cfg, datamodule)
        self.model.load_state_dict(source.model.state_dict())
        o = source.obj
        samples = source.samples()
        negs, rstats = source.rollouts()
        rows, pstats = pit_analysis(
            negs, samples.examples, o.pit_rule, float(o.pit_threshold), o.value, int(o.best_of_k)
        )
        pairs, pair_stats = step_pairs(rows, samples.examples, "pit", self.seed)
        source.release()
        self.items, astats = awr_items(self.tokenizer, rows, pairs, self.beta, self.max_weight)
        steps_per_epoch = math.ceil(len(self.items) / self.batch_size)
        self.total_steps = (
            self.max_steps
            if self.max_steps is not None
            else math.ceil(self.epochs * steps_per_epoch)
        )
        datamodule.train_dataloader = self.weighted_dataloader
        self.run_stats = {
            **sample_stats(samples),
            "sampling_time_s": samples.time_s,
            "samples_cached": samples.time_s is None,
            **rstats,
            **pstats,
            **pair_stats,
            "pairs": len(pairs),
            **astats,
            "objective_steps": self.total_steps,
            "epochs": self.epochs,
            "sft_run": source.dir.parent.name,
            "prepare_time_s": round(time.perf_counter() - t0, 3),
        }
        if not self.items:
            log.warning("awr: no weighted steps could be built; the policy stays pi_sft")
        L.seed_everything(self.seed, workers=True, verbose=False)

    def weighted_dataloader(self) -> DataLoader:
        return DataLoader(
            self.items,
            batch_size=self.batch_size,
            shuffle=len(self.items) > 0,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=functools.partial(collate_weighted, pad_id=self.tokenizer.pad_token_id),
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tok, mask = model_token_logps(self.model, batch, self.logits_chunk_size)
        loss = weighted_nll(tok, batch["weights"][:, 1:], mask)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
