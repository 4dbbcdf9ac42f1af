"""eightfold-analyze end to end: fit/plot/report/all outputs and one-line errors for bad input."""

import csv
import json

import numpy as np
import pytest

from eightfold_analysis.cli import main

SIZES = [100, 300, 1000, 3000]


def write_sweep(
    root, sizes=SIZES, seeds=2, objectives=(("sft", 1.0), ("rft", 2.0), ("step_dpo", 8.0))
):
    rng = np.random.default_rng(0)
    for obj, k in objectives:
        for n in sizes:
            for s in range(seeds):
                d = root / "runs" / f"{obj}-{n}-{s}"
                d.mkdir(parents=True)
                (d / "config.yaml").write_text(f"objective: {obj}\n")
                err = float((0.1 + 2.0 * (k * n) ** -0.4) * np.exp(rng.normal(0, 0.03)))
                (d / "result.json").write_text(
                    json.dumps(
                        {
                            "objective": obj,
                            "source": "procedural",
                            "n": n,
                            "seed": s,
                            "test_error": err,
                            "test_accuracy": 1 - err,
                            "config_hash": "h",
                            "config_path": str(d / "config.yaml"),
                            "run_dir": str(d),
                            "wall_time_s": 1.0,
                        }
                    )
                )
    return root


def write_csv(path, rows, fields=("objective", "source", "n", "seed", "test_error")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def good_rows(sizes=SIZES):
    return [
        {
            "objective": o,
            "source": "p",
            "n": n,
            "seed": s,
            "test_error": 0.1 + 2.0 * (k * n) ** -0.4 * (1 + 0.01 * s),
        }
        for o, k in (("sft", 1), ("rft", 2))
        for n in sizes
        for s in range(2)
    ]


def run_err(argv, capsys):
    """Run the CLI expecting failure: exit code 2, exactly one stderr error line, no traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("eightfold-analyze: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_all_end_to_end(tmp_path, capsys):
    root = write_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    assert main(["all", str(root), "--out", str(out), "--n-boot", "100"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    for name in (
        "results.csv",
        "results.csv.problems.json",
        "fits.json",
        "report.md",
        "scaling.png",
        "scaling.pdf",
        "multipliers.png",
        "multipliers.pdf",
        "residuals.png",
        "residuals.pdf",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "scaling.pdf").read_bytes()[:5] == b"%PDF-"
    fits = json.loads((out / "fits.json").read_text())
    m = fits["methods"]["step_dpo/procedural"]
    for key in (
        "E",
        "E_low",
        "E_high",
        "A",
        "A_low",
        "A_high",
        "alpha",
        "alpha_low",
        "alpha_high",
        "power_law",
        "goodness_of_fit",
        "multiplier",
        "multiplier_low",
        "multiplier_high",
        "multipliers",
    ):
        assert key in m, key
    assert 5 < m["multiplier"] < 12
    report = (out / "report.md").read_text()
    assert "![scaling](scaling.png)" in report and "![multipliers](multipliers.png)" in report
    assert "| sft |" in report and "step_dpo/procedural" in report
    assert "What one seed cannot show" not in report  # every cell has 2 seeds


def test_one_seed_report_says_what_one_seed_cannot_show(tmp_path, capsys):
    root = write_sweep(tmp_path / "sweep", seeds=1)
    out = tmp_path / "out"
    assert main(["all", str(root), "--out", str(out), "--n-boot", "50"]) == 0
    report = (out / "report.md").read_text()
    section = report.split("## What one seed cannot show", 1)[1].split("\n## ", 1)[0]
    assert "12 of 12 (objective, data size) cells ran a single seed" in section
    assert "not measured by these runs at all" in section


def test_seed_limits_quotes_the_measured_seed_spread():
    from eightfold_analysis.report import seed_limits

    rows = [
        {"objective": "sft", "source": "p", "n": 100, "seed": s, "test_error": e}
        for s, e in ((0, 0.30), (1, 0.40))
    ] + [{"objective": "dpo", "source": "p", "n": 100, "seed": 0, "test_error": 0.2}]
    text = "\n".join(seed_limits(rows))
    assert "1 of 2 (objective, data size) cells ran a single seed (dpo n=100)" in text
    assert "7.1 points (median over 1 cells), up to 7.1 (sft n=100)" in text  # std of .6/.7
    assert seed_limits(rows[:2]) == []


def test_fit_then_plot_from_fits_file(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "r.csv", good_rows())
    assert (
        main(
            ["fit", str(csv_path), "-o", str(tmp_path / "f.json"), "--n-boot", "50", "--seed", "3"]
        )
        == 0
    )
    fits = json.loads((tmp_path / "f.json").read_text())
    assert fits["seed"] == 3 and fits["n_boot"] == 50 and fits["baseline"] == "sft"
    assert (
        main(
            [
                "plot",
                str(csv_path),
                "--out",
                str(tmp_path / "p"),
                "--fits",
                str(tmp_path / "f.json"),
            ]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "p").iterdir()} >= {
        "scaling.png",
        "scaling.pdf",
        "multipliers.png",
        "residuals.pdf",
    }
    capsys.readouterr()
    assert (
        main(
            [
                "report",
                str(csv_path),
                "--out",
                str(tmp_path / "rep"),
                "--fits",
                str(tmp_path / "f.json"),
            ]
        )
        == 0
    )
    assert "rft/p" in (tmp_path / "rep" / "report.md").read_text()


def test_empty_sweep_root(tmp_path, capsys):
    assert "no runs under" in run_err(
        ["collect", str(tmp_path), "-o", str(tmp_path / "r.csv")], capsys
    )
    assert "does not exist" in run_err(
        ["all", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys
    )


def test_missing_column_is_named(tmp_path, capsys):
    p = write_csv(
        tmp_path / "r.csv", good_rows(), fields=("objective", "source", "n", "test_error")
    )
    line = run_err(["fit", str(p)], capsys)
    assert (
        "missing column(s) seed" in line
        and "required columns: objective, source, n, seed, test_error" in line
    )


def test_nan_value_is_rejected(tmp_path, capsys):
    rows = good_rows()
    rows[2]["test_error"] = "nan"
    line = run_err(["fit", str(write_csv(tmp_path / "r.csv", rows))], capsys)
    assert "line 4" in line and "'nan'" in line and "finite number in [0, 1]" in line


def test_unknown_baseline_lists_available(tmp_path, capsys):
    line = run_err(
        ["fit", str(write_csv(tmp_path / "r.csv", good_rows())), "--baseline", "ppo"], capsys
    )
    assert "'ppo'" in line and "available: rft, sft" in line


def test_all_errors_zero(tmp_path, capsys):
    rows = [dict(r, test_error=0.0) for r in good_rows()]
    line = run_err(
        ["fit", str(write_csv(tmp_path / "r.csv", rows)), "-o", str(tmp_path / "f.json")], capsys
    )
    assert "test_error 0" in line and "log-space fit is impossible" in line
    assert not (tmp_path / "f.json").exists()


def test_one_data_size_still_collects_and_plots(tmp_path, capsys):
    root = write_sweep(tmp_path / "sweep", sizes=[1000])
    out = tmp_path / "out"
    line = run_err(["all", str(root), "--out", str(out), "--n-boot", "10"], capsys)
    assert "fewer than 3 distinct data sizes" in line and "1000" in line
    assert (out / "results.csv").exists() and (out / "scaling.png").stat().st_size > 0
    assert "No fits:" in (out / "report.md").read_text()
    line = run_err(["fit", str(out / "results.csv")], capsys)
    assert "fewer than 3 distinct data sizes" in line
    assert (
        main(["plot", str(out / "results.csv"), "--out", str(tmp_path / "p")]) == 0
    )  # points only
    assert "without fitted curves" in capsys.readouterr().err


def test_bad_options(tmp_path, capsys):
    p = str(write_csv(tmp_path / "r.csv", good_rows()))
    assert "--ci" in run_err(["fit", p, "--ci", "95"], capsys)
    assert "--n-boot" in run_err(["fit", p, "--n-boot", "-1"], capsys)
    assert "does not exist" in run_err(["fit", str(tmp_path / "none.csv")], capsys)
    assert "cannot read fits file" in run_err(
        ["plot", p, "--out", str(tmp_path), "--fits", p], capsys
    )
    (tmp_path / "other.json").write_text('{"a": 1}')
    line = run_err(
        ["plot", p, "--out", str(tmp_path), "--fits", str(tmp_path / "other.json")], capsys
    )
    assert "not an eightfold fits.json" in line


@pytest.mark.parametrize(
    "cmd", [["collect"], ["fit"], ["plot", "x"], ["report", "x"], ["all", "x"]]
)
def test_usage_errors_exit_2(cmd):
    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 2
