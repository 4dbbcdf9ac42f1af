"""Chaos test of preemption: a small sweep whose runs are SIGKILLed at random moments, N rounds.

    nice -n 19 python scripts/chaos.py                      # 2 rounds, a few minutes on 2 cores
    python scripts/chaos.py --rounds 5 --jobs 4 --seed 7    # longer, more at once

The sweep (smoke experiment, dropout on, checkpoints every 5 steps, mid-epoch): SFT at two data
sizes and DPO on the smaller one's SFT model (it trains that SFT run itself, or waits for the
process that does). Each run is its own ``eightfold-train`` process, as a SLURM job array runs
it; ``--jobs`` run at once. First every run is trained once, uninterrupted, in a twin root. Then
each round, in a fresh root: every launched process is killed with SIGKILL at a random moment
(uniform over its twin's duration, so in any stage: start-up, data, pi_sft, training, evaluation,
writing) and requeued, as a preempted job is, until each run has been killed ``--kills-per-run``
times; then it is left to finish. After the round:

* every run finished exactly once: one result.json, never rewritten once it appeared, no
  failed.json;
* each run equals its uninterrupted twin: result.json numbers (every field but where, when and
  how fast it ran, and which attempt filled a cache) and metrics.csv, bytes and all;
* no stray temporary files (``*.tmp``) anywhere under the root.

It ends with ``rounds R, kills K, runs N, mismatches M`` (N = runs checked over all rounds,
M = runs that differ from their twin or did not finish exactly once, plus temp files left) and
exits 1 if M > 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = [
    "experiment=smoke",
    "trainer.enable_progress_bar=false",
    "model.dropout=0.1",
    "trainer.max_steps=40",
    "checkpoint_every_n_steps=5",
    "trainer.log_every_n_steps=1",
    "logger.csv.flush_logs_every_n_steps=1",  # the script sees each step as it is logged
]
RUNS = {
    "sft-n64": ["data.size=64"],
    "sft-n100": ["data.size=100"],
    "dpo-n64": [
        "data.size=64",
        "objective=dpo",
        "objective.steps=12",
        "objective.module.batch_size=4",
    ],
}
STEPS = {"sft-n64": 40, "sft-n100": 40, "dpo-n64": 12}  # optimizer steps of each run
# where, when and how fast a run ran, and which attempt filled a cache: not what it computed
VOLATILE = {"run_dir", "config_path", "job_id", "job_log", "resumed_from_step"}
VOLATILE_SUFFIXES = ("_time_s", "_cached")


@dataclass
class Attempt:
    """One process of a run and when it is killed: ``("time", s)`` s seconds after its start
    (start-up, data, pi_sft), ``("step", k)`` once its metrics.csv has step k (training),
    ``("end", n)`` once its final checkpoint (step n) is on disk (evaluating, writing), or None
    (left to finish)."""

    run: str
    proc: subprocess.Popen
    started: float
    kill: tuple[str, float] | None


@dataclass
class Round:
    kills: int = 0
    killed_in: list[str] = field(default_factory=list)  # what the killed attempts had reached
    problems: list[str] = field(default_factory=list)


def command(root: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "eightfold.train", *COMMON, *RUNS[run], f"paths.root={root}"]


def env() -> dict:
    # the same torch threads in every process: the twins and the chaos runs compute alike
    return {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HYDRA_FULL_ERROR": "0",
    }


def run_dir_of(root: Path, run: str) -> Path | None:
    objective, size = run.split("-n")
    found = sorted((root / "runs").glob(f"{objective}-procedural-n{size}-s0-*"))
    return found[0] if found else None


def numbers(result: dict) -> dict:
    return {
        k: v for k, v in result.items() if k not in VOLATILE and not k.endswith(VOLATILE_SUFFIXES)
    }


def twins(root: Path) -> dict[str, float]:
    """Every run once, uninterrupted; returns how long each process took."""
    durations = {}
    for run in RUNS:
        t0 = time.monotonic()
        proc = subprocess.run(
            command(root, run), cwd=REPO, env=env(), capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"chaos: the uninterrupted twin {run} failed:\n{proc.stderr[-3000:]}")
        durations[run] = time.monotonic() - t0
    return durations


def kill_plan(run: str, duration: float, rng: random.Random) -> tuple[str, float]:
    """A random moment to kill an attempt of ``run``: any stage, training most often."""
    draw = rng.random()
    if draw < 0.25:
        return ("time", rng.uniform(0.1, 0.7) * duration)
    if draw < 0.85:
        return ("step", rng.randrange(STEPS[run]))
    return ("end", STEPS[run])


def due(root: Path, a: Attempt) -> bool:
    kind, value = a.kill
    if kind == "time":
        return time.monotonic() - a.started >= value
    d = run_dir_of(root, a.run)
    if d is None:
        return False
    if kind == "step":
        try:
            with open(d / "logs" / "metrics.csv", newline="") as f:
                return any(int(r["step"]) >= value for r in csv.DictReader(f) if r.get("step"))
        except (OSError, ValueError, KeyError):
            return False
    return checkpoint_step(d) == value


def checkpoint_step(d: Path) -> int | None:
    import torch

    try:
        ckpt = torch.load(
            d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False, mmap=True
        )
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - none yet, or replaced under us
        return None


def stage(root: Path, run: str) -> str:
    """How far a killed attempt had got, from its files (for the report)."""
    d = run_dir_of(root, run)
    if d is None:
        return "no run directory yet"
    if (d / "result.json").exists():
        return "finished"
    step = checkpoint_step(d)
    return "no checkpoint yet" if step is None else f"last checkpoint {step}"


def chaos_round(
    root: Path, durations: dict[str, float], jobs: int, kills_per_run: int, rng: random.Random
) -> Round:
    out = Round()
    queue = list(RUNS)
    rng.shuffle(queue)
    kills = dict.fromkeys(RUNS, 0)
    running: list[Attempt] = []
    first_seen: dict[str, tuple[int, int]] = {}  # result.json identity when it first appeared
    while queue or running:
        while queue and len(running) < jobs:
            run = queue.pop(0)
            kill = kill_plan(run, durations[run], rng) if kills[run] < kills_per_run else None
            proc = subprocess.Popen(
                command(root, run),
                cwd=REPO,
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            running.append(Attempt(run, proc, time.monotonic(), kill))
        time.sleep(0.02)
        for run in RUNS:
            d = run_dir_of(root, run)
            if run not in first_seen and d is not None and (d / "result.json").exists():
                st = (d / "result.json").stat()
                first_seen[run] = (st.st_ino, st.st_mtime_ns)
        for a in list(running):
            if a.proc.poll() is not None:
                running.remove(a)
                if a.proc.returncode != 0:
                    out.problems.append(f"{a.run}: an attempt exited with {a.proc.returncode}")
            elif a.kill is not None and due(root, a):
                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait()
                running.remove(a)
                kills[a.run] += 1
                out.kills += 1
                kind, value = a.kill
                out.killed_in.append(f"{a.run} at {kind} {value:.3g}: {stage(root, a.run)}")
                queue.append(a.run)  # requeued, as a preempted job is
    for run in RUNS:
        d = run_dir_of(root, run)
        result = d / "result.json" if d else None
        if result is None or not result.exists():
            out.problems.append(f"{run}: did not finish")
            continue
        st = result.stat()
        if first_seen.get(run) not in (None, (st.st_ino, st.st_mtime_ns)):
            out.problems.append(f"{run}: result.json was written more than once")
        if (d / "failed.json").exists():
            out.problems.append(f"{run}: failed.json left behind")
    return out


def compare(root: Path, twin_root: Path) -> list[str]:
    problems = []
    for run in RUNS:
        d, t = run_dir_of(root, run), run_dir_of(twin_root, run)
        if d is None or not (d / "result.json").exists():
            continue  # reported by the round
        if d.name != t.name:  # another config hash: conf/ or the code's defaults changed
            problems.append(f"{run}: ran as {d.name}, its twin as {t.name} (the config changed)")
            continue
        got = numbers(json.loads((d / "result.json").read_text()))
        want = numbers(json.loads((t / "result.json").read_text()))
        if got != want:
            diff = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
            problems.append(f"{run}: result.json differs from its twin in {diff}")
        if (d / "logs/metrics.csv").read_bytes() != (t / "logs/metrics.csv").read_bytes():
            problems.append(f"{run}: metrics.csv differs from its twin")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of chaos (default 2)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    p.add_argument(
        "--kills-per-run", type=int, default=1, help="kills of each run per round (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule (default 0)")
    p.add_argument(
        "--root", help="keep everything under this folder (default: a temp folder, removed)"
    )
    a = p.parse_args(argv)
    for name in ("rounds", "jobs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)} is not valid: expected >= 1")
    if a.kills_per_run < 0:
        p.error(f"--kills-per-run {a.kills_per_run} is not valid: expected >= 0")
    base = Path(a.root) if a.root else Path(tempfile.mkdtemp(prefix="eightfold-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        durations = twins(base / "twin")
        print("twins: " + ", ".join(f"{r} {s:.0f} s" for r, s in durations.items()), flush=True)
        total_kills = total_runs = mismatches = 0
        for r in range(1, a.rounds + 1):
            root = base / f"round{r}"
            result = chaos_round(
                root, durations, a.jobs, a.kills_per_run, random.Random(f"{a.seed}-{r}")
            )
            problems = result.problems + compare(root, base / "twin")
            temps = sorted(str(q.relative_to(root)) for q in root.rglob("*.tmp"))
            problems += [f"stray temp file {t}" for t in temps]
            total_kills += result.kills
            total_runs += len(RUNS)
            mismatches += len(problems)
            print(
                f"round {r}: kills {result.kills} ({', '.join(result.killed_in) or 'none'}),"
                f" runs {len(RUNS)}, mismatches {len(problems)}",
                flush=True,
            )
            for line in problems:
                print(f"  {line}", flush=True)
        print(
            f"rounds {a.rounds}, kills {total_kills}, runs {total_runs}, mismatches {mismatches}"
            f" ({time.monotonic() - t0:.0f} s)"
        )
        return 1 if mismatches else 0
    finally:
        if not a.root:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
