"""A preempted run equals the uninterrupted one (issue 17): a real ``eightfold-train`` process is
killed with SIGKILL at a checkpoint or between two, run again, and compared with a twin that was
never interrupted (another root): the same result.json numbers and the same metrics.csv, bytes
and all, each step once.

The configs make every part of the resume matter: 100 problems in batches of 32 (3 batches an
epoch, so checkpoints fall mid-epoch and the data order must continue there), dropout 0.1 (the
torch RNG must be restored), a warm-up + cosine schedule, and metrics flushed every step (rows
logged after the last checkpoint reach the disk and must be dropped on resume).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO

QUIET = "trainer.enable_progress_bar=false"
SFT = [
    "data.size=100",
    "model.dropout=0.1",
    "trainer.max_steps=40",
    "checkpoint_every_n_steps=10",
    "trainer.log_every_n_steps=1",
    "logger.csv.flush_logs_every_n_steps=1",
]
# fields that say where, when and how fast a run ran, and which attempt built a cache (the
# killed one did), not what it computed; every other field must be equal
VOLATILE = {"run_dir", "config_path", "job_id", "job_log", "resumed_from_step"}
VOLATILE_SUFFIXES = ("_time_s", "_cached")


def train(root: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(root, *overrides),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _command(root: Path, *overrides: str) -> list[str]:
    args = ["experiment=smoke", f"paths.root={root}", QUIET, *overrides]
    return [sys.executable, "-m", "eightfold.train", *args]


def _env() -> dict:
    return {**os.environ, "HYDRA_FULL_ERROR": "0"}


def kill_when(root: Path, overrides: list[str], ready: Callable[[], bool], log: Path) -> int:
    """Start the run, SIGKILL it as soon as ``ready()`` holds; returns its exit status."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _command(root, *overrides), cwd=REPO, env=_env(), stdout=err, stderr=err
        )
        deadline = time.monotonic() + 600
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if ready():
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()
            proc.wait()
    return proc.returncode


def checkpoint_step(pattern: str) -> int | None:
    paths = glob.glob(pattern)
    if not paths:
        return None
    try:
        return int(torch.load(paths[0], map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - replaced under us: read it next time
        return None


def logged_steps(pattern: str) -> list[int]:
    paths = glob.glob(pattern)
    if not paths:
        return []
    with open(paths[0], newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]


def one(root: Path, pattern: str) -> Path:
    (path,) = root.glob(pattern)
    return path


def numbers(result: dict) -> dict:
    return {
        k: v for k, v in result.items() if k not in VOLATILE and not k.endswith(VOLATILE_SUFFIXES)
    }


@pytest.fixture(scope="module")
def sft_twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twin")
    proc = train(root, *SFT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return one(root, "runs/sft-*")


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment", ["at_a_checkpoint", "between_checkpoints", "after_the_last_step"]
)
def test_a_killed_run_resumes_to_the_numbers_of_the_uninterrupted_run(moment, sft_twin, tmp_path):
    root = tmp_path / "root"
    ckpt, metrics = (
        f"{root}/runs/sft-*/checkpoints/last.ckpt",
        f"{root}/runs/sft-*/logs/metrics.csv",
    )
    if moment == "at_a_checkpoint":  # the first checkpoint (step 10) is on disk

        def ready() -> bool:
            return checkpoint_step(ckpt) is not None

    elif moment == "between_checkpoints":  # steps 10..13 logged after it: between 10 and 20

        def ready() -> bool:
            return max(logged_steps(metrics), default=-1) >= 13

    else:  # the final checkpoint is written, the run evaluates: it resumes to train no step

        def ready() -> bool:
            return checkpoint_step(ckpt) == 40

    rc = kill_when(root, SFT, ready, tmp_path / "killed.log")
    assert rc == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    run = one(root, "runs/sft-*")
    assert not (run / "result.json").exists(), "the run finished before it could be killed"
    step = 40 if moment == "after_the_last_step" else 10
    assert checkpoint_step(ckpt) == step
    if moment == "between_checkpoints":
        assert max(logged_steps(metrics)) >= 13  # rows after the checkpoint are on disk

    again = train(root, *SFT)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((run / "result.json").read_text())
    twin = json.loads((sft_twin / "result.json").read_text())
    assert resumed["resumed_from_step"] == step and twin["resumed_from_step"] is None
    assert numbers(resumed) == numbers(twin)  # bit for bit: floats compared exactly
    steps = logged_steps(metrics)
    assert steps == sorted(set(steps)) and steps[-1] == 39  # each step once, in order
    assert (run / "logs/metrics.csv").read_bytes() == (sft_twin / "logs/metrics.csv").read_bytes()
    assert not [p for p in run.rglob("*.tmp")]


@pytest.mark.slow
def test_a_killed_dpo_run_reports_the_statistics_of_the_uninterrupted_run(tmp_path):
    """DPO keeps per-step statistics in memory (the last epoch's mean gap and reward accuracy,
    the first chosen log-ratio); they travel in the checkpoint."""
    dpo = [
        "objective=dpo",
        "objective.steps=12",
        "objective.module.batch_size=4",
        "checkpoint_every_n_steps=5",
        "trainer.log_every_n_steps=1",
        "logger.csv.flush_logs_every_n_steps=1",
    ]
    twin_root, root = tmp_path / "twin", tmp_path / "root"
    proc = train(twin_root, *dpo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    twin = one(twin_root, "runs/dpo-*")
    # the same finished SFT run in the second root (it is not what this test kills)
    sft = one(twin_root, "runs/sft-*")
    shutil.copytree(sft, root / "runs" / sft.name)

    ckpt = f"{root}/runs/dpo-*/checkpoints/last.ckpt"
    rc = kill_when(root, dpo, lambda: checkpoint_step(ckpt) is not None, tmp_path / "killed.log")
    assert rc == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    run = one(root, "runs/dpo-*")
    assert not (run / "result.json").exists(), "the run finished before it could be killed"

    again = train(root, *dpo)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((run / "result.json").read_text())
    expected = json.loads((twin / "result.json").read_text())
    assert resumed["resumed_from_step"] in (5, 10)
    assert resumed["chosen_logratio_first"] == expected["chosen_logratio_first"]
    assert resumed["logratio_gap_last_epoch"] == expected["logratio_gap_last_epoch"]
    assert numbers(resumed) == numbers(expected)
    assert (run / "logs/metrics.csv").read_bytes() == (twin / "logs/metrics.csv").read_bytes()
