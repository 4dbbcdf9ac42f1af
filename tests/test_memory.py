"""Will it fit (eightfold.memory): the estimate against PyTorch's measured peak of one real training
step on CPU, against the H100 anchors on paper, and the sweep that refuses a run that cannot fit.

The measured peak of a step: the bytes of the tensors alive before it (parameters and AdamW state,
summed exactly; gradients are freed by ``zero_grad``) plus the highest point of the running sum
of every allocation and free the profiler records during forward, backward and ``opt.step()``
(``torch.profiler`` with ``profile_memory=True``: the CPU allocator's own events, so the number is
exact, not sampled). The estimate sums parts that peak at different moments, so it may read high;
the stated factor is measured / 1.0 .. measured * 1.25.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eightfold import memory
from eightfold.models import char_tokenizer, enable_activation_checkpointing
from eightfold.objectives.base import model_token_logps
from eightfold.rundir import config_hash

try:  # tests/ may or may not become a package
    from .helpers import REPO, compose_cfg, run_cli
except ImportError:  # pragma: no cover - depends on how pytest imports tests/
    from helpers import REPO, compose_cfg, run_cli

FACTOR = (0.95, 1.25)  # estimate / measured peak, for every case below


def measured_peak(model, batch: int, length: int, vocab: int, autocast=False, chunk=None) -> int:
    """Peak bytes of one forward + backward + AdamW step (see the module docstring)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logps, mask = model_token_logps(model, data, chunk)  # every objective's log-prob path
            loss = -(logps.sum() / mask.sum())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW's state exists from here on
    alive = sum(p.numel() * p.element_size() for p in model.parameters())
    alive += sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert events, "the profiler recorded no allocation"
    now = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()  # + allocated, - freed
        peak = max(peak, now)
    return alive + peak


def small_lm(kind: str, **kw):
    """A randomly initialised Qwen2 or Llama built from a config (a few 100 k parameters)."""
    cls, model_cls = (
        (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    )
    args = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    config = cls(**{**args, **kw})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return model_cls(config), config


def test_parameter_counts_equal_the_built_models(tmp_path):
    tiny_cfg = compose_cfg(["experiment=smoke", f"paths.root={tmp_path}"])
    model, tokenizer = instantiate(tiny_cfg.model)
    assert memory.TINY_VOCAB == len(char_tokenizer()) == len(tokenizer)
    shape = memory.model_shape(tiny_cfg.model)
    assert shape.params() == sum(p.numel() for p in model.parameters())
    for kind, kw in [
        ("qwen2", {}),
        ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    ]:
        model, config = small_lm(kind, **kw)
        shape = memory.shape_from_hf_config(config.to_dict())
        assert shape.params() == sum(p.numel() for p in model.parameters()), kind
    # the hub names without a config here: their published sizes
    assert round(memory.KNOWN_MODELS["Qwen/Qwen2.5-0.5B"].params() / 1e6) == 494
    assert round(memory.KNOWN_MODELS["deepseek-ai/deepseek-math-7b-base"].params() / 1e9, 2) == 6.91


def test_tiny_gpt_estimate_from_its_config_matches_a_measured_step(tmp_path):
    cfg = compose_cfg(["experiment=smoke", f"paths.root={tmp_path}"])
    shape = memory.model_shape(cfg.model)
    batch, length = memory.step_batch(cfg), memory.seq_len(cfg, shape)
    assert (batch, length) == (cfg.data.batch_size, 2 * cfg.data.max_new_tokens)
    model, _ = instantiate(cfg.model)
    model.train()
    peak = measured_peak(model, batch, length, shape.vocab)
    est = memory.estimate_config(cfg)
    assert FACTOR[0] <= est.total / peak <= FACTOR[1], (memory.summary(est), peak)


@pytest.mark.parametrize(
    "kind, kw, batch, length, options",
    [
        ("qwen2", {}, 4, 256, {}),  # full logits, fp32
        (
            "qwen2",
            {},
            4,
            256,
            {"precision": "bf16-mixed"},
        ),  # CPU autocast: fp32 master, bf16 compute
        ("llama", {"vocab_size": 4096}, 2, 256, {"checkpointing": True}),
        ("llama", {"vocab_size": 4096}, 2, 256, {"logits_chunk": 128}),
    ],
    ids=["qwen2-fp32", "qwen2-bf16-autocast", "llama-checkpointing", "llama-chunked-logits"],
)
def test_hf_estimate_matches_a_measured_step(kind, kw, batch, length, options):
    model, config = small_lm(kind, **kw)
    if options.get("checkpointing"):
        enable_activation_checkpointing(model)
    model.train()
    autocast = options.get("precision") == "bf16-mixed"
    peak = measured_peak(
        model, batch, length, config.vocab_size, autocast, options.get("logits_chunk")
    )
    shape = memory.shape_from_hf_config(config.to_dict())
    est = memory.estimate(shape, batch, length, **{"precision": "32-true", **options})
    assert FACTOR[0] <= est.total / peak <= FACTOR[1], (memory.summary(est), peak)


def test_a_local_model_dir_is_read_and_dpo_doubles_the_batch(tmp_path):
    _, config = small_lm("qwen2")
    config.save_pretrained(tmp_path / "lm")  # config.json only: the estimate needs no weights
    cfg = compose_cfg(["model=hf", f"model.name={tmp_path / 'lm'}", "objective=dpo", "trainer=gpu"])
    assert memory.model_shape(cfg.model) == memory.shape_from_hf_config(config.to_dict())
    assert memory.step_batch(cfg) == 2 * cfg.objective.module.batch_size  # chosen + rejected
    sft = compose_cfg(["model=hf", f"model.name={tmp_path / 'lm'}", "trainer=gpu"])
    assert memory.step_batch(sft) == sft.data.batch_size


def test_strategies_shard_the_states_and_checkpointing_cuts_activations():
    shape = memory.KNOWN_MODELS["deepseek-ai/deepseek-math-7b-base"]
    ddp = memory.estimate(shape, 8, 1024, strategy="ddp")
    fsdp = memory.estimate(shape, 8, 1024, strategy="fsdp", shards=8, checkpointing=True)
    p = shape.params()
    assert ddp.params + ddp.grads + ddp.optimizer == 20 * p  # 16 bytes/param + DDP's buckets
    assert fsdp.optimizer == 8 * p // 8 and fsdp.activations < ddp.activations / 5
    assert not ddp.fits(80) and fsdp.fits(80)


def test_trainer_configs_are_read_as_their_strategy(tmp_path):
    fsdp = compose_cfg(["trainer=fsdp", "trainer.num_nodes=2"])
    assert memory.strategy_of(fsdp.trainer) == ("fsdp", 16, True)
    assert memory.strategy_of(compose_cfg(["trainer=ddp"]).trainer) == ("ddp", 1, False)
    assert memory.strategy_of(compose_cfg(["trainer=gpu"]).trainer) == ("single", 1, False)


def test_unknown_hub_name_and_bad_limit_are_one_clear_error():
    with pytest.raises(memory.MemoryConfigError, match="model.name='org/unknown-7b'"):
        memory.model_shape({"_target_": "eightfold.models.hf_causal_lm", "name": "org/unknown-7b"})
    with pytest.raises(memory.MemoryConfigError, match="gpu_memory_gib='80GB' is not valid"):
        memory.gpu_limit({"gpu_memory_gib": "80GB"})


def test_gpu_memory_gib_is_not_part_of_the_run_hash(tmp_path):
    cfg = compose_cfg([f"paths.root={tmp_path}"])
    assert cfg.gpu_memory_gib is None
    assert config_hash(cfg) == config_hash(
        compose_cfg([f"paths.root={tmp_path}", "gpu_memory_gib=80"])
    )


# The H100 anchors (docs/sweeps-and-slurm.md#will-it-fit; measured by a plain transformers step:
# batch 8 x 1024, fp32 master + bf16 autocast, fused AdamW, sdpa, full logits, one device).
ANCHORS = {"Qwen/Qwen2.5-0.5B": 32.6, "Qwen/Qwen2.5-1.5B": 59.6}


@pytest.mark.parametrize("name", ANCHORS)
def test_h100_anchors_on_paper(name):
    est = memory.estimate(memory.KNOWN_MODELS[name], 8, 1024, precision="bf16-mixed")
    assert 1.0 <= est.total / memory.GIB / ANCHORS[name] <= 1.15  # high by the grads (see docs)


# ----------------------------------------------------------------------------- the sweep refuses
def test_seven_b_dry_run_fits_sharded_and_is_refused_replicated(tmp_path):
    """sweeps/gsm8k_7b.yaml itself (trainer=fsdp, 8 GPUs, gpu_memory_gib=80): its dry run shows
    the memory table and passes; with trainer=ddp every run is refused, by the sweep's own limit."""
    sweep = REPO / "sweeps" / "gsm8k_7b.yaml"
    assert "- gpu_memory_gib=80" in sweep.read_text()  # else nothing below could be refused
    extra = [f"data.train_file={tmp_path / 't.jsonl'}", f"data.test_file={tmp_path / 'e.jsonl'}"]
    root = ["--root", str(tmp_path / "root")]
    ok = run_cli(["eightfold.sweep", str(sweep), "--dry-run", *root, *extra], cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
    assert "GPU mem/dev est." in ok.stdout and "/80 GiB" in ok.stdout
    assert "does not fit" not in ok.stdout + ok.stderr
    args = ["eightfold.sweep", str(sweep), "--dry-run", *root, *extra, "trainer=ddp"]
    bad = run_cli(args, cwd=tmp_path)
    assert bad.returncode == 2, bad.stdout + bad.stderr[-3000:]
    refused = [
        line for line in (bad.stdout + bad.stderr).splitlines() if "invalid config [" in line
    ]
    assert refused and all(
        "does not fit" in line and "gpu_memory_gib=80" in line for line in refused
    )
    assert all(
        "-gsm8k" in line and "GiB per device" in line and "largest part" in line for line in refused
    )
    # a real launch is refused the same way, before anything runs
    real = run_cli(["eightfold.sweep", str(sweep), *root, *extra, "trainer=ddp"], cwd=tmp_path)
    assert real.returncode == 2 and "does not fit" in real.stdout + real.stderr
    assert not (tmp_path / "root" / "runs").exists()


def test_the_single_gpu_study_fits_one_80_gb_gpu(tmp_path):
    """sweeps/gsm8k_qwen0.5b.yaml: every run fits one 80 GB GPU (the dry run docs/real-models.md
    shows), and refuses once the limit is below its estimate (21.3 GiB when written)."""
    sweep = REPO / "sweeps" / "gsm8k_qwen0.5b.yaml"
    assert "- gpu_memory_gib=80" in sweep.read_text()
    args = [
        "eightfold.sweep",
        str(sweep),
        "--dry-run",
        "--root",
        str(tmp_path / "root"),
        f"data.train_file={tmp_path / 't.jsonl'}",
        f"data.test_file={tmp_path / 'e.jsonl'}",
    ]
    ok = run_cli(args, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
    rows = [line for line in ok.stdout.splitlines() if "/80 GiB" in line]
    assert len(rows) == 20 and "does not fit" not in ok.stdout + ok.stderr
    small = run_cli([*args, "gpu_memory_gib=16"], cwd=tmp_path)
    assert small.returncode == 2 and "more than gpu_memory_gib=16" in small.stdout + small.stderr
