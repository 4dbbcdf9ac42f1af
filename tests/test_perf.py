"""The fast paths compute what the plain paths compute: packed rows, chunked log-probs,
activation checkpointing, LoRA. (Speed itself is measured in benchmarks/, never asserted here.)"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import GPT2LMHeadModel

from eightfold.data.datamodule import collate_sft, pack_sequences
from eightfold.models import enable_activation_checkpointing, tiny_gpt
from eightfold.objectives.base import model_token_logps, sequence_logps, sequence_sums
from eightfold.objectives.preference import TokenizedPair, collate_pairs, reference_logps
from eightfold.rundir import run_dir
from eightfold.runfiles import MODEL_DIR, RESULT
from eightfold.train import run


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_sequences(n: int, seed: int = 0, vocab: int = 50) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) id lists of varied lengths; prompts start with BOS (id 1)."""
    rng = random.Random(seed)
    return [
        (
            [1] + [rng.randrange(4, vocab) for _ in range(rng.randint(3, 12))],
            [rng.randrange(4, vocab) for _ in range(rng.randint(2, 15))] + [2],
        )
        for _ in range(n)
    ]


def model_and_grads(model, batch, chunk_size=None):
    model.zero_grad()
    logps, mask = model_token_logps(model, batch, chunk_size)
    loss = -logps.sum() / mask.sum()
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_pack_sequences_layout():
    seqs = random_sequences(9)
    packed = pack_sequences(seqs, pad_id=0, pack_length=40)
    assert packed["input_ids"].shape[1] <= 40
    for i, (p, r) in enumerate(seqs):
        where = (packed["seq_ids"] == i).nonzero()
        row, cols = int(where[0, 0]), where[:, 1]
        assert (where[:, 0] == row).all() and cols.tolist() == list(
            range(int(cols[0]), int(cols[0]) + len(p) + len(r))
        )
        assert packed["input_ids"][row, cols].tolist() == p + r
        assert packed["position_ids"][row, cols].tolist() == list(range(len(p) + len(r)))
        assert packed["labels"][row, cols].tolist() == [-100] * len(p) + r
    # fewer rows than sequences: that is the point
    assert packed["input_ids"].shape[0] < len(seqs)
    with pytest.raises(ValueError, match="pack_length=8"):
        pack_sequences(seqs, pad_id=0, pack_length=8)


def test_packed_batch_gives_the_padded_loss_and_gradients():
    model, _ = tiny_gpt(2, 32, 2, 64, seed=0)
    seqs = random_sequences(12, seed=1)
    padded = collate_sft(seqs, pad_id=0)
    packed = collate_sft(seqs, pad_id=0, pack_length=64)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    loss_pad, grads_pad = model_and_grads(model, padded)
    loss_pack, grads_pack = model_and_grads(model, packed)
    assert loss_pack.item() == pytest.approx(loss_pad.item(), rel=1e-5)
    for name, g in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], g, rtol=1e-4, atol=1e-6)
    # per-sequence sums: a packed DPO batch scores each sequence exactly as a padded one
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_logps(model, packed), sequence_logps(model, padded), rtol=1e-5, atol=1e-5
        )


def test_packing_really_separates_sequences():
    """Without position_ids (one long causal sequence) the scores differ: the mask matters."""
    model, _ = tiny_gpt(2, 32, 2, 64, seed=0)
    seqs = random_sequences(6, seed=2)
    packed = collate_sft(seqs, pad_id=0, pack_length=64)
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    leaky["attention_mask"] = torch.ones_like(packed["input_ids"])
    with torch.no_grad():
        ok = model_token_logps(model, packed)[0]
        bad = model_token_logps(model, leaky)[0]
    assert not torch.allclose(ok, bad, atol=1e-4)


def test_dpo_pairs_pack_to_the_same_sequence_logps():
    model, _ = tiny_gpt(2, 32, 2, 64, seed=3)
    items = [TokenizedPair(p, r, list(reversed(r))) for p, r in random_sequences(5, seed=4)]
    padded, packed = collate_pairs(items, 0), collate_pairs(items, 0, pack_length=64)
    with torch.no_grad():
        a = sequence_sums(model_token_logps(model, padded)[0], padded)
        b = sequence_sums(model_token_logps(model, packed)[0], packed)
        n_a = sequence_sums(model_token_logps(model, padded)[1].float(), padded)
        n_b = sequence_sums(model_token_logps(model, packed)[1].float(), packed)
    assert a.shape == (10,)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert (
        n_a.tolist()
        == n_b.tolist()
        == [float(len(it.chosen)) for it in items] + [float(len(it.rejected)) for it in items]
    )


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_chunked_logps_equal_full_logits(chunk_size):
    model, _ = tiny_gpt(2, 32, 2, 64, seed=5)
    batch = collate_sft(random_sequences(8, seed=6), pad_id=0)
    loss_full, grads_full = model_and_grads(model, batch)
    loss_chunk, grads_chunk = model_and_grads(model, batch, chunk_size)
    assert loss_chunk.item() == pytest.approx(loss_full.item(), rel=1e-6)
    assert grads_chunk.keys() == grads_full.keys()
    for name, g in grads_full.items():
        torch.testing.assert_close(grads_chunk[name], g, rtol=1e-4, atol=1e-6)
    items = [TokenizedPair(p, r, r[::-1]) for p, r in random_sequences(6, seed=7)]
    torch.testing.assert_close(
        torch.tensor(reference_logps(model, items, 0, 4, chunk_size)),
        torch.tensor(reference_logps(model, items, 0, 4)),
    )


def test_gradient_checkpointing_gives_the_same_gradients():
    model, _ = tiny_gpt(2, 32, 2, 64, seed=8)
    model.train()
    batch = collate_sft(random_sequences(8, seed=9), pad_id=0)
    _, plain = model_and_grads(model, batch)
    enable_activation_checkpointing(model)
    assert model.transformer.gradient_checkpointing  # really on (train mode)
    _, ckpt = model_and_grads(model, batch)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, rtol=1e-5, atol=1e-7)


def test_perf_knobs_through_the_real_config_keep_the_run_and_its_numbers(smoke_cfg, tmp_path):
    plain = smoke_cfg("paths.root=" + str(tmp_path / "plain"))
    fast = smoke_cfg(
        "paths.root=" + str(tmp_path / "fast"),
        "perf.packing=true",
        "perf.logits_chunk_size=16",
        "perf.gradient_checkpointing=true",
    )
    assert (
        run_dir(fast).name == run_dir(plain).name
    )  # speed knobs are not part of the run's identity
    a, b = run(plain), run(fast)
    assert b["train_steps"] == a["train_steps"] == 30
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-3)
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=0.05)


def test_bad_perf_values_are_named(smoke_cfg):
    from eightfold.validate import ConfigError

    with pytest.raises(
        ConfigError, match="perf.pack_length=4096 exceeds the model's context of 128"
    ):
        run(smoke_cfg("perf.packing=true", "perf.pack_length=4096"))
    with pytest.raises(ConfigError, match="perf.logits_chunk_size=0"):
        run(smoke_cfg("perf.logits_chunk_size=0"))


def test_lora_trains_adapters_and_saves_merged_plain_weights(smoke_cfg):
    pytest.importorskip("peft")
    cfg = smoke_cfg("+model.lora={r:4,alpha:8}")
    result = run(cfg)
    assert result["train_steps"] == 30
    directory = run_dir(cfg)
    saved = GPT2LMHeadModel.from_pretrained(
        directory / MODEL_DIR
    )  # plain weights, no adapter files
    assert not (directory / MODEL_DIR / "adapter_config.json").exists()
    assert sum(p.numel() for p in saved.parameters()) == result["num_params"]
    # the base weights moved (adapters merged in), the embedding (not adapted) did not
    base, _ = tiny_gpt(1, 32, 2, 128, seed=0)
    assert not torch.allclose(
        saved.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight
    )
    assert torch.equal(saved.transformer.wte.weight, base.transformer.wte.weight)
    assert json.loads((directory / RESULT).read_text())["test_accuracy"] == result["test_accuracy"]
    with pytest.raises(ValueError, match="unknown keys \\['rank'\\]"):
        run(smoke_cfg("paths.root=" + str(directory.parent / "x"), "+model.lora={rank:4}"))
