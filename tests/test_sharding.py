"""trainer=fsdp on what a CPU can check: the preset builds a Trainer with the sharded strategy and
the precision policy, the layer policy finds a model's decoder layers (or stops), a sharded
checkpoint (a folder) is swapped in whole and found by the resume path, and the end of a run
gathers the whole model onto rank 0 for its save.

Lightning's FSDPStrategy does not train on a CPU (it passes FSDP no device and torch 2.13 refuses:
"FSDP needs a non-CPU accelerator device"), but torch's FSDP does with ``device_id=cpu`` and the
gloo backend: the gather test runs two real ranks, the model wrapped as the strategy wraps it."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from eightfold.checkpointing import checkpoint_step
from eightfold.models import tiny_gpt
from eightfold.runfiles import CHECKPOINTS, LAST_CKPT, last_checkpoint, remove_temp_files
from eightfold.sharding import (
    LayerPolicy,
    ShardedFSDP,
    fsdp_mixed_precision,
    full_state_dict,
    unsharded,
)
from tests.helpers import compose_cfg


def test_the_fsdp_preset_builds_a_sharded_mixed_precision_trainer(tmp_path):
    cfg = compose_cfg(["trainer=fsdp", f"paths.root={tmp_path}"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == 8
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, ShardedFSDP)
    assert strategy._state_dict_type == "sharded"
    mp = strategy.mixed_precision
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mp.buffer_dtype is None  # RoPE's inv_freq is not rounded to bf16
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


# The end of an FSDP run (train.py step 4): every rank gathers, rank 0 saves and evaluates.

LAYERS = ["LlamaDecoderLayer"]
LR = 1.0  # SGD: the update is the gradient itself, so a gradient reduced wrongly would show


def _llama():
    """A tiny Llama with tied embeddings (as Qwen2.5-0.5B's) and RoPE buffers, the same weights
    in every process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def _sft_step(module, training_step, batch) -> None:
    """One SGD step on ``module``'s parameters of the loss ``training_step(batch, 0)``."""
    opt = torch.optim.SGD(module.parameters(), lr=LR)
    training_step(batch, 0).backward()
    opt.step()


def _batch(rows: slice) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 64, (4, 12), generator=torch.Generator().manual_seed(1))[rows]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _fsdp_rank(rank: int, port: int, out: str) -> None:
    """One of two ranks (gloo, CPU): the SFT LightningModule wrapped as FSDPStrategy._setup_model
    wraps it (a root unit around the LightningModule, one unit and activation checkpointing per
    decoder layer, use_orig_params), one step on this rank's half of the batch through Lightning's
    forward redirection, then the end of a run: full_state_dict on every rank, rank 0 unshards
    and saves."""
    import torch.distributed as dist
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    from lightning.pytorch.strategies.strategy import _ForwardRedirection
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from eightfold.objectives.sft import SFTModule
    from eightfold.train import save_model_atomic

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for precision in ("32-true", "bf16-mixed"):
            module = SFTModule(_llama(), tokenizer=None)
            module.setup("fit")
            wrapped = FSDP(
                module,
                auto_wrap_policy=LayerPolicy(LAYERS),
                mixed_precision=fsdp_mixed_precision(precision),
                device_id=torch.device("cpu"),
                use_orig_params=True,
            )
            _setup_activation_checkpointing(wrapped, {"auto_wrap_policy": LayerPolicy(LAYERS)})
            redirect = partial(_ForwardRedirection(), wrapped, module, "training_step")
            _sft_step(wrapped, redirect, _batch(slice(2 * rank, 2 * rank + 2)))
            state = full_state_dict(wrapped)
            if rank == 0:
                model = unsharded(module.model, state)
                save_model_atomic(model, _tokenizer(), Path(out) / precision)
                with torch.no_grad():  # what evaluation runs: the plain model's own forward
                    logits = model(input_ids=_batch(slice(0, 4))["input_ids"]).logits
                torch.save(
                    {
                        "state": state,
                        "logits": logits,
                        "buffers": dict(model.named_buffers()),
                        "classes": sorted({type(m).__name__ for m in model.modules()}),
                        "tied": model.lm_head.weight is model.model.embed_tokens.weight,
                    },
                    Path(out) / f"{precision}.pt",
                )
            else:
                torch.save({"state": state}, Path(out) / f"{precision}-rank1.pt")
    finally:
        dist.destroy_process_group()


def _tokenizer():
    from tests.real_model import train_bpe_tokenizer

    return train_bpe_tokenizer(["1+2=3\n4+5=9\n"], vocab_size=64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step without a Trainer
def test_the_end_of_an_fsdp_run_saves_the_whole_trained_model_from_rank_0(tmp_path: Path):
    """Two ranks train one step under FSDP, and the end of the run (train.py step 4) gathers: rank
    0 gets every weight of the policy under the HF model's own names, equal to the same step
    without FSDP on the whole batch (so it is not rank 0's shard, nor the weights before the
    step), in fp32 master precision under bf16-mixed too; rank 1 gets nothing; the unsharded
    model has no FSDP or checkpoint wrapper left, its tied head tied again and its RoPE buffer
    as built (fp32, not rounded by FSDP); save_pretrained + from_pretrained round-trips it, and
    its forward (what rank 0 evaluates) is the reloaded model's."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    from eightfold.objectives.sft import SFTModule

    mp.spawn(_fsdp_rank, args=(_free_port(), str(tmp_path)), nprocs=2)

    # the same step without FSDP, on the whole batch (the two halves have equal token counts)
    reference = SFTModule(_llama(), tokenizer=None)
    reference.setup("fit")
    before = {k: v.clone() for k, v in reference.model.state_dict().items()}
    _sft_step(reference, reference.training_step, _batch(slice(0, 4)))
    expected = reference.model.state_dict()
    assert full_state_dict(reference) is None  # not FSDP: rank 0's model is whole already
    ids = _batch(slice(0, 4))["input_ids"]
    with torch.no_grad():
        logits = reference.model(input_ids=ids).logits
    fresh_buffers = dict(_llama().named_buffers())
    assert "model.rotary_emb.inv_freq" in fresh_buffers

    for precision in ("32-true", "bf16-mixed"):
        saved = torch.load(tmp_path / f"{precision}.pt")
        state = saved["state"]
        assert torch.load(tmp_path / f"{precision}-rank1.pt")["state"] == {}
        assert sorted(state) == sorted(expected)  # the HF model's keys, no FSDP prefix
        assert {v.dtype for v in state.values()} == {torch.float32}  # the fp32 master weights
        for name, want in expected.items():
            assert state[name].shape == want.shape, name
            step, got = want - before[name], state[name] - before[name]
            if precision == "32-true":  # the same numbers up to the order of the reduction
                torch.testing.assert_close(state[name], want, rtol=0, atol=1e-6, msg=name)
            else:  # bf16 compute: the same step within bf16's precision
                assert (got - step).norm() <= 0.05 * step.norm(), name
            assert step.abs().max() > 1e-4, name  # every tensor moved, by far more than 1e-6
        assert not {"FullyShardedDataParallel", "CheckpointWrapper"} & set(saved["classes"])
        assert saved["tied"]
        for name, buf in fresh_buffers.items():
            assert torch.equal(saved["buffers"][name], buf), name

        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / precision)
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        on_disk = loaded.state_dict()
        assert sorted(on_disk) == sorted(state)
        for name, tensor in state.items():
            assert torch.equal(on_disk[name], tensor), name
        # rank 0 evaluates what pi_sft will load: the same forward as the saved model's
        with torch.no_grad():
            reloaded = loaded(input_ids=ids).logits
        torch.testing.assert_close(saved["logits"], reloaded, rtol=0, atol=1e-6)
        if precision == "32-true":
            torch.testing.assert_close(saved["logits"], logits, rtol=0, atol=1e-5)
