"""Resume-safe outputs: atomic checkpoints, and metrics that survive a resume."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from eightfold.runfiles import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Serialise to memory, then write-to-temp + rename (Lightning writes in place)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getvalue())


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        pass  # Lightning deletes an existing metrics.csv here; a resumed run appends to it instead


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that keeps one metrics.csv across a resume (the same logger run after a requeue)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
