"""MC rollout throughput: prefix reuse vs naive rollouts, in one run, on the same negatives.

    python benchmarks/bench_rollouts.py [--model-dir RUN/model] [--negatives 200] [--rollouts 8]

Workload: the step prefixes 0..L-1 of ``--negatives`` incorrect samples of pi_sft (every prefix,
no early stop, so each row rolls out exactly the same set of prefixes x M):

  naive-generate   eightfold.generation.generate(num_samples=M) per batch of prefixes: HF
                   generate copies each prefix M times (no prefix sharing)
  naive-loop       the rollout engine with share_prefix=False (the prefix fed M times)
  prefix-reuse     the rollout engine with share_prefix=True (one prefill per prefix, KV cache
                   expanded M times)
  + dedup+early    rollout_negatives as step_dpo runs it: identical prefixes once, scoring stops
                   at a negative's first dead prefix (fewer rollouts for the same step values)

Prints rollouts/s per row and the ratio prefix-reuse / naive. Without --model-dir it first trains
the cpu_default model (2 layers, width 128) for --train-steps steps on 4-step problems.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch


def train_model(steps: int, seed: int = 0):
    from eightfold.data.datamodule import TokenizedPairs, collate_sft
    from eightfold.data.examples import procedural_split
    from eightfold.models import tiny_gpt
    from eightfold.objectives.base import token_logps, warmup_cosine

    train, _ = procedural_split(2000, seed, 500, 12345, chains=1, steps=4, modulus=7)
    model, tok = tiny_gpt(2, 128, 4, 128, seed=seed)
    ds = TokenizedPairs(tok, [(e.prompt, e.solution) for e in train])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 50, steps))
    loader = torch.utils.data.DataLoader(
        ds,
        32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=functools.partial(collate_sft, pad_id=tok.pad_token_id),
    )
    step = 0
    while step < steps:
        for b in loader:
            lp, m = token_logps(
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                b["labels"],
            )
            (-lp.sum() / m.sum()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            step += 1
            if step >= steps:
                break
    return model.eval(), tok, train


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model-dir", help="a save_pretrained folder, e.g. <run>/model of an SFT run")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--negatives", type=int, default=200)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1024, help="rows per decode batch (all rows)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest for tiny models on a busy CPU)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from eightfold.data.examples import procedural_split
    from eightfold.generation import encode_prompt, generate
    from eightfold.rollouts import prefix_text, rollout_negatives, sample_continuations
    from eightfold.verify import is_correct, split_steps

    t0 = time.perf_counter()
    if args.model_dir:
        from eightfold.objectives.pi_sft import load_pretrained

        model, tok = load_pretrained(args.model_dir)
        train, _ = procedural_split(2000, 0, 500, 12345, chains=1, steps=4, modulus=7)
    else:
        model, tok, train = train_model(args.train_steps)
    model.to(args.device)
    print(
        f"model ready in {time.perf_counter() - t0:.1f} s on {args.device}, {args.threads} thread(s)"
    )

    # negatives: incorrect T=1 samples on training prompts (fall back to more prompts until enough)
    negatives: list[tuple[int, str]] = []
    start = 0
    while len(negatives) < args.negatives and start < len(train):
        chunk = train[start : start + 500]
        outs = generate(
            model,
            tok,
            [e.prompt for e in chunk],
            args.max_new_tokens,
            do_sample=True,
            num_samples=4,
            seed=start,
        )
        for i, cs in enumerate(outs):
            negatives += [
                (start + i, c)
                for c in cs
                if not is_correct(c, chunk[i].answer, "procedural") and split_steps(c)
            ]
        start += 500
    negatives = negatives[: args.negatives]
    prompts, answers = [e.prompt for e in train], [e.answer for e in train]
    prefixes = [
        (p, prefix_text(split_steps(t), i))
        for p, t in negatives
        for i in range(len(split_steps(t)))
    ]
    ids = [
        encode_prompt(tok, prompts[p]) + tok(text, add_special_tokens=False)["input_ids"]
        for p, text in prefixes
    ]
    m = args.rollouts
    n_rollouts = len(ids) * m
    print(
        f"{len(negatives)} negatives, {len(ids)} prefixes (mean {sum(map(len, ids)) / len(ids):.0f} tokens), "
        f"M={m}: {n_rollouts} rollouts per row"
    )

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    rows = []
    texts = [prompts[p] + text for p, text in prefixes]
    dt, gen_out = timed(
        lambda: generate(
            model,
            tok,
            texts,
            args.max_new_tokens,
            do_sample=True,
            num_samples=m,
            batch_size=args.batch_size,
            seed=0,
        )
    )
    rows.append(
        (
            "naive-generate (HF, prefix copied M times)",
            n_rollouts,
            dt,
            sum(len(c) for cs in gen_out for c in cs),
        )
    )
    kw = dict(
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        seeds=list(range(len(ids))),
        batch_size=args.batch_size,
    )
    dt, naive = timed(
        lambda: sample_continuations(model, ids, m, args.max_new_tokens, share_prefix=False, **kw)
    )
    rows.append(
        (
            "naive-loop (engine, share_prefix=False)",
            n_rollouts,
            dt,
            sum(len(c) for cs in naive for c in cs),
        )
    )
    dt, shared = timed(
        lambda: sample_continuations(model, ids, m, args.max_new_tokens, share_prefix=True, **kw)
    )
    rows.append(
        (
            "prefix-reuse (engine, share_prefix=True)",
            n_rollouts,
            dt,
            sum(len(c) for cs in shared for c in cs),
        )
    )
    same = shared == naive
    dt, (items, stats) = timed(
        lambda: rollout_negatives(
            model,
            tok,
            negatives,
            prompts,
            answers,
            "procedural",
            rollouts=m,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
    )
    rows.append(("prefix-reuse + dedup + early stop (step_dpo)", stats.rollouts, dt, stats.tokens))

    print(f"\n{'row':48s} {'rollouts':>9s} {'time s':>8s} {'rollouts/s':>11s} {'tokens/s':>10s}")
    for name, n, dt, tokens in rows:
        print(f"{name:48s} {n:9d} {dt:8.2f} {n / dt:11.1f} {tokens / dt:10.0f}")
    base_gen, base_loop, fast, full = (r[1] / r[2] for r in rows)
    print(f"\nprefix reuse vs naive generate : {fast / base_gen:.2f}x rollouts/s")
    print(
        f"prefix reuse vs naive loop     : {fast / base_loop:.2f}x rollouts/s (identical tokens: {same})"
    )
    print(
        f"step values of all {len(negatives)} negatives: naive generate {rows[0][2]:.1f} s -> "
        f"step_dpo engine {rows[3][2]:.1f} s ({rows[0][2] / rows[3][2]:.1f}x less time, "
        f"{stats.rollouts} instead of {n_rollouts} rollouts)"
    )


if __name__ == "__main__":
    main()
