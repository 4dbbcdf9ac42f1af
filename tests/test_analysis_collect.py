"""collect: fake sweep dirs in the training code's format -> results.csv + problems sidecar."""

import csv
import json

import pytest

from eightfold_analysis import collect as C
from eightfold_analysis.cli import main
from eightfold_analysis.common import AnalysisError


def make_run(root, name, result=None, failed=None, sub="runs"):
    d = root / sub / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("objective: x\n")
    if result is not None:
        (d / "result.json").write_text(json.dumps(result))
    if failed is not None:
        (d / "failed.json").write_text(json.dumps(failed))
    return d


def result(obj, n, seed, err, **extra):
    return {
        "objective": obj,
        "source": "procedural",
        "n": n,
        "seed": seed,
        "test_error": err,
        "test_accuracy": 1 - err,
        "config_hash": f"{obj}{n}{seed}",
        "config_path": "c.yaml",
        "run_dir": f"/x/{obj}-{n}-{seed}",
        "wall_time_s": 3.5,
        **extra,
    }


@pytest.fixture
def sweep(tmp_path):
    make_run(tmp_path, "sft-100-0", result("sft", 100, 0, 0.5, lr=1e-5, tags=["a"]))
    make_run(tmp_path, "sft-100-1", result("sft", 100, 1, 0.4))
    make_run(tmp_path, "rft-100-0", result("rft", 100, 0, 0.3))
    make_run(
        tmp_path,
        "rft-100-1",
        failed={
            "error": "CUDA out of memory",
            "objective": "rft",
            "source": "procedural",
            "n": 100,
            "seed": 1,
            "config_hash": "h",
        },
    )
    make_run(tmp_path, "dpo-100-0")  # still running / killed
    make_run(tmp_path, "dpo-100-1", result("dpo", 100, 1, float("nan")))  # a broken result
    (tmp_path / "runs" / "sft-100-0" / ".hydra").mkdir()
    (tmp_path / "runs" / "sft-100-0" / ".hydra" / "config.yaml").write_text("x: 1\n")  # not a run
    (tmp_path / "config.yaml").write_text("sweep: 1\n")  # sweep-level config, not a run
    make_run(tmp_path, "deep/er/sft-200-0", result("sft", 200, 0, 0.35))  # any depth
    return tmp_path


def test_collect_rows_and_problems(sweep):
    rows, problems = C.collect(sweep)
    assert [(r["objective"], r["n"], r["seed"]) for r in rows] == [
        ("rft", 100, 0),
        ("sft", 100, 0),
        ("sft", 100, 1),
        ("sft", 200, 0),
    ]
    assert rows[1]["lr"] == 1e-5 and "tags" not in rows[1]  # scalar extras only
    status = {p["run_dir"]: p["status"] for p in problems}
    assert status == {
        "runs/rft-100-1": "failed",
        "runs/dpo-100-0": "incomplete",
        "runs/dpo-100-1": "invalid",
    }
    failed = next(p for p in problems if p["status"] == "failed")
    assert (
        failed["error"] == "CUDA out of memory"
        and failed["objective"] == "rft"
        and failed["n"] == 100
    )


def test_collect_cli_writes_csv_sidecar_and_lists_problems(sweep, tmp_path, capsys):
    out = tmp_path / "out" / "results.csv"
    assert main(["collect", str(sweep), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "failed: runs/rft-100-1" in err and "CUDA out of memory" in err
    assert "incomplete: runs/dpo-100-0" in err and "invalid: runs/dpo-100-1" in err
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames[:7] == [
        "objective",
        "source",
        "n",
        "seed",
        "test_error",
        "test_accuracy",
        "config_hash",
    ]
    assert {"run_dir", "wall_time_s", "lr"} <= set(reader.fieldnames)
    assert len(got) == 4 and float(got[0]["test_error"]) == 0.3
    side = json.loads(C.problems_path(out).read_text())
    assert (side["n_finished"], side["n_failed"], side["n_incomplete"], side["n_invalid"]) == (
        4,
        1,
        1,
        1,
    )
    assert not [
        p for p in out.parent.iterdir() if p.name.endswith(".tmp")
    ]  # atomic writes cleaned up
    rows = C.read_results(out)  # round trip into typed rows (+ run_dir, the outcomes' key)
    assert rows[0] == {
        "objective": "rft",
        "source": "procedural",
        "n": 100,
        "seed": 0,
        "test_error": 0.3,
        "run_dir": "/x/rft-100-0",
    }


def test_accuracy_only_result_is_accepted(tmp_path):
    r = result("sft", 100, 0, 0.25)
    del r["test_error"]
    make_run(tmp_path, "a", r)
    rows, problems = C.collect(tmp_path)
    assert rows[0]["test_error"] == pytest.approx(0.25) and not problems


def test_only_unfinished_runs_is_an_error_but_still_writes_problems(tmp_path, capsys):
    make_run(tmp_path, "a", failed={"error": "boom"})
    make_run(tmp_path, "b")
    out = tmp_path / "r.csv"
    assert main(["collect", str(tmp_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no finished runs" in err and "boom" in err
    assert json.loads(C.problems_path(out).read_text())["n_failed"] == 1


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(AnalysisError, match="no runs under"):
        C.collect(tmp_path)
    with pytest.raises(AnalysisError, match="does not exist"):
        C.collect(tmp_path / "nope")
