"""trainer=fsdp on what a CPU can check: the preset builds a Trainer with the sharded strategy and
the precision policy, the layer policy finds a model's decoder layers (or stops), and a sharded
checkpoint (a folder) is swapped in whole and found by the resume path. torch's FSDP itself needs
an accelerator (torch 2.13 refuses a CPU device), so no FSDP step runs here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from eightfold.checkpointing import checkpoint_step
from eightfold.models import tiny_gpt
from eightfold.runfiles import CHECKPOINTS, LAST_CKPT, last_checkpoint, remove_temp_files
from eightfold.sharding import LayerPolicy, ShardedFSDP, fsdp_mixed_precision
from tests.helpers import compose_cfg


def test_the_fsdp_preset_builds_a_sharded_mixed_precision_trainer(tmp_path):
    cfg = compose_cfg(["trainer=fsdp", f"paths.root={tmp_path}"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == 8
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, ShardedFSDP)
    assert strategy._state_dict_type == "sharded"
    mp = strategy.mixed_precision
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    wrap = strategy.kwargs["auto_wrap_policy"]
    ckpt = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert "LlamaDecoderLayer" in wrap.names and ckpt.names == wrap.names
    # the whole trainer instantiates (on a GPU machine: as it is; here the devices are lent)
    trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, ShardedFSDP)


def test_mixed_precision_follows_trainer_precision():
    assert fsdp_mixed_precision("32-true") is None
    with pytest.raises(ValueError, match="trainer.precision=16-mixed with trainer=fsdp"):
        fsdp_mixed_precision("16-mixed")


def test_layer_policy_wraps_the_decoder_layers_or_stops():
    model, _ = tiny_gpt(n_layer=2, n_embd=32, n_head=2)
    policy = LayerPolicy(["GPT2Block"])
    assert policy(model, recurse=True)  # the root: recurse into it
    wrapped = [type(m).__name__ for m in model.modules() if policy(m, recurse=False)]
    assert wrapped == ["GPT2Block", "GPT2Block"]
    with pytest.raises(ValueError, match=r"match no module of this model: add .*GPT2Block"):
        LayerPolicy(["LlamaDecoderLayer"])(model, recurse=True)


def _checkpoint(step: int) -> dict:
    return {
        "state_dict": {"w": torch.full((4,), float(step))},
        "optimizer_states": [],
        "global_step": step,
        "epoch": 0,
    }


def test_a_sharded_checkpoint_is_swapped_in_whole_and_resumed_from(tmp_path: Path):
    """Saved twice to checkpoints/last.ckpt (as ModelCheckpoint does): a folder each time, no temp
    folder left, and the resume path (runfiles.last_checkpoint, the step it reports) reads it."""
    strategy = ShardedFSDP(state_dict_type="sharded")
    path = tmp_path / CHECKPOINTS / LAST_CKPT
    assert last_checkpoint(tmp_path) is None
    for step in (3, 7):
        strategy.save_checkpoint(_checkpoint(step), path)
        assert path.is_dir() and last_checkpoint(tmp_path) == path
        assert checkpoint_step(last_checkpoint(tmp_path)) == step
        assert sorted(p.name for p in path.parent.iterdir()) == [LAST_CKPT]
    # a save killed midway leaves only its temp folder: the last checkpoint is untouched, and the
    # next attempt (holding the run's lock) removes the leftover
    (path.parent / f".{LAST_CKPT}.tmp").mkdir()
    assert checkpoint_step(last_checkpoint(tmp_path)) == 7
    remove_temp_files(tmp_path)
    assert sorted(p.name for p in path.parent.iterdir()) == [LAST_CKPT]
    # a folder without Lightning's metadata is not a checkpoint (its save did not finish)
    (path / "meta.pt").unlink()
    assert last_checkpoint(tmp_path) is None
