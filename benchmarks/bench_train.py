"""Training throughput: eightfold (real config -> Lightning module + Trainer) vs a hand-written
plain-torch loop on the same model, the same batches and the same optimiser, in one process.

    python benchmarks/bench_train.py                        # CPU: the cpu_default model and data
    python benchmarks/bench_train.py --model qwen0.5b --device cuda --precision bf16-mixed
    python benchmarks/bench_train.py --objective dpo --steps 100
    python benchmarks/bench_train.py --model qwen0.5b --device cuda --load-dtype bfloat16

Rows (tokens/s counts real tokens, never padding; timing starts after --warmup steps):

  plain        model(...).logits -> loss -> backward -> clip -> AdamW -> LR schedule, nothing else
  eightfold    the objective's LightningModule from the composed Hydra config, trained by the
               Trainer a run builds (eightfold.train._build_trainer: checkpoint callback, CSV
               logger, progress bar): what every run pays for Lightning + Hydra
  + packing    eightfold with perf.packing=true (padding-free rows)
  + chunked    eightfold with perf.logits_chunk_size (LM head on scored tokens only)

Models: ``tiny`` = cpu_default's 2-layer width-128 GPT-2 on procedural problems, batch 32;
``qwen0.5b`` = a randomly initialised Qwen2-0.5B-shaped model (494 M parameters, no download)
on random tokens, batch 8 x 1024 with a 128-token prompt, as in docs/performance.md#the-gpu-anchor.
The overhead target is eightfold >= 0.95 x plain.

Precision policy (docs/real-models.md#precision): with ``--load-dtype bfloat16`` the eightfold rows
get the model in bf16, as ``model=hf model.dtype=bfloat16`` loads it, and the objective's own
``PolicyModule.setup`` must turn the weights that train into fp32 (AdamW state with them) while
``--precision bf16-mixed`` computes in bf16. Each eightfold row prints the dtypes it trained with
and stops the benchmark if the master weights are not fp32. The plain loop trains an fp32 copy
(the anchor's policy). For ``qwen0.5b`` each row is also printed against the H100 anchor
(docs/performance.md#the-gpu-anchor).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# The H100 anchor for the 0.5B shape (docs/performance.md#the-gpu-anchor): plain transformers,
# fp32 master weights + bf16 autocast, fused AdamW, batch 8 x 1024 tokens. Its DPO step also runs
# the reference forward (8N FLOPs per token); eightfold caches the reference log-probs (6N).
ANCHOR_TOKENS_S = {"sft": 62.9e3, "dpo": 46.2e3}


# ----------------------------------------------------------------------------- workloads
def tiny_workload(batch_size: int, varied: bool, seed: int = 0):
    from eightfold.data.examples import procedural_split
    from eightfold.generation import encode_prompt, encode_response
    from eightfold.models import tiny_gpt

    model, tok = tiny_gpt(2, 128, 4, 128, seed=seed)
    if varied:  # 2-5 steps per problem, shuffled: a spread of lengths, as in real data
        train = [
            e for s in (2, 3, 4, 5) for e in procedural_split(500, seed + s, 10, 12345, 1, s, 7)[0]
        ]
        random.Random(seed).shuffle(train)
    else:  # cpu_default: every problem has 4 steps, hence the same length (no padding at all)
        train, _ = procedural_split(2000, seed, 500, 12345, chains=1, steps=4, modulus=7)
    seqs = [(encode_prompt(tok, e.prompt), encode_response(tok, e.solution)) for e in train]
    rng = random.Random(seed)
    rejected = []  # DPO: the same solution with one result digit changed (a wrong step)
    for _, r in seqs:
        r = list(r)
        digits = [i for i, t in enumerate(r) if tok.convert_ids_to_tokens(t).isdigit()]
        i = rng.choice(digits)
        r[i] = tok.convert_tokens_to_ids(str((int(tok.convert_ids_to_tokens(r[i])) + 1) % 7))
        rejected.append(r)
    groups = [
        list(range(i, i + batch_size)) for i in range(0, len(seqs) - batch_size + 1, batch_size)
    ]
    return model, tok, seqs, rejected, groups


def qwen_workload(
    batch_size: int, seq_len: int, n_batches: int, varied: bool, layers: int = 24, seed: int = 0
):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from eightfold.models import char_tokenizer

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    tok = char_tokenizer()  # only its pad / eos ids are used
    g = torch.Generator().manual_seed(seed)
    seqs, rejected = [], []
    for _ in range(batch_size * n_batches):
        n = int(torch.randint(256, seq_len + 1, (1,), generator=g)) if varied else seq_len
        ids = torch.randint(10, config.vocab_size, (n,), generator=g).tolist()
        seqs.append((ids[:128], ids[128:]))
        rejected.append(ids[128:][::-1])
    groups = [list(range(i, i + batch_size)) for i in range(0, len(seqs), batch_size)]
    return model, tok, seqs, rejected, groups


# ----------------------------------------------------------------------------- plain loops
def sft_loss(logits: torch.Tensor, b: dict) -> torch.Tensor:
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), ignore_index=-100
    )


def dpo_loss(logits: torch.Tensor, b: dict, beta: float = 0.1) -> torch.Tensor:
    labels = b["labels"][:, 1:]
    mask = labels != -100
    logps = (
        torch.log_softmax(logits[:, :-1].float(), -1)
        .gather(2, labels.clamp(min=0).unsqueeze(-1))
        .squeeze(-1)
    )
    seq = (logps * mask).sum(-1)
    n = seq.shape[0] // 2
    margin = (seq[:n] - b["ref_chosen_logps"]) - (seq[n:] - b["ref_rejected_logps"])
    return -F.logsigmoid(beta * margin).mean()


def plain_loop(loss_fn, model, batches, steps, warmup, lr, device, precision) -> tuple[float, int]:
    """The hand-written baseline: forward, loss, backward, clip, AdamW, schedule; nothing else."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1, fused=device.type == "cuda"
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    model.train()
    tokens, t0 = 0, None
    for step in range(steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in batches[step % len(batches)].items()}
        with autocast:
            logits = model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False
            ).logits
        loss_fn(logits, b).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            tokens += int(b["attention_mask"].sum())
    sync(device)
    return time.perf_counter() - t0, tokens


# ----------------------------------------------------------------------------- eightfold
def as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with its parameters in ``dtype``, as ``from_pretrained(dtype=...)`` returns it
    (parameters only: buffers such as RoPE's inv_freq stay fp32 there too)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def precision_policy(module, trainer, load_dtype: torch.dtype, precision: str) -> str:
    """What the step trained with: the trainable weights' and AdamW state's dtypes. Stops the
    benchmark when they are not fp32: the precision policy would not hold."""
    master = {p.dtype for p in module.model.parameters() if p.requires_grad}
    state = {
        s["exp_avg"].dtype for o in trainer.optimizers for s in o.state.values() if "exp_avg" in s
    }
    line = (
        f"loaded {str(load_dtype).removeprefix('torch.')} -> master weights "
        f"{'/'.join(sorted(str(d).removeprefix('torch.') for d in master))}, AdamW state "
        f"{'/'.join(sorted(str(d).removeprefix('torch.') for d in state))}, compute {precision}"
    )
    if master != {torch.float32} or state != {torch.float32}:
        raise SystemExit(f"precision policy broken (expected fp32 master and state): {line}")
    return line


class StepTimer:
    """A Lightning callback: wall time and real tokens from step ``warmup`` to the last step's end
    (as the plain loop; the run's one-off teardown, e.g. saving last.ckpt, is not per-token work)."""

    def __init__(self, warmup: int, device: torch.device, tokens_per_batch: list[int]):
        import lightning as L

        timer = self

        class _CB(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == warmup:
                    sync(device)
                    timer.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step > warmup:
                    timer.tokens += tokens_per_batch[batch_idx % len(tokens_per_batch)]
                    sync(device)
                    timer.t1 = time.perf_counter()

        self.callback, self.t0, self.t1, self.tokens = _CB(), 0.0, 0.0, 0

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def eightfold_fit(
    objective, model, tok, batches, tokens_per_batch, args, device, perf: list[str]
) -> tuple[float, int]:
    """Train with the objective's module and the Trainer a run builds, from the composed config,
    on ``model`` as loaded in ``--load-dtype``; prints the precision policy it trained with."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from eightfold.train import CONF_DIR, _build_trainer, apply_perf

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    timer = StepTimer(args.warmup, device, tokens_per_batch)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "experiment=cpu_default",
            f"objective={objective}",
            f"trainer.max_steps={args.steps}",
            f"trainer.accelerator={accelerator}",
            f"trainer.precision={args.precision}",
            "trainer.enable_progress_bar=true",
            f"checkpoint_every_n_steps={10 * args.steps}",
            f"objective.module.lr={args.lr}",
            f"paths.root={tmp}",  # the default reads Hydra's runtime cwd, unset outside an app
            *perf,
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        module = instantiate(cfg.objective.module, model=model, tokenizer=tok, _convert_="all")

        class Holder:  # apply_perf sets the datamodule's pack length; the batches are prebuilt
            pack_length = None

        apply_perf(cfg.perf, model, Holder(), module)
        if objective == "dpo":
            module.total_steps = args.steps
        trainer = _build_trainer(cfg, Path(tmp))
        trainer.callbacks.append(timer.callback)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
        trainer.fit(module, train_dataloaders=loader)
    load_dtype = getattr(torch, args.load_dtype)
    print(
        f"  {objective} step ({' '.join(perf) or 'padded'}): "
        f"{precision_policy(module, trainer, load_dtype, args.precision)}"
    )
    return timer.seconds, timer.tokens


# ----------------------------------------------------------------------------- main
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_batches(objective, tok, seqs, rejected, groups, pack_length=None, ref=None):
    from eightfold.data.datamodule import collate_sft
    from eightfold.objectives.preference import TokenizedPair, collate_preference

    pad = tok.pad_token_id
    if objective == "sft":
        return [collate_sft([seqs[i] for i in g], pad, pack_length) for g in groups]
    return [
        collate_preference(
            [(TokenizedPair(seqs[i][0], seqs[i][1], rejected[i]), ref[i]) for i in g],
            pad,
            pack_length,
        )
        for g in groups
    ]


def anchor_note(objective: str, anchor: float, device: torch.device, args) -> str:
    """The line under a 0.5B table: the anchor, and whether this run's numbers compare with it."""
    line = f"H100 anchor ({objective.upper()}, plain torch, 8 x 1024): {anchor:,.0f} tokens/s"
    if device.type != "cuda" or args.layers != 24 or args.seq_len != 1024:
        return (
            f"{line} -- not comparable here ({device.type}, {args.layers} layer(s), "
            f"{args.seq_len} tokens): this checks the path, not the speed"
        )
    line += "; the packed row is closest to its shape (dense 1024-token rows)"
    if objective == "dpo":
        line += "; its DPO step also runs the reference forward (eightfold caches it)"
    return line


def real_tokens(batch) -> int:
    return (
        int((batch["seq_ids"] >= 0).sum())
        if "seq_ids" in batch
        else int(batch["attention_mask"].sum())
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--objective", choices=["sft", "dpo", "both"], default="both")
    ap.add_argument("--model", choices=["tiny", "qwen0.5b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--precision", default=None, help="32-true (CPU default) or bf16-mixed (GPU default)"
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=None, help="tiny: 32, qwen0.5b: 8")
    ap.add_argument("--seq-len", type=int, default=1024, help="qwen0.5b: tokens per sequence")
    ap.add_argument(
        "--varied",
        action="store_true",
        help="sequences of varied length (tiny: 1-4 steps; qwen0.5b: 256..seq-len tokens), "
        "where padding costs and packing pays",
    )
    ap.add_argument(
        "--chunk", type=int, default=4096, help="perf.logits_chunk_size of the chunked row"
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="alternate plain / eightfold this many times"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument(
        "--load-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype the eightfold rows get the model in (model.dtype); training must be fp32",
    )
    ap.add_argument(
        "--layers",
        type=int,
        default=24,
        help="qwen0.5b: decoder layers (fewer = a quick check of the path)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    load_dtype = getattr(torch, args.load_dtype)
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if args.threads:
        torch.set_num_threads(args.threads)
    import lightning as L

    L.seed_everything(0, verbose=False)
    if args.model == "tiny":
        base, tok, seqs, rejected, groups = tiny_workload(args.batch_size or 32, args.varied)
        pack_length = 128
    else:
        base, tok, seqs, rejected, groups = qwen_workload(
            args.batch_size or 8, args.seq_len, 4, args.varied, args.layers
        )
        pack_length = args.seq_len
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"model {args.model}: {n_params / 1e6:.2f} M parameters on {device} ({args.precision}), "
        f"{torch.get_num_threads()} CPU thread(s); {len(groups)} batches of {len(groups[0])}; "
        f"{args.steps} steps, timed after {args.warmup}; eightfold rows load {args.load_dtype}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")

    objectives = ["sft", "dpo"] if args.objective == "both" else [args.objective]
    for objective in objectives:
        ref = None
        if objective == "dpo":  # reference log-probs once, as the DPO objective caches them
            from eightfold.objectives.preference import TokenizedPair, reference_logps

            items = [TokenizedPair(p, r, rj) for (p, r), rj in zip(seqs, rejected)]
            ref = reference_logps(base.to(device), items, tok.pad_token_id, 64, args.chunk)
            base.cpu()
        padded = build_batches(objective, tok, seqs, rejected, groups, None, ref)
        packed = build_batches(objective, tok, seqs, rejected, groups, pack_length, ref)
        tokens_padded = [real_tokens(b) for b in padded]
        plain = functools.partial(plain_loop, sft_loss if objective == "sft" else dpo_loss)
        rows: dict[str, list[float]] = {}

        def record(name, seconds, tokens, rows=rows):
            rows.setdefault(name, []).append(tokens / seconds)
            gc.collect()  # the previous row's model, optimiser and Trainer must not share the device
            if device.type == "cuda":
                torch.cuda.empty_cache()

        for _ in range(args.repeats):  # alternate, so a noisy neighbour hits both alike
            model = copy.deepcopy(base).to(device)
            record(
                "plain torch loop",
                *plain(model, padded, args.steps, args.warmup, args.lr, device, args.precision),
            )
            model = as_loaded(copy.deepcopy(base), load_dtype).to(device)
            record(
                "eightfold (Lightning + Hydra config)",
                *eightfold_fit(objective, model, tok, padded, tokens_padded, args, device, []),
            )
        model = as_loaded(copy.deepcopy(base), load_dtype).to(device)
        record(
            "eightfold + perf.packing",
            *eightfold_fit(
                objective,
                model,
                tok,
                packed,
                [real_tokens(b) for b in packed],
                args,
                device,
                ["perf.packing=true", f"perf.pack_length={pack_length}"],
            ),
        )
        model = as_loaded(copy.deepcopy(base), load_dtype).to(device)
        record(
            f"eightfold + perf.logits_chunk_size={args.chunk}",
            *eightfold_fit(
                objective,
                model,
                tok,
                padded,
                tokens_padded,
                args,
                device,
                [f"perf.logits_chunk_size={args.chunk}"],
            ),
        )
        pad_frac = 1 - sum(tokens_padded) / sum(int(b["input_ids"].numel()) for b in padded)
        print(
            f"\n{objective.upper()}: padding is {100 * pad_frac:.1f}% of the padded batches' tokens"
        )
        anchor = ANCHOR_TOKENS_S[objective] if args.model == "qwen0.5b" else None
        print(
            f"{'row':46s} {'tokens/s (best)':>16s} {'all repeats':>24s} {'vs plain':>9s}"
            + (f" {'vs H100 anchor':>15s}" if anchor else "")
        )
        best_plain = max(rows["plain torch loop"])
        flops_per_token = (
            6 * n_params
        )  # policy forward + backward; the DPO reference pass is cached
        for name, values in rows.items():
            extra = ""
            if anchor:
                extra += f" {max(values) / anchor:14.3f}x"
            if device.type == "cuda":
                extra += f"  MFU {100 * max(values) * flops_per_token / 989e12:.1f}%"
            print(
                f"{name:46s} {max(values):16,.0f} {' '.join(f'{v:,.0f}' for v in values):>24s} "
                f"{max(values) / best_plain:8.3f}x{extra}"
            )
        if anchor:
            print(anchor_note(objective, anchor, device, args))


if __name__ == "__main__":
    main()
