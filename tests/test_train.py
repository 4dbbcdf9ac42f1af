"""End to end through the real config: a tiny model trains, writes result.json, skips, resumes."""

from __future__ import annotations

import csv
import json

import pytest

from eightfold.objectives.sft import SFTModule
from eightfold.rundir import run_dir
from eightfold.runfiles import FAILED, RESULT, last_checkpoint, read_result
from eightfold.train import run
from tests.helpers import REPO, run_cli

REQUIRED = {
    "objective",
    "source",
    "n",
    "seed",
    "test_accuracy",
    "test_error",
    "config_hash",
    "config_path",
}


def _losses(directory):
    with open(directory / "logs" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _logged_steps(directory):
    with open(directory / "logs" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_smoke_run_trains_writes_result_and_skips(smoke_cfg):
    cfg = smoke_cfg("trainer.max_steps=60", "trainer.log_every_n_steps=5")
    result = run(cfg)
    directory = run_dir(cfg)
    on_disk = json.loads((directory / RESULT).read_text())
    assert on_disk.keys() >= REQUIRED
    assert on_disk["test_error"] == 1 - on_disk["test_accuracy"]
    assert on_disk["n"] == cfg.data.size and on_disk["objective"] == "sft"
    assert (directory / "config.yaml").is_file() and on_disk["train_steps"] == 60
    losses = _losses(directory)
    assert losses[-1] < 0.7 * losses[0]  # it learns
    assert result["test_accuracy"] == on_disk["test_accuracy"]
    again = run(cfg)  # same config: skipped, nothing retrained
    assert again["skipped"] is True and again["config_hash"] == on_disk["config_hash"]


def test_same_config_same_numbers(smoke_cfg, tmp_path):
    a = run(smoke_cfg("trainer.max_steps=20"))
    b = run(smoke_cfg("trainer.max_steps=20", f"paths.root={tmp_path}/other"))
    assert (
        a["test_accuracy"] == b["test_accuracy"] and a["final_train_loss"] == b["final_train_loss"]
    )


def test_crashed_run_resumes_from_last_checkpoint(smoke_cfg, monkeypatch):
    cfg = smoke_cfg("trainer.max_steps=40", "checkpoint_every_n_steps=10")
    directory = run_dir(cfg)
    original = SFTModule.training_step

    def crash_at_step_25(self, batch, batch_idx):
        if self.global_step == 25:
            raise RuntimeError("simulated node failure")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SFTModule, "training_step", crash_at_step_25)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        run(cfg)
    assert read_result(directory) is None  # a crashed run is not finished ...
    assert "simulated node failure" in json.loads((directory / FAILED).read_text())["error"]
    assert last_checkpoint(directory) is not None  # ... but its checkpoint survived
    monkeypatch.setattr(SFTModule, "training_step", original)
    result = run(cfg)
    assert result["resumed_from_step"] == 20  # the last checkpoint before the crash, not step 0
    assert result["train_steps"] == 40
    steps = _logged_steps(directory)
    assert steps[0] < 20 and steps[-1] >= 35  # one metrics.csv across the crash and the resume
    assert not (directory / FAILED).exists()


def test_local_multirun_writes_one_result_per_size(tmp_path):
    proc = run_cli(
        [
            "eightfold.train",
            "-m",
            "experiment=smoke",
            "data.size=32,48,64",
            "trainer.max_steps=10",
            f"paths.root={tmp_path}",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted(tmp_path.glob("runs/*/result.json"))
    assert len(results) == 3
    assert sorted(json.loads(p.read_text())["n"] for p in results) == [32, 48, 64]
    again = run_cli(
        [
            "eightfold.train",
            "-m",
            "experiment=smoke",
            "data.size=32,48,64",
            "trainer.max_steps=10",
            f"paths.root={tmp_path}",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
    )
    assert again.returncode == 0
    # the sweeper (hydra/sweeper=eightfold) sees the three result.json files and launches none
    assert "3 finished; launching 0" in again.stdout + again.stderr
    assert sorted(tmp_path.glob("runs/*/result.json")) == results
