"""Paired tests at equal n and the runs-that-did-not-train flags, on real run directories."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from eightfold_analysis import collect as C
from eightfold_analysis import paired as P
from eightfold_analysis.cli import main
from eightfold_analysis.fit import fit_table

REPO = Path(__file__).resolve().parents[1]
SIZES = [100, 300, 1000, 3000]
T = 400  # test problems, the same for every run


def closed_form(a: str, b: str) -> dict:
    """Accuracy difference and exact two-sided McNemar p by hand (binomial coefficients)."""
    oo = sum(x == "1" and y == "0" for x, y in zip(a, b))
    ro = sum(x == "0" and y == "1" for x, y in zip(a, b))
    m = oo + ro
    tail = sum(math.comb(m, i) for i in range(min(oo, ro) + 1)) / 2**m
    return {
        "diff": (a.count("1") - b.count("1")) / len(a),
        "objective_only": oo,
        "reference_only": ro,
        "p": min(1.0, 2 * tail) if m else 1.0,
    }


def build(oo: int, ro: int, both: int, neither: int) -> tuple[str, str]:
    """Outcome strings with the given counts of (1,0), (0,1), (1,1), (0,0) problems, shuffled."""
    pairs = [("1", "0")] * oo + [("0", "1")] * ro + [("1", "1")] * both + [("0", "0")] * neither
    order = np.random.default_rng(oo * 1000 + ro).permutation(len(pairs))
    return "".join(pairs[i][0] for i in order), "".join(pairs[i][1] for i in order)


# ----------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize(
    "counts", [(7, 2, 20, 11), (0, 9, 5, 6), (4, 4, 10, 2), (0, 0, 30, 10), (40, 1, 200, 159)]
)
def test_mcnemar_and_difference_match_the_closed_form(counts):
    a, b = build(*counts)
    want = closed_form(a, b)
    got = P.paired_test([a], [b], n_boot=200, ci=0.9)
    assert got["diff"] == pytest.approx(want["diff"], abs=1e-12)
    assert got["accuracy"] - got["reference_accuracy"] == pytest.approx(want["diff"])
    assert (got["objective_only"], got["reference_only"]) == (
        want["objective_only"],
        want["reference_only"],
    )
    assert got["p_mcnemar"] == pytest.approx(want["p"], rel=1e-9)
    assert got["diff_low"] <= want["diff"] <= got["diff_high"]


def test_pooled_over_seeds_sums_discordant_pairs_and_averages_differences():
    (a1, b1), (a2, b2) = build(7, 2, 20, 11), build(3, 5, 25, 7)
    got = P.paired_test([a1, a2], [b1, b2], n_boot=300)
    one, two = closed_form(a1, b1), closed_form(a2, b2)
    assert got["diff"] == pytest.approx((one["diff"] + two["diff"]) / 2)
    assert (got["objective_only"], got["reference_only"]) == (10, 7)
    assert got["p_mcnemar"] == pytest.approx(
        closed_form("1" * 10 + "0" * 7, "0" * 10 + "1" * 7)["p"]
    )
    assert [p["p_mcnemar"] for p in got["per_seed"]] == pytest.approx([one["p"], two["p"]])
    assert got["n_seeds"] == 2 and got["n_problems"] == 80


def test_bootstrap_interval_matches_the_normal_approximation_and_is_seeded():
    a, b = build(60, 30, 200, 110)  # 400 problems: the normal approximation is good
    t, pp, pm = 400, 60 / 400, 30 / 400
    se = math.sqrt((pp + pm - (pp - pm) ** 2) / t)
    got = P.paired_test([a], [b], n_boot=4000, ci=0.95, rng=np.random.default_rng(1))
    assert got["diff_low"] == pytest.approx(0.075 - 1.96 * se, abs=0.15 * se)
    assert got["diff_high"] == pytest.approx(0.075 + 1.96 * se, abs=0.15 * se)
    again = P.paired_test([a], [b], n_boot=4000, ci=0.95, rng=np.random.default_rng(1))
    assert again == got
    none = P.paired_test([a], [b], n_boot=0)
    assert none["diff_low"] is None and none["diff_high"] is None


def test_matched_controls_from_the_real_objective_configs():
    names = {p.stem for p in (REPO / "conf" / "objective").glob("*.yaml")}
    want = {
        **dict.fromkeys(("rft", "rft_self", "rft_pool", "rft_v0"), "rft_control"),
        **dict.fromkeys(("dpo", "dpo_v0", "dpo_pool", "dpo_pool_long"), "dpo_control"),
        **dict.fromkeys(
            ("step_dpo", "step_dpo_v0", "step_dpo_pool", "step_dpo_pool_long"), "step_dpo_control"
        ),
        **dict.fromkeys(("awr", "awr_v0", "awr_pool"), "awr_control"),
    }
    assert P.matched_controls(names) == {k: v for k, v in want.items() if k in names}
    assert set(want) <= names  # the configs the mapping was written for still exist
    # A new objective with a _control twin is paired without code; controls only when present.
    assert P.matched_controls({"kto", "kto_beta2", "kto_control", "sft"}) == {
        "kto": "kto_control",
        "kto_beta2": "kto_control",
    }
    assert P.matched_controls({"dpo", "sft"}) == {}


def test_trained_rule():
    ok = {"train_steps": 200, "objective_steps": 200, "budget_items": 500, "budget_epochs": 0.4}
    assert P.trained(ok) == (True, "")
    assert P.trained({"objective": "sft", "train_steps": 5}) == (True, "")  # no budget: never
    few = P.trained({**ok, "train_steps": 8, "budget_items": 40}, 100, 100)
    assert not few[0] and "8 optimizer steps < --min-steps 100" in few[1]
    assert "40 pairs/items < --min-pairs 100" in few[1]
    starved = P.trained({**ok, "budget_too_few_pairs": True, "budget_epochs": 12.5})
    assert not starved[0] and "too few pairs" in starved[1] and "12.5 passes" in starved[1]
    assert P.trained({**ok, "train_steps": 8, "budget_items": 40}, 0, 0) == (True, "")


# ----------------------------------------------------------------------------- run directories

OBJECTIVES = {"sft": 1.0, "rft": 2.0, "rft_control": 1.4, "dpo": 1.0, "dpo_control": 1.2}


def outcome_string(rng_u: np.ndarray, acc: float) -> str:
    return "".join("1" if u < acc else "0" for u in rng_u)


def budget(obj: str, n: int) -> dict:
    if obj == "sft":
        return {"train_steps": 3 * n}
    if obj == "dpo":  # the demo's failure: a handful of steps on a handful of pairs
        return {"train_steps": 8, "objective_steps": 8, "budget_items": 40, "budget_epochs": 1.6,
                "budget_too_few_pairs": False, "logratio_gap_last_epoch": 0.01,
                "reward_accuracy_last_epoch": 0.5}  # fmt: skip
    starved = obj == "rft" and n == 100
    return {
        "train_steps": 200,
        "objective_steps": 200,
        "budget_items": 160 if starved else 5 * n,
        "budget_epochs": 12.5 if starved else round(200 * 8 / (5 * n), 3),
        "budget_too_few_pairs": starved,
    }


def write_sweep(root: Path) -> dict:
    """sft, rft (starved at n=100), rft_control, dpo (never trains), dpo_control; 2 seeds; one old
    rft_control run without test_outcomes. Shared per-problem difficulty u, so runs correlate."""
    rng = np.random.default_rng(0)
    written = {}
    for n in SIZES:
        for s in range(2):
            u = rng.random(T)
            u[0] = 0.9999  # problem 0 is wrong for everyone: every string starts with "0"
            for obj, k in OBJECTIVES.items():
                acc = 1 - (0.1 + 2.0 * (k * n) ** -0.4)
                o = outcome_string(np.clip(u + rng.normal(0, 0.03, T), 0, 0.9999), acc)
                d = root / "runs" / f"{obj}-{n}-{s}"
                d.mkdir(parents=True)
                (d / "config.yaml").write_text(f"objective: {obj}\n")
                res = {
                    "objective": obj,
                    "source": "procedural",
                    "n": n,
                    "seed": s,
                    "test_accuracy": o.count("1") / T,
                    "test_error": 1 - o.count("1") / T,
                    "test_size": T,
                    "test_outcomes": o,
                    "config_hash": "h",
                    "config_path": str(d / "config.yaml"),
                    "run_dir": str(d),
                    "wall_time_s": 1.0,
                    **budget(obj, n),
                }
                if (obj, n, s) == ("rft_control", 3000, 1):
                    del res["test_outcomes"]  # a run from before per-problem outcomes
                else:
                    written[(obj, n, s)] = o
                (d / "result.json").write_text(json.dumps(res))
    return written


def test_outcomes_round_trip_into_the_paired_test(tmp_path):
    written = write_sweep(tmp_path / "sweep")
    rows, problems = C.collect(tmp_path / "sweep")
    assert not problems
    out = C.write_results(rows, problems, tmp_path / "results.csv", tmp_path / "sweep")
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert "test_outcomes" not in reader.fieldnames  # in the sidecar, as strings
        assert "run_dir" in reader.fieldnames and "budget_items" in reader.fieldnames
    side = json.loads(C.outcomes_path(out).read_text())["outcomes"]
    assert len(side) == len(written) and all(v.startswith("0") for v in side.values())

    back = C.read_results(out)
    got = {(r["objective"], r["n"], r["seed"]): r.get("test_outcomes") for r in back}
    assert {k: v for k, v in got.items() if v} == written  # leading zeros and all
    assert got[("rft_control", 3000, 1)] is None
    assert {r.get("test_size") for r in back} == {T}
    rft100 = next(r for r in back if (r["objective"], r["n"], r["seed"]) == ("rft", 100, 0))
    assert rft100["budget_too_few_pairs"] is True and rft100["train_steps"] == 200
    assert rft100["budget_epochs"] == 12.5

    res = P.compare_all(back, n_boot=100, seed=0)
    assert res == P.compare_all(back, n_boot=100, seed=0)  # seeded: byte-identical reruns
    by = {(c["objective"], c["reference"], c["n"]): c for c in res["comparisons"]}
    c = by[("rft", "rft_control", 1000)]
    assert c["kind"] == "control" and c["seeds"] == [0, 1]
    for s, p in zip(c["seeds"], c["per_seed"]):
        want = closed_form(written[("rft", 1000, s)], written[("rft_control", 1000, s)])
        assert p["diff"] == pytest.approx(want["diff"])
        assert p["p_mcnemar"] == pytest.approx(want["p"], rel=1e-9)
        assert (p["objective_only"], p["reference_only"]) == (
            want["objective_only"],
            want["reference_only"],
        )
    assert by[("rft", "sft", 1000)]["kind"] == "baseline"
    # The old run is skipped with a note, never an error; the other seed still pairs.
    old = by[("rft", "rft_control", 3000)]
    assert old["seeds"] == [0] and "seed 1: rft_control no test_outcomes" in old["notes"][0]
    assert {(s["objective"], s["n"], s["seed"]) for s in res["skipped"]} == {
        ("rft_control", 3000, 1)
    }
    # Runs that did not train are left out (dpo never trained); a run that trained many passes
    # over too few pairs (rft at n=100) is compared: how it fares against its control is the
    # measurement, and the report lists it under the flags.
    assert by[("dpo", "dpo_control", 300)]["n_seeds"] == 0
    assert by[("rft", "rft_control", 100)]["n_seeds"] == 2
    assert len(res["not_trained"]) == 8 + 2
    # Controls are compared with the baseline; sft with nothing.
    assert ("dpo_control", "sft", 300) in by and not any(k[0] == "sft" for k in by)


def test_flagged_runs_get_no_multiplier():
    rng = np.random.default_rng(3)
    rows = []
    for obj, k in (("sft", 1.0), ("dpo", 4.0), ("rft", 2.0)):
        for n in SIZES:
            for s in range(2):
                err = float((0.1 + 2.0 * (k * n) ** -0.4) * np.exp(rng.normal(0, 0.02)))
                rows.append(
                    {"objective": obj, "source": "p", "n": n, "seed": s, "test_error": err}
                    | budget(obj, n)
                )
    kept, flagged = P.split_trained(rows)
    fits = P.mark_untrained(fit_table(kept, n_boot=50), flagged, 100, 100)
    dpo, rft = fits["methods"]["dpo/p"], fits["methods"]["rft/p"]
    assert dpo["multiplier"] is None and dpo["multipliers"] == [] and dpo["alpha"] is None
    assert "none of its 8 run(s) trained" in dpo["multiplier_note"]
    assert rft["n_not_trained"] == 2 and [z["n"] for z in rft["sizes"]] == [300, 1000, 3000]
    assert rft["multiplier"] == pytest.approx(2.0, rel=0.3)
    assert {(f["objective"], f["n"]) for f in fits["not_trained"]} == {
        ("dpo", n) for n in SIZES
    } | {("rft", 100)}


# ----------------------------------------------------------------------------- the CLI


def test_cli_all_writes_paired_section_and_flags(tmp_path, capsys):
    written = write_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    assert main(["all", str(tmp_path / "sweep"), "--out", str(out), "--n-boot", "50"]) == 0
    err = capsys.readouterr().err
    assert "dpo/procedural n=100 seed=0: did not train (8 optimizer steps" in err

    paired = json.loads((out / "paired.json").read_text())
    assert paired["schema"] == "eightfold.paired/1" and paired["min_steps"] == 100
    c = next(
        c
        for c in paired["comparisons"]
        if (c["objective"], c["reference"], c["n"]) == ("rft", "rft_control", 300)
    )
    pooled = closed_form(
        written[("rft", 300, 0)] + written[("rft", 300, 1)],
        written[("rft_control", 300, 0)] + written[("rft_control", 300, 1)],
    )
    assert c["p_mcnemar"] == pytest.approx(pooled["p"], rel=1e-9)
    assert c["diff"] == pytest.approx(pooled["diff"])  # equal test sets: mean = pooled
    assert c["diff_low"] <= c["diff"] <= c["diff_high"]

    fits = json.loads((out / "fits.json").read_text())
    assert fits["methods"]["dpo/procedural"]["multiplier"] is None
    assert len(fits["not_trained"]) == 10

    report = (out / "report.md").read_text()
    assert "## Runs that did not train (10)" in report
    flags = report.split("## Runs that did not train")[1].split("## Paired tests")[0]
    assert (
        flags.count("| dpo | procedural |") == 8 and "8 optimizer steps < --min-steps 100" in flags
    )
    assert "| rft | procedural | 100 | 0 |" in flags and "too few pairs" in flags
    section = report.split("## Paired tests at equal n")[1].split("## Fits")[0]
    assert "**source: procedural, n = 300**" in section
    assert "| rft | rft_control (control) |" in section and "| rft | sft (baseline) |" in section
    assert f"+{c['objective_only']} / −{c['reference_only']}" in section
    assert (
        "- procedural: dpo vs dpo_control at n = 100, 300, 1000, 3000: dpo did not train" in section
    )
    # rft at n=100 made too many passes over too few pairs: flagged above, but it trained, so
    # it is compared with its control (not listed as "did not train")
    assert "rft vs rft_control at n = 100" not in section
    assert "**source: procedural, n = 100**" in section
    assert "no test_outcomes" in section
    mult = report.split("## Data-efficiency multipliers")[1]
    assert "| dpo/procedural | — | — | — | no multiplier: none of its 8 run(s) trained" in mult
    assert "2 run(s) that did not train left out" in mult

    # report from results.csv finds the outcomes in the sidecar; with --min-* 0 only the runs
    # with too few pairs for their budget (a fact of the run, not a threshold) stay flagged.
    capsys.readouterr()
    rep = tmp_path / "rep"
    argv = ["report", str(out / "results.csv"), "--out", str(rep), "--n-boot", "0"]
    assert main([*argv, "--min-steps", "0", "--min-pairs", "0"]) == 0
    again = json.loads((rep / "paired.json").read_text())
    assert {(f["objective"], f["n"]) for f in again["not_trained"]} == {("rft", 100)}
    assert "## Runs that did not train (2)" in (rep / "report.md").read_text()
    dpo = next(
        c
        for c in again["comparisons"]
        if (c["objective"], c["reference"], c["n"]) == ("dpo", "dpo_control", 300)
    )
    assert dpo["n_seeds"] == 2 and dpo["diff_low"] is None


def test_cli_bad_flag_options_are_one_line(tmp_path, capsys):
    write_sweep(tmp_path / "sweep")
    code = main(["all", str(tmp_path / "sweep"), "--out", str(tmp_path / "o"), "--min-steps", "-1"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("eightfold-analyze: error:")]
    assert code == 2 and len(lines) == 1 and "--min-steps must be >= 0" in lines[0]


def test_one_data_size_still_gets_paired_tests_and_bad_outcomes_are_one_line(tmp_path, capsys):
    write_sweep(tmp_path / "sweep")
    for d in (tmp_path / "sweep" / "runs").iterdir():
        if not d.name.endswith(("-1000-0", "-1000-1")):
            (d / "result.json").unlink()
            (d / "config.yaml").unlink()
    out = tmp_path / "out"
    assert main(["all", str(tmp_path / "sweep"), "--out", str(out), "--n-boot", "20"]) == 2
    err = capsys.readouterr().err
    assert "fewer than 3 distinct data sizes" in err.splitlines()[-1]
    report = (out / "report.md").read_text()
    assert "**source: procedural, n = 1000**" in report and "No fits:" in report
    assert json.loads((out / "paired.json").read_text())["comparisons"]

    side = C.outcomes_path(out / "results.csv")
    data = json.loads(side.read_text())
    data["outcomes"][next(iter(data["outcomes"]))] = "01x1"
    side.write_text(json.dumps(data))
    code = main(["report", str(out / "results.csv"), "--out", str(tmp_path / "r2")])
    lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert code == 2 and len(lines) == 1 and "is not a string of 0/1" in lines[0]


def test_cli_compare_adds_the_requested_pairs(tmp_path, capsys):
    """--compare rft:dpo_control tests two objectives that are neither control nor baseline of
    each other, with the same statistics; sft:rft_control puts the baseline on the left."""
    written = write_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    argv = ["all", str(tmp_path / "sweep"), "--out", str(out), "--n-boot", "50"]
    assert main([*argv, "--compare", "rft:dpo_control", "--compare", "sft:rft_control"]) == 0
    paired = json.loads((out / "paired.json").read_text())
    assert paired["requested"] == [["rft", "dpo_control"], ["sft", "rft_control"]]
    by = {(c["objective"], c["reference"], c["n"]): c for c in paired["comparisons"]}
    c = by[("rft", "dpo_control", 1000)]
    assert c["kind"] == "requested" and c["seeds"] == [0, 1]
    pooled = closed_form(
        written[("rft", 1000, 0)] + written[("rft", 1000, 1)],
        written[("dpo_control", 1000, 0)] + written[("dpo_control", 1000, 1)],
    )
    assert c["diff"] == pytest.approx(pooled["diff"])
    assert c["p_mcnemar"] == pytest.approx(pooled["p"], rel=1e-9)
    assert by[("sft", "rft_control", 300)]["kind"] == "requested"
    # sft's own control/baseline rows stay absent; the unasked reverse pair is not added
    assert ("dpo_control", "rft", 1000) not in by and ("sft", "sft", 300) not in by
    section = (out / "report.md").read_text().split("## Paired tests at equal n")[1]
    assert "rft vs dpo_control, sft vs rft_control, asked for with --compare" in section
    assert "| rft | dpo_control (requested) |" in section

    # Without --compare the requested rows are gone and the rest is unchanged.
    assert (
        main(["all", str(tmp_path / "sweep"), "--out", str(tmp_path / "o2"), "--n-boot", "50"]) == 0
    )
    plain = json.loads((tmp_path / "o2" / "paired.json").read_text())
    assert plain["requested"] == [] and not any(
        c["kind"] == "requested" for c in plain["comparisons"]
    )
    assert len(plain["comparisons"]) == len(paired["comparisons"]) - 2 * len(SIZES)


@pytest.mark.parametrize(
    "value, message",
    [
        ("step_dpo", "is not OBJECTIVE:REFERENCE"),
        ("rft:rft", "is not OBJECTIVE:REFERENCE"),
        ("rft:", "is not OBJECTIVE:REFERENCE"),
        ("rft:nope", "no runs of objective 'nope'; the objectives here are dpo, dpo_control"),
    ],
)
def test_cli_bad_compare_is_one_line(tmp_path, capsys, value, message):
    write_sweep(tmp_path / "sweep")
    argv = ["all", str(tmp_path / "sweep"), "--out", str(tmp_path / "o"), "--compare", value]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses a malformed value before any work
        code = e.code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "o" / "paired.json").exists()


def test_cli_single_seed_method_gets_a_test_problem_interval(tmp_path):
    """A method left with one seed at one size (the others not run) is not fitted; through
    results.csv its measured multiplier still gets an interval from its test problems, which
    needs each run's test_size to survive the CSV."""
    write_sweep(tmp_path / "sweep")
    for d in (tmp_path / "sweep" / "runs").iterdir():
        if d.name.startswith("dpo_control-") and d.name != "dpo_control-1000-0":
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    out = tmp_path / "out"
    assert main(["all", str(tmp_path / "sweep"), "--out", str(out), "--n-boot", "200"]) == 0
    fits = json.loads((out / "fits.json").read_text())
    m = fits["methods"]["dpo_control/procedural"]
    assert fits["bootstrap_mode"] == "residual" and m["alpha"] is None
    assert m["multiplier_interval_basis"] == "test_problems"
    assert m["multiplier_low"] < m["multiplier"] < m["multiplier_high"]


def test_cli_min_n_leaves_the_small_sizes_out_of_everything(tmp_path, capsys):
    write_sweep(tmp_path / "sweep")
    full, cut = tmp_path / "full", tmp_path / "cut"
    argv = ["all", str(tmp_path / "sweep"), "--n-boot", "50"]
    assert main([*argv, "--out", str(full)]) == 0
    assert main([*argv, "--out", str(cut), "--min-n", "300"]) == 0
    fits = json.loads((cut / "fits.json").read_text())
    sft = fits["methods"]["sft/procedural"]
    assert [z["n"] for z in sft["sizes"]] == [300, 1000, 3000]
    assert (
        sft["alpha"]
        != json.loads((full / "fits.json").read_text())["methods"]["sft/procedural"]["alpha"]
    )
    paired = json.loads((cut / "paired.json").read_text())
    assert {c["n"] for c in paired["comparisons"]} == {300, 1000, 3000}
    report = (cut / "report.md").read_text()
    assert "(only the runs at n >= 300: --min-n)" in report and "n=100 " not in report
    assert "| n=100 |" not in report.split("## Test accuracy")[1].split("##")[0]

    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "none"), "--min-n", "5000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--min-n 5000 leaves no runs; the data sizes here are 100, 300, 1000, 3000" in err
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "bad"), "--min-n", "-3"])
    assert e.value.code == 2 and "'-3' is not a data size" in capsys.readouterr().err
