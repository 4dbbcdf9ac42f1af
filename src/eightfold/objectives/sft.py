"""objective=sft: next-token cross-entropy on solution tokens only (the paper's baseline, pi_sft).

It trains on the run's datamodule as it is, for ``trainer.max_steps``; every other objective
that starts from pi_sft trains (or finds) an SFT run of the same (data, model, seed) first.
"""

from __future__ import annotations

import torch

from eightfold.objectives.base import PolicyModule, model_token_logps


class SFTModule(PolicyModule):
    name = "sft"
    needs_pi_sft = False
    train_steps: int | None = None  # trainer.max_steps

    def prepare(self, cfg, data, pi_sft) -> None:
        return None  # train on `data`: the teacher's solutions

    def result_fields(self) -> dict:
        return {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logps, mask = model_token_logps(self.model, batch, self.logits_chunk_size)
        loss = -logps.sum() / mask.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
