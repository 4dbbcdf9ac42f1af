"""End-to-end wall time of a study (default: the cpu_default study, 25 runs), broken down by stage.

    python benchmarks/bench_study.py                      # run it into a fresh folder, --jobs 2
    python benchmarks/bench_study.py --jobs 1             # one run at a time (torch's own threads)
    python benchmarks/bench_study.py --root results/cpu_default --no-run   # break down finished runs

Stages come from each run's result.json (seconds inside the run):

  data + model     building the data split, the tokenizer and the model (data_time_s)
  generation       sampling pi_sft's solutions for rft / dpo / step_dpo / awr (once per size: cached)
  rollouts         Monte Carlo rollouts of the step values (once per size: cached, shared with awr)
  reference        reference log-probs of the DPO pairs (once per pair set: cached)
  training         Trainer.fit (train_time_s)
  evaluation       greedy decoding of the test set (eval_time_s)
  other in-run     loading pi_sft, building pairs, saving the model, writing files

"outside runs" is what the sweep's elapsed time x --jobs leaves over: process start, imports,
Hydra composition, idle slots at the end of the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_seconds(result: dict) -> dict[str, float]:
    def get(key: str) -> float:
        value = result.get(key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    sampling, rollouts, reference = (
        get("sampling_time_s"),
        get("rollout_time_s"),
        get("ref_logps_time_s"),
    )
    prepare = get("prepare_time_s")
    train, evaluation, data, wall = (
        get("train_time_s"),
        get("eval_time_s"),
        get("data_time_s"),
        get("wall_time_s"),
    )
    other = max(0.0, wall - train - evaluation - data - prepare) + max(
        0.0, prepare - sampling - rollouts - reference
    )
    return {
        "data + model": data,
        "generation": sampling,
        "rollouts": rollouts,
        "reference": reference,
        "training": train,
        "evaluation": evaluation,
        "other in-run": other,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sweep", default=str(REPO / "sweeps" / "cpu_default.yaml"))
    ap.add_argument(
        "--root", default=None, help="where runs go (default: a fresh temporary folder)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="eightfold-sweep --jobs")
    ap.add_argument(
        "--no-run", action="store_true", help="only break down the finished runs under --root"
    )
    ap.add_argument("--json", default=None, help="also write the breakdown here")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="eightfold-study-")).resolve()

    elapsed = None
    if not args.no_run:
        cmd = [
            sys.executable,
            "-m",
            "eightfold.sweep",
            args.sweep,
            "--root",
            str(root),
            "--jobs",
            str(args.jobs),
        ]
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, env={**os.environ, "HYDRA_FULL_ERROR": "1"}
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"the sweep failed (exit {proc.returncode}); see {root}/multirun")

    results = [json.loads(p.read_text()) for p in sorted((root / "runs").glob("*/result.json"))]
    if not results:
        sys.exit(f"no finished runs under {root}/runs")
    totals: dict[str, float] = {}
    by_objective: dict[str, float] = {}
    for r in results:
        for stage, s in stage_seconds(r).items():
            totals[stage] = totals.get(stage, 0.0) + s
        by_objective[r["objective"]] = by_objective.get(r["objective"], 0.0) + float(
            r.get("wall_time_s") or 0
        )
    in_runs = sum(float(r.get("wall_time_s") or 0) for r in results)
    if elapsed is not None:
        totals["outside runs"] = max(0.0, elapsed * args.jobs - in_runs)
    slot_total = sum(totals.values())

    print(
        f"\n{len(results)} runs under {root}  (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"--jobs {args.jobs}, {os.cpu_count()} CPUs)"
    )
    if elapsed is not None:
        print(
            f"elapsed: {elapsed:.1f} s ({elapsed / 60:.2f} min); inside runs: {in_runs:.1f} run-seconds"
        )
    print(f"\n{'stage':16s} {'seconds':>9s} {'share':>7s}")
    for stage, s in totals.items():
        print(f"{stage:16s} {s:9.1f} {100 * s / slot_total:6.1f}%")
    print(f"\n{'objective':16s} {'run-seconds':>11s} {'runs':>5s}")
    for obj, s in by_objective.items():
        print(f"{obj:16s} {s:11.1f} {sum(r['objective'] == obj for r in results):5d}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "root": str(root),
                    "elapsed_s": elapsed,
                    "jobs": args.jobs,
                    "stages_s": totals,
                    "objectives_s": by_objective,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
