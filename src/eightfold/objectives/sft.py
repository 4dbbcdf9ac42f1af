"""SFT: next-token cross-entropy on solution tokens only (the paper's baseline, pi_sft)."""

from __future__ import annotations

import torch

from eightfold.objectives.base import PolicyModule, token_logps


class SFTModule(PolicyModule):
    name = "sft"

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, mask = token_logps(logits, batch["labels"])
        loss = -logps.sum() / mask.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
