"""Teacher generation throughput: problems per second for the hf teacher with a tiny local model.

    python benchmarks/bench_generation.py [--problems 256] [--threads 1] [--device cpu]

The model is ``eightfold.models.tiny_gpt`` at its defaults (2 layers, width 128, 0.42 M
parameters; no hub), randomly initialised, so it never emits EOS: every sample runs to
``max_new_tokens``. That is the worst case per token budget; a trained teacher that stops after
its answer line is faster. Rows:

* teacher.generate alone, over batch size x samples per prompt;
* the whole stream path of ``synthetic_dataset`` (seed stream -> teacher -> verify + first wrong
  step -> cache JSONL, flushed per record) on a fresh cache directory.

Prompts are procedural problems (chains=2, steps=2): ~40 prompt tokens, 64 new tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from eightfold.data import cache
from eightfold.data.seeds import procedural_stream
from eightfold.data.synthetic import SeedStream, stream_builder
from eightfold.data.teachers import HFTeacher, Task
from eightfold.models import fingerprint_model, tiny_gpt

TASK = {"chains": 2, "steps": 2, "modulus": 7}


def bench_generate(model, tok, tasks, batch_size, samples, new_tokens) -> tuple[float, float]:
    teacher = HFTeacher(
        model,
        tok,
        "bench",
        temperature=1.0,
        top_p=1.0,
        samples=samples,
        max_new_tokens=new_tokens,
        batch_size=batch_size,
    )
    t0 = time.perf_counter()
    n = 0
    for start in range(0, len(tasks), batch_size):
        n += sum(len(s) for s in teacher.generate(tasks[start : start + batch_size], seed=start))
    dt = time.perf_counter() - t0
    return len(tasks) / dt, n / dt


def bench_pipeline(model, tok, problems, batch_size, new_tokens) -> float:
    """What synthetic_dataset runs for a new stream: stream_builder + cache.load_prefix. A fixed
    stream prefix, not a D_syn size: a random model's samples have no answer to keep."""

    def factory():
        return HFTeacher(
            model,
            tok,
            fingerprint_model(model),
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            batch_size=batch_size,
        )

    build = stream_builder(SeedStream("procedural", 0, task=TASK), factory, "procedural", 0)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        records = cache.load_prefix(Path(cache_dir), "teacher", {"bench": 1}, problems, build)
        dt = time.perf_counter() - t0
    assert len(records) == problems
    return problems / dt


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--problems", type=int, default=256, help="prompts per row")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared box)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = tiny_gpt(seed=0)
    model.to(args.device).eval()
    tasks = [
        Task(i, p.prompt, p.prompt, p)
        for i, p in enumerate(islice(procedural_stream(0, **TASK), args.problems))
    ]
    params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny_gpt {params / 1e6:.2f} M params, device={args.device}, threads={args.threads}, "
        f"{args.problems} prompts, {args.new_tokens} new tokens (no EOS: worst case)"
    )
    print(f"{'batch':>6} {'samples':>8} {'problems/s':>11} {'samples/s':>10} {'tokens/s':>10}")
    for batch_size, samples in [(16, 1), (64, 1), (256, 1), (64, 4)]:
        if batch_size > args.problems:
            continue
        pps, sps = bench_generate(model, tok, tasks, batch_size, samples, args.new_tokens)
        print(
            f"{batch_size:>6} {samples:>8} {pps:>11.1f} {sps:>10.1f} {sps * args.new_tokens:>10.0f}"
        )
    pps = bench_pipeline(model, tok, args.problems, 64, args.new_tokens)
    print(
        f"pipeline (teacher + verify + first wrong step + cache JSONL), batch 64, 1 sample: {pps:.1f} problems/s"
    )


if __name__ == "__main__":
    main()
