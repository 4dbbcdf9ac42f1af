"""Sharded training (``trainer=fsdp``): Lightning's FSDPStrategy with the pieces a config names.

- :class:`LayerPolicy`: which modules become FSDP units and are activation-checkpointed, by class
  name (a config names them before the model is loaded);
- :func:`fsdp_mixed_precision`: the precision policy under FSDP (fp32 shards, bf16 compute);
- :class:`ShardedFSDP`: FSDPStrategy whose sharded checkpoint (a folder: one file per rank plus
  Lightning's ``meta.pt``) replaces the previous one by rename, so a kill mid-save leaves the
  last complete checkpoint for the requeued job (Lightning writes the folder in place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy

from eightfold.runfiles import TEMP_SUFFIX


class LayerPolicy:
    """An FSDP policy by class name: wrap (shard, checkpoint) every module whose class is named in
    ``names``, e.g. ``[Qwen2DecoderLayer, LlamaDecoderLayer]``. A model with none of them is
    refused on the first call: FSDP would otherwise make the whole model one unit (all of it
    gathered at once) and checkpoint nothing, silently."""

    def __init__(self, names: list[str]):
        self.names = tuple(names)
        self._checked = False

    def __call__(self, module: torch.nn.Module, recurse: bool, nonwrapped_numel: int = 0) -> bool:
        if not self._checked:  # the first call is on the root: check the whole model once
            self._checked = True
            if not {type(m).__name__ for m in module.modules()} & set(self.names):
                layers = sorted(
                    {
                        n
                        for m in module.modules()
                        for n in getattr(m, "_no_split_modules", None) or []
                    }
                )
                raise ValueError(
                    f"trainer.strategy.auto_wrap_policy.names={list(self.names)} match no module of"
                    f" this model: add its decoder layer class ({', '.join(layers) or 'see print(model)'})"
                )
        return recurse or type(module).__name__ in self.names


def fsdp_mixed_precision(precision: str):
    """FSDP's mixed precision for ``trainer.precision``: the shards (master weights, AdamW state)
    stay fp32; ``bf16-mixed`` gathers parameters and computes in bf16 but reduces gradients in
    fp32 (summed over ranks in bf16 they would keep ~3 significant digits); ``32-true``: all fp32."""
    from torch.distributed.fsdp import MixedPrecision

    if precision == "32-true":
        return None
    if precision != "bf16-mixed":
        raise ValueError(
            f"trainer.precision={precision} with trainer=fsdp: expected bf16-mixed or 32-true"
        )
    return MixedPrecision(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.bfloat16
    )


class ShardedFSDP(FSDPStrategy):
    """FSDPStrategy with atomic sharded checkpoints. GPU only: torch's FSDP refuses a CPU device
    (torch 2.13), so the CPU tests check the preset, the policies and the checkpoint swap."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        # 1. every rank writes its shard into one temp folder beside the target (the name is
        #    the same on all ranks; a killed save leaves it to runfiles.remove_temp_files)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
        old = path.with_name(f".{path.name}.old{TEMP_SUFFIX}")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()
        # 2. rank 0 swaps it in by two renames: the old checkpoint is whole until the new one is
        if self.global_rank == 0:
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        self.barrier()
