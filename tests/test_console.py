"""What `eightfold-train` prints: one line per stage saying where its output went, progress bars
only on a terminal, none of the third-party lines a user cannot act on, and the docs showing it
as it is."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import warnings
from pathlib import Path

from eightfold.checkpointing import progress_wanted, quiet_console
from tests.helpers import REPO, run_cli

STAGES = ("run", "data", "train", "model", "eval", "result")
NOISE = (
    "srun",  # Lightning's multi-node hint (a machine with SLURM installed)
    "litlogger",  # Lightning's advert
    "LeafSpec",  # a torch deprecation raised inside Lightning
    "smaller than the logging interval",
    "GPU available",
    "Trainer.fit` stopped",
    "Writing model shards",
    "Warning",
)


def _smoke(root: Path, extra_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{extra_path}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return run_cli(["eightfold.train", "experiment=smoke", f"paths.root={root}"], REPO, env=env)


def _fake_srun(tmp_path: Path) -> Path:
    """An executable named srun on PATH: what a machine with SLURM installed has, for Lightning's
    check (it only looks the name up; nothing runs it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    return bin_dir


def _shape(line: str) -> str:
    """A console line without what changes from run to run: time stamps, durations, paths."""
    line = re.sub(r"^\[[\d\- :,]+\]", "[TIME]", line)
    line = re.sub(r"\d+\.\d+ s\b", "T s", line)
    return re.sub(r"/\S*/runs/", "ROOT/runs/", line)


def test_smoke_prints_one_line_per_stage_and_no_noise(tmp_path):
    proc = _smoke(tmp_path / "out", _fake_srun(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    stages = [re.match(r"\[[^]]+\]\[eightfold\]\[INFO\] - (\w+): ", x) for x in lines]
    assert [m.group(1) for m in stages if m] == list(STAGES), lines
    assert len(lines) == len(STAGES)  # nothing else: no bar (not a terminal), no third-party line
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert lines[0].endswith(f"run: {run_dir}")
    assert "-> checkpoints/last.ckpt, logs/metrics.csv" in lines[2]
    assert lines[-1].endswith(f"-> {run_dir / 'result.json'}")

    # docs/logging.md shows this output as it is (up to times, durations and the root)
    doc = (REPO / "docs" / "logging.md").read_text()
    block = doc.split("$ eightfold-train experiment=smoke\n", 1)[1].split("```", 1)[0]
    assert [_shape(x) for x in block.strip().splitlines()] == [_shape(x) for x in lines]


def test_progress_bars_on_a_terminal_only(tmp_path):
    """The same run on a pseudo-terminal (100 columns): the train and eval bars are drawn, then
    cleared; the stage lines are the same."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eightfold.train", "experiment=smoke", f"paths.root={tmp_path}"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0
    os.close(master)
    text = out.decode(errors="replace")
    assert re.search(r"train: +\d+%\|.*\| \d+/30 \[", text)  # the step bar, with its total
    assert re.search(r"eval: +\d+%\|", text)
    assert "Writing model shards" not in text
    assert [s for s in STAGES if f"[eightfold][INFO] - {s}: " in text] == list(STAGES)
    assert progress_wanted(False) is False  # trainer.enable_progress_bar=false: never


def test_quiet_console_drops_exactly_the_listed_warnings():
    quiet_console()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...",
            FutureWarning,
            "_pytree.py",
            21,
            module="lightning.pytorch.utilities._pytree",
        )
        warnings.warn_explicit(
            "The number of training batches (2) is smaller than the logging interval"
            " Trainer(log_every_n_steps=5).",
            UserWarning,
            "fit_loop.py",
            321,
            module="lightning.pytorch.loops.fit_loop",
        )
        # the same deprecation raised by user code, and any other warning, still show
        warnings.warn_explicit(
            "`isinstance(treespec, LeafSpec)` is deprecated",
            FutureWarning,
            "mine.py",
            1,
            module="mine",
        )
        warnings.warn_explicit("something else", UserWarning, "fit_loop.py", 3, module="lightning")
    assert [str(w.message) for w in caught] == [
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "something else",
    ]
