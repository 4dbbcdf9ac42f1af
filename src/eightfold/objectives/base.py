"""What every objective shares: the policy, AdamW with warm-up + cosine, token log-probs, and
the datamodule an objective returns for the data it built (``TrainData``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sized
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eightfold.data.loader import ResumableLoader
from eightfold.models import fp32_master_weights


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of ``labels`` under next-token ``logits``, and the mask of scored tokens.

    ``labels`` are aligned with the input ids (-100 = not scored); the shift happens here, once,
    for every objective (SFT loss, DPO sequence log-probs, reference caching).
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    safe = labels.masked_fill(~mask, 0)
    logps = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Packed rows carry position_ids that restart at 0 for each sequence and no attention mask:
    # transformers then builds the block-causal mask itself (one sequence never sees another),
    # but only when no KV cache is made (use_cache=False; a scoring pass never needs one).
    if "position_ids" in batch:
        return {
            "input_ids": batch["input_ids"],
            "position_ids": batch["position_ids"],
            "use_cache": False,
        }
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }


def model_token_logps(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``model`` on a (padded or packed) batch: per-token log-probs of the labels and their mask.

    The one log-prob path of every objective and of the reference pass. With ``chunk_size`` the
    [batch, tokens, vocab] logits are never built: the LM head runs only on the scored positions,
    ``chunk_size`` of them at a time, each chunk recomputed in backward instead of stored (a
    150k vocabulary would otherwise dominate memory). Same values as the full path (tested).
    """
    if not chunk_size:
        return token_logps(model(**_model_inputs(batch)).logits, batch["labels"])
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the LM
    hidden = lm.base_model(**_model_inputs(batch)).last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    head = lm.get_output_embeddings()
    scored, targets = hidden[mask], labels[mask]

    def chunk_logps(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        return logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    pieces = [
        checkpoint(
            chunk_logps,
            scored[i : i + chunk_size],
            targets[i : i + chunk_size],
            use_reentrant=False,
        )
        if torch.is_grad_enabled()
        else chunk_logps(scored[i : i + chunk_size], targets[i : i + chunk_size])
        for i in range(0, scored.shape[0], chunk_size)
    ]
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(
        mask, flat
    )
    return out, mask


def sequence_sums(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sequence sums of per-token ``values`` ([rows, T-1], label-aligned): one per row of a
    padded batch, one per ``seq_ids`` entry of a packed batch (sequences in collate order)."""
    if "seq_ids" not in batch:
        return values.sum(-1)
    ids = batch["seq_ids"][:, 1:]
    n = int(batch["seq_ids"].max()) + 1
    keep = ids >= 0
    return values.new_zeros(n).index_add(0, ids[keep], values[keep])


def sequence_logps(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunk_size: int | None = None
) -> torch.Tensor:
    """Sum of log-probs of the scored (response) tokens of each sequence."""
    logps, _ = model_token_logps(model, batch, chunk_size)
    return sequence_sums(logps, batch)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PolicyModule(L.LightningModule):
    """Base LightningModule: holds the HF causal LM and its optimiser schedule."""

    name = "base"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.0,
    ):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        # Speed knobs set by the run from `perf.*` (never change the numbers beyond float order).
        self.logits_chunk_size: int | None = None
        self.pack_length: int | None = None

    def setup(self, stage: str) -> None:
        # fp32 master weights (eightfold.models.fp32_master_weights): here, the one place, because
        # it runs before a sharding strategy wraps the model and before the optimizer is built
        fp32_master_weights(self.model)

    def configure_optimizers(self):
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() < 2]
        # Lightning moves the model to its device before this runs: on CUDA the fused kernel is one
        # launch per step instead of one per parameter tensor (same update up to float rounding).
        fused = all(p.is_cuda for p in decay + no_decay)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
            betas=self.betas,
            fused=fused or None,
        )
        total = (
            self.trainer.max_steps
            if self.trainer.max_steps > 0
            else self.trainer.estimated_stepping_batches
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, self.warmup_steps, int(total), self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TrainData(L.LightningDataModule):
    """The training set an objective built, served as Lightning asks for it: one loader,
    shuffled by (seed, epoch), resumable mid-epoch (the same order on every run of the same
    config, preempted or not: eightfold.data.loader)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, collate_fn: Callable):
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return len(self.dataset) if isinstance(self.dataset, Sized) else 0

    def train_dataloader(self) -> ResumableLoader:
        # no data: an empty loader, Lightning trains 0 steps
        return ResumableLoader(
            self.dataset, batch_size=self.batch_size, seed=self.seed, collate_fn=self.collate_fn
        )


def step_budget(objective: Any, items: int, batch_size: int) -> tuple[int, dict]:
    """Optimizer steps an objective on pi_sft trains for, and what that budget means for its data.

    1. ``objective.steps`` if set (the same budget for an objective and its matched control),
       else ``objective.epochs`` passes over ``items`` in batches of ``batch_size``;
    2. no data: 0 steps (the policy stays pi_sft);
    3. the passes over the data that budget makes; more than ``objective.max_epochs`` means too
       few pairs for the budget (reported; the analysis shows no multiplier for such a run).
    """
    steps, epochs = objective.get("steps"), objective.get("epochs")
    if steps is None and epochs is None:
        raise ValueError(
            "objective.steps and objective.epochs are both null: set one, e.g. steps=200"
        )
    batches = math.ceil(items / batch_size)
    train_steps = int(steps) if steps is not None else math.ceil(float(epochs) * batches)
    if items == 0:
        train_steps = 0
    passes = train_steps * batch_size / items if items else None
    max_epochs = objective.get("max_epochs")
    too_few = items == 0 or (max_epochs is not None and passes > float(max_epochs))
    return train_steps, {
        "objective_steps": train_steps,
        "budget_items": items,
        "budget_epochs": round(passes, 3) if passes is not None else None,
        "budget_too_few_pairs": bool(too_few),
    }
