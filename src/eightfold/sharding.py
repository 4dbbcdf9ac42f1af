"""Sharded training (``trainer=fsdp``): Lightning's FSDPStrategy with the pieces a config names.

- :class:`LayerPolicy`: which modules become FSDP units and are activation-checkpointed, by class
  name (a config names them before the model is loaded);
- :func:`fsdp_mixed_precision`: the precision policy under FSDP (fp32 shards, bf16 compute);
- :class:`ShardedFSDP`: FSDPStrategy whose sharded checkpoint (a folder: one file per rank plus
  Lightning's ``meta.pt``) replaces the previous one by rename, so a kill mid-save leaves the
  last complete checkpoint for the requeued job (Lightning writes the folder in place);
- :func:`full_state_dict` and :func:`unsharded`: after ``trainer.fit``, the policy's whole weights
  gathered by every rank onto rank 0, and the policy as a plain HF model holding them, for the
  rank-0 save (``model/``, pi_sft of every other run) and evaluation.
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
    fp32 (summed over ranks in bf16 they would keep ~3 significant digits) and leaves buffers as
    loaded (Lightning's autocast covers their use); ``32-true``: all fp32."""
    from torch.distributed.fsdp import MixedPrecision

    if precision == "32-true":
        return None
    if precision != "bf16-mixed":
        raise ValueError(
            f"trainer.precision={precision} with trainer=fsdp: expected bf16-mixed or 32-true"
        )
    # buffer_dtype=None: buffers keep their dtype. bf16 would round RoPE's inv_freq in place, in
    # training and in the model rank 0 evaluates (Llama's head_dim 128: up to 1.2 rad of rotation
    # off at position 1000).
    return MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=None)


class ShardedFSDP(FSDPStrategy):
    """FSDPStrategy with atomic sharded checkpoints. GPU only: on a CPU Lightning passes FSDP no
    device and torch refuses ("FSDP needs a non-CPU accelerator device", torch 2.13); given
    ``device_id=cpu`` torch's FSDP runs there, which is how the CPU tests train a sharded step."""

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


def full_state_dict(wrapped: torch.nn.Module, prefix: str = "model.") -> dict[str, Any] | None:
    """The policy's whole (unsharded) weights after training under FSDP.

    ``wrapped`` is the module the strategy trained (``trainer.strategy.model``): under
    FSDPStrategy the root ``FullyShardedDataParallel`` around the LightningModule, one unit per
    decoder layer inside. The gather is a collective: every rank must call this. Rank 0 gets the
    entries under ``prefix`` (the LightningModule's ``model``) with the HF model's own keys, in
    the master dtype (fp32); the other ranks get ``{}``. Any other strategy: None (rank 0's model
    is whole already).
    """
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(wrapped, FSDP):
        return None
    # 1. Lightning's own full-state-dict context (FSDPStrategy.lightning_module_state_dict): units
    #    gathered one at a time, kept by rank 0 alone, moved to host memory as they come (7B in
    #    fp32 is 28 GB). On a CPU device they are there already, and offload_to_cpu would free
    #    them under the returned dict (torch 2.13 segfaults in the state-dict hook).
    offload = wrapped.compute_device.type != "cpu"
    config = FullStateDictConfig(offload_to_cpu=offload, rank0_only=True)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
        state = wrapped.state_dict()
    # 2. the policy's entries under its own names (FSDP and checkpoint prefixes are already out)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def unsharded(model: torch.nn.Module, state: dict[str, Any]) -> torch.nn.Module:
    """``model`` (the policy that FSDP trained, wrapped in place) as a plain model on the CPU
    holding ``state`` (rank 0's :func:`full_state_dict`): what ``save_pretrained`` and evaluation
    need. Cheap: the gathered tensors become the parameters (no copy, no second model), and the
    buffers are the model's own (RoPE's inv_freq as built; not in a state dict)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # 1. each layer is FSDP(CheckpointWrapper(layer)) after Lightning's wrap: put the layer back
    def unwrap(parent: torch.nn.Module) -> None:
        for name, child in list(parent.named_children()):
            inner = child
            while isinstance(inner, (FSDP, ActivationWrapper)):
                inner = (
                    inner.module if isinstance(inner, FSDP) else inner._checkpoint_wrapped_module
                )
            if inner is not child:
                setattr(parent, name, inner)
            unwrap(inner)

    unwrap(model)
    # 2. the gathered tensors replace the shards (a shard is a flat piece of another shape, which
    #    load_state_dict refuses even with assign=True); every name must match
    names = set(model.state_dict())
    if set(state) != names:
        raise ValueError(
            f"the gathered state dict does not match the model: missing {sorted(names - set(state))},"
            f" unexpected {sorted(set(state) - names)}"
        )
    for name, tensor in state.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            old = module._parameters[leaf]
            module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:  # a persistent buffer
            module._buffers[leaf] = tensor
    # 3. tied weights (an LM head sharing the embedding) came as two copies: tie them again
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.cpu()
