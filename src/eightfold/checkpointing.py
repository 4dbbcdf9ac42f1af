"""Atomic checkpoints: a crash or preemption mid-write never leaves a truncated last.ckpt."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from eightfold.rundir import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Serialise to memory, then write-to-temp + rename (Lightning writes in place)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getvalue())
