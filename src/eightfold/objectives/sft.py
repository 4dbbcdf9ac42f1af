"""SFT: next-token cross-entropy on solution tokens only (the paper's baseline, pi_sft)."""

from __future__ import annotations

import torch

from eightfold.objectives.base import PolicyModule, model_token_logps


class SFTModule(PolicyModule):
    name = "sft"

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logps, mask = model_token_logps(self.model, batch, self.logits_chunk_size)
        loss = -logps.sum() / mask.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
