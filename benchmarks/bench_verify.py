"""Verifier throughput: calls per second for each kind and path of eightfold.verify.

    python benchmarks/bench_verify.py [--scale 1.0]

Rows: procedural hot path, gsm8k, math fast path (plain numbers/fractions, no process),
math through the math-verify worker (every call a memo miss), the same calls again (memo
hits), and memo misses from several threads (one worker process per thread, up to
verify.MAX_WORKERS).
"""

import argparse
import os
import random
import threading
import time

import eightfold.verify as v


def timed(fn, calls):
    t0 = time.perf_counter()
    n_true = fn()
    dt = time.perf_counter() - t0
    return calls, dt, n_true


def run_serial(items, kind):
    def fn():
        return sum(v.is_correct(c, r, kind) for c, r in items)

    return timed(fn, len(items))


def run_threads(items, kind, n_threads):
    chunks = [items[i::n_threads] for i in range(n_threads)]
    counts = [0] * n_threads

    def work(i):
        counts[i] = sum(v.is_correct(c, r, kind) for c, r in chunks[i])

    def fn():
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts)

    return timed(fn, len(items))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the call counts")
    args = parser.parse_args()
    rng = random.Random(0)
    n = lambda k: max(1, int(k * args.scale))  # noqa: E731

    # procedural: 5-step solutions like the testbed's, half of them with a wrong answer
    procedural = []
    for _ in range(n(200_000)):
        ans = rng.randrange(7)
        steps = [f"{c}={rng.randrange(7)}+{rng.randrange(7)}={rng.randrange(7)}" for c in "cdefg"]
        procedural.append(("\n".join([*steps, f"#{ans}"]), str(rng.choice([ans, ans + 1]))))

    # gsm8k: a few lines of reasoning, then #### with thousands commas
    gsm8k = []
    for _ in range(n(100_000)):
        ans = rng.randrange(100_000)
        text = f"She buys {ans // 3} apples.\nThen {ans % 3} more.\n#### {ans:,}"
        gsm8k.append((text, str(rng.choice([ans, ans + 1]))))

    # math, fast path: plain numbers and numeric fractions on both sides (the truncated
    # decimals make about a third of them exact matches)
    fast = []
    for _ in range(n(100_000)):
        a, b = rng.randrange(1, 50), rng.randrange(1, 50)
        fast.append((rf"so the answer is $\boxed{{\frac{{{a}}}{{{b}}}}}$.", str(a / b)[:8]))

    # math, real LaTeX (needs sympy): each pair distinct, so each is a memo miss
    latex = []
    for i in range(n(400)):
        k = i + 2
        latex.append((rf"\boxed{{\sqrt{{{4 * k}}}}}", rf"2\sqrt{{{k}}}"))
    # same shape, other numbers: still memo misses when run from several threads
    threaded = [
        (rf"\boxed{{\sqrt{{{4 * k}}}}}", rf"2\sqrt{{{k}}}") for k in range(1000, 1000 + n(400))
    ]

    v.shutdown_workers()
    v.reset_stats()
    v.is_correct(r"\boxed{\sqrt{2}}", r"\sqrt{2}", "math")  # start one worker (~0.4 s)

    rows = [
        ("procedural", "hot path (str + regex)", *run_serial(procedural, "procedural")),
        ("gsm8k", "#### + Fraction", *run_serial(gsm8k, "gsm8k")),
        ("math", "fast path (Fraction)", *run_serial(fast, "math")),
        ("math", "math-verify worker, memo miss", *run_serial(latex, "math")),
        ("math", "math-verify, memo hit", *run_serial(latex * 50, "math")),
    ]
    n_threads = v.MAX_WORKERS
    warm = [(rf"\boxed{{\sqrt{{{k}}}}}", "1") for k in range(5, 5 + 2 * n_threads)]
    run_threads(warm, "math", n_threads)  # start one worker per thread before timing
    rows.append(
        (
            "math",
            f"math-verify worker, miss, {n_threads} threads",
            *run_threads(threaded, "math", n_threads),
        )
    )

    print(f"eightfold.verify throughput ({os.cpu_count()} CPUs, MAX_WORKERS={v.MAX_WORKERS})")
    print(f"{'kind':<11} {'path':<40} {'calls':>8} {'calls/s':>11} {'us/call':>9} {'true':>6}")
    for kind, path, calls, dt, n_true in rows:
        print(
            f"{kind:<11} {path:<40} {calls:>8} {calls / dt:>11,.0f} {1e6 * dt / calls:>9.1f} "
            f"{n_true / calls:>6.2f}"
        )
    print("stats:", v.stats())


if __name__ == "__main__":
    main()
