"""The logger/ group with the real trackers and no network: TensorBoard event files read back with
tensorboard's own reader, MLflow in a local file store, wandb in offline mode. One run is killed
mid-training and resumed; every tracker must show ONE run (same id) whose steps continue."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

from eightfold.checkpointing import wandb_id
from eightfold.config import ConfigError
from eightfold.objectives.sft import SFTModule
from eightfold.rundir import config_hash, run_dir
from eightfold.train import run
from eightfold.validate import check_loggers, validate_config
from tests.helpers import compose_cfg

SWEEP = "loggers-test"
CRASH_AT, CKPT = 25, 10  # killed at step 25, resumed from the checkpoint of step 20


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """One smoke run with csv + tensorboard + mlflow + wandb, killed at step 25, then resumed."""
    root = tmp_path_factory.mktemp("loggers")
    cfg = compose_cfg(
        [
            "experiment=smoke",
            f"paths.root={root}",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=40",
            f"checkpoint_every_n_steps={CKPT}",
            "logger=[csv,tensorboard,mlflow,wandb]",
            "logger.wandb.offline=true",
        ]
    )
    original = SFTModule.training_step

    def killed(self, batch, batch_idx):
        if self.global_step == CRASH_AT:
            raise RuntimeError("simulated preemption")
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EIGHTFOLD_SWEEP", SWEEP)
        mp.setattr(SFTModule, "training_step", killed)
        with pytest.raises(RuntimeError, match="simulated preemption"):
            run(cfg)
        mp.setattr(SFTModule, "training_step", original)
        result = run(cfg)
    assert result["resumed_from_step"] == 2 * CKPT and result["train_steps"] == 40
    return {"root": root, "cfg": cfg, "dir": run_dir(cfg), "result": result}


def _csv_loss(directory: Path) -> dict[int, float]:
    """train/loss per step from metrics.csv; after a resume the later row of a step wins."""
    with open(directory / "logs" / "metrics.csv") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]
        }


def test_tensorboard_events_read_back_and_continue_after_resume(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(resumed["dir"] / "logs" / "tensorboard"), size_guidance={"scalars": 0}
    )
    acc.Reload()
    events = acc.Scalars("train/loss")
    steps = [e.step for e in events]
    assert steps == sorted(set(steps))  # what the killed attempt logged past step 20 is purged
    assert min(steps) < 2 * CKPT and max(steps) >= 35  # both attempts, one curve
    expected = _csv_loss(resumed["dir"])
    assert steps == sorted(expected)
    assert [e.value for e in events] == pytest.approx([expected[s] for s in steps], rel=1e-6)
    (accuracy,) = acc.Scalars("test/accuracy")
    assert accuracy.value == pytest.approx(resumed["result"]["test_accuracy"])
    hparams = (resumed["dir"] / "logs" / "tensorboard" / "hparams.yaml").read_text()
    assert resumed["result"]["config_hash"] in hparams and SWEEP in hparams


def test_mlflow_local_store_has_one_run_that_continues(resumed):
    from mlflow.tracking import MlflowClient

    directory, result = resumed["dir"], resumed["result"]
    stored = json.loads((directory / "logs" / "mlflow.json").read_text())
    client = MlflowClient(stored["tracking_uri"])
    assert stored["tracking_uri"] == f"file:{resumed['root']}/mlruns"
    experiment = client.get_experiment_by_name("eightfold")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [stored["run_id"]]  # the resume made no second run
    tracked = runs[0]
    assert tracked.info.run_name == directory.name and tracked.info.status == "FINISHED"
    assert tracked.data.tags["config_hash"] == result["config_hash"] == config_hash(resumed["cfg"])
    assert tracked.data.tags["sweep"] == SWEEP
    assert tracked.data.params["data/size"] == "64"
    history = client.get_metric_history(stored["run_id"], "train/loss")
    last = {}
    for m in sorted(history, key=lambda m: (m.timestamp, m.step)):
        last[m.step] = m.value
    expected = _csv_loss(directory)
    assert sorted(last) == sorted(expected) and min(last) < 2 * CKPT and max(last) >= 35
    assert [last[s] for s in sorted(last)] == pytest.approx([expected[s] for s in sorted(last)])
    assert tracked.data.metrics["test/accuracy"] == pytest.approx(result["test_accuracy"])


def _wandb_records(path: Path):
    """The records of a .wandb file (LevelDB log framing, wandb's protobuf Record in each)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""  # 7 bytes: ':W&B' + version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        chunks = chunk if kind in (1, 2) else chunks + chunk
        if kind in (1, 4):  # full, or last piece of a record
            record = pb.Record()
            record.ParseFromString(chunks)
            yield record


def test_wandb_offline_run_resumes_the_same_id(resumed):
    directory, result = resumed["dir"], resumed["result"]
    segments = sorted((resumed["root"] / "wandb").glob("offline-run-*"))
    assert len(segments) == 2  # the killed attempt and the resumed one
    expected = _csv_loss(directory)
    seen = []
    for segment in segments:
        (path,) = segment.glob("run-*.wandb")
        runs, history = [], []
        for r in _wandb_records(path):
            if r.WhichOneof("record_type") == "run":
                runs.append(r.run)
            elif r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
                history.append(items)
        info = runs[0]
        assert info.run_id == wandb_id(directory) and info.display_name == directory.name
        assert set(info.tags) == {result["config_hash"], SWEEP} and info.run_group == SWEEP
        rows = [
            (int(h["trainer/global_step"]), float(h["train/loss"]))
            for h in history
            if "train/loss" in h
        ]
        steps = [s for s, _ in rows]
        for step, loss in rows:
            if (
                segment == segments[-1] or step < 2 * CKPT
            ):  # the killed attempt's rows past 20 were redone
                assert loss == pytest.approx(expected[step])
        seen.append((steps, history))
    (first, _), (second, history) = seen
    assert first and max(first) < CRASH_AT
    assert min(second) >= 2 * CKPT and max(second) >= 35  # continues from the checkpoint, not 0
    finals = [h for h in history if "test/accuracy" in h]
    assert float(finals[0]["test/accuracy"]) == pytest.approx(result["test_accuracy"])


def test_many_and_lists_compose_several_loggers(tmp_path):
    assert list(compose_cfg([f"paths.root={tmp_path}"]).logger) == ["csv"]
    assert list(compose_cfg(["logger=many", f"paths.root={tmp_path}"]).logger) == [
        "csv",
        "tensorboard",
    ]
    cfg = compose_cfg(["logger=[csv,mlflow,wandb]", f"paths.root={tmp_path}"])
    assert check_loggers(cfg.logger) == ["csv", "mlflow", "wandb"]


def test_a_missing_tracker_names_the_extra(tmp_path, monkeypatch):
    cfg = compose_cfg(["experiment=smoke", "logger=wandb", f"paths.root={tmp_path}"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb has
    with pytest.raises(ConfigError, match=r"pip install 'eightfold\[wandb\]'$"):
        validate_config(cfg)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"logger\.mlflow needs the mlflow package"):
        check_loggers(compose_cfg(["logger=mlflow", f"paths.root={tmp_path}"]).logger)
    assert not (tmp_path / "runs").exists()
