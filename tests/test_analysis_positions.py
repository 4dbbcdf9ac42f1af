"""The star graph's Clever-Hans diagnostic in the analysis: result.json's test_position_accuracy
(a list) -> one results.csv column per path node -> a per-run table in report.md. Real result
files in a sweep root, through the CLI."""

import csv
import json

from eightfold_analysis.cli import main

SIZES = [100, 300, 1000, 3000]


def write_run(root, objective, source, n, seed, err, **extra):
    d = root / "runs" / f"{source}-{objective}-{n}-{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"objective: {objective}\n")
    result = {
        "objective": objective,
        "source": source,
        "n": n,
        "seed": seed,
        "test_error": err,
        "test_accuracy": 1 - err,
        "config_hash": "h",
        "run_dir": str(d),
        **extra,
    }
    (d / "result.json").write_text(json.dumps(result))


def positions(objective, n, seed):
    """A run's accuracy per node: the first node after the source learned with n (a made-up
    curve, distinct per run so each row can be found)."""
    first = round(0.5 + n / 10_000 + seed / 100 + (0.1 if objective == "step_dpo" else 0), 4)
    return [1.0, first, 1.0, 0.99]


def section(report: str, title: str) -> str:
    start = report.index(title)
    end = report.find("\n## ", start + 1)
    return report[start : end if end != -1 else None]


def test_position_accuracy_is_a_per_run_table_in_the_report(tmp_path, capsys):
    root, out = tmp_path / "sweep", tmp_path / "out"
    for objective, k in (("sft", 1.0), ("step_dpo", 2.0)):
        for n in SIZES:
            for seed in (0, 1):
                err = 0.05 + 2.0 * (k * n) ** -0.4 + seed / 1000
                write_run(
                    root,
                    objective,
                    "star_graph",
                    n,
                    seed,
                    err,
                    test_position_accuracy=positions(objective, n, seed),
                )
    # a run of another task (no list), and a star-graph run whose list holds a bad value
    write_run(root, "sft", "procedural", 100, 0, 0.3, tags=["not", "a", "diagnostic"])
    write_run(root, "rft", "star_graph", 100, 0, 0.4, test_position_accuracy=[1.0, "x", 1.0, 1.0])
    assert main(["all", str(root), "--out", str(out), "--n-boot", "20"]) == 0
    capsys.readouterr()

    # 1. results.csv: one column per node, filled where the run has the list
    with open(out / "results.csv", newline="") as f:
        rows = {(r["source"], r["objective"], r["n"], r["seed"]): r for r in csv.DictReader(f)}
    cols = [f"test_position_accuracy@{i}" for i in range(4)]
    first = rows[("star_graph", "step_dpo", "300", "1")]
    assert [float(first[c]) for c in cols] == positions("step_dpo", 300, 1)
    assert all(rows[("procedural", "sft", "100", "0")][c] == "" for c in cols)
    assert [rows[("star_graph", "rft", "100", "0")][c] for c in cols] == ["1.0", "", "1.0", "1.0"]
    assert "tags" not in first  # other lists stay out of the table

    # 2. report.md: one row per star-graph run (objective, n, seed, each node), no other source
    report = (out / "report.md").read_text()
    table = section(report, "## Accuracy per path position")
    assert "| objective | n | seed | node 0 | node 1 | node 2 | node 3 |" in table
    assert "**source: star_graph**" in table and "procedural" not in table
    lines = [x for x in table.splitlines() if x.startswith("| ") and "objective" not in x]
    assert len(lines) == 2 * len(SIZES) * 2 + 1
    assert "| step_dpo | 300 | 1 | 1.000 | 0.640 | 1.000 | 0.990 |" in lines
    assert "| sft | 3000 | 0 | 1.000 | 0.800 | 1.000 | 0.990 |" in lines
    assert "| rft | 100 | 0 | 1.000 | — | 1.000 | 1.000 |" in lines  # the bad value, visible


def test_no_position_section_without_the_diagnostic(tmp_path, capsys):
    root, out = tmp_path / "sweep", tmp_path / "out"
    for objective, k in (("sft", 1.0), ("rft", 2.0)):
        for n in SIZES:
            for seed in (0, 1):  # noise-free single-seed errors trip plot.py's interval bars
                err = 0.05 + 2.0 * (k * n) ** -0.4 + seed / 1000
                write_run(root, objective, "procedural", n, seed, err)
    assert main(["all", str(root), "--out", str(out), "--n-boot", "20"]) == 0
    capsys.readouterr()
    assert "position" not in (out / "results.csv").read_text().splitlines()[0]
    assert "Accuracy per path position" not in (out / "report.md").read_text()
