"""eightfold-analyze: collect | fit | plot | report | all.

Input problems (AnalysisError) print one line "eightfold-analyze: error: ..." and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

from eightfold.runfiles import check_writable_dir

from . import collect as col
from . import paired as pr
from .common import AnalysisError, write_json
from .fit import fit_table
from .plot import plot_all
from .report import write_report


def _warn(msg: str) -> None:
    print(f"eightfold-analyze: {msg}", file=sys.stderr)


def _collect(root: str, out: Path) -> tuple[list[dict], list[dict]]:
    """collect + write results.csv and its problems sidecar; stderr lists every unfinished run."""
    rows, problems = col.collect(root)
    col.write_results(rows, problems, out, root)
    for p in problems:
        _warn(col.describe_problem(p))
    for key in col.duplicates(rows):
        _warn(
            f"duplicate finished runs for objective/source/n/seed {key}; all kept as separate rows"
        )
    counts = {
        s: sum(p["status"] == s for p in problems) for s in ("failed", "incomplete", "invalid")
    }
    _warn(
        f"collected {len(rows)} finished runs into {out} ("
        + ", ".join(f"{c} {s}" for s, c in counts.items())
        + f"; details in {col.problems_path(out)})"
    )
    if not rows:
        raise AnalysisError(
            f"no finished runs under {root} ({len(problems)} runs not finished; "
            f"see {col.problems_path(out)})"
        )
    return rows, problems


def _raw_rows(csv_path: str | Path) -> list[dict]:
    """results.csv as plain dicts, every column (read_results keeps only what the fits need)."""
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def _metric_rows(rows: list[dict], csv_path: str | Path, metric: str) -> list[dict]:
    """``rows`` with ``test_error`` set to the error of ``metric``: 1 - accuracy (the default) or
    1 - pass@k. Runs without that metric (pass@k was off for them) are left out, with a note."""
    if metric in ("test_error", "test_accuracy"):
        return rows
    if not re.fullmatch(r"test_pass@[1-9]\d*", metric):
        raise AnalysisError(
            f"--metric {metric!r} is not valid: expected test_error (1 - greedy accuracy, the"
            " default) or test_pass@K with a K the runs measured, e.g. --metric test_pass@5"
        )
    raw = _raw_rows(csv_path)
    have = sorted({k for r in raw for k in r if k.startswith("test_pass@") and r[k]})
    if metric not in have:
        raise AnalysisError(
            f"--metric {metric}: no run in {csv_path} has it; available: "
            + ", ".join(["test_error", *have])
            + " (runs measure pass@k with eval.pass_k set, e.g. eval.pass_k=[1,5])"
        )
    out = []
    for row, r in zip(rows, raw, strict=True):  # read_results keeps the file's row order
        value = col._finite01(r.get(metric))
        if value is not None:
            out.append({**row, "test_error": 1.0 - value})
    if len(out) < len(rows):
        _warn(f"{len(rows) - len(out)} run(s) without {metric} left out of the fit")
    return out


def _size(text: str) -> int:
    """--min-n: a data size, an integer >= 0."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a data size (an integer >= 0)")
    return n


def _sized(rows: list[dict], a: argparse.Namespace) -> list[dict]:
    """The runs at data sizes n >= --min-n (all of them by default): a study whose smallest sizes
    sit below where the task is learned at all can be read without them."""
    out = [r for r in rows if int(float(r["n"])) >= a.min_n]
    if not out:
        sizes = ", ".join(map(str, sorted({int(float(r["n"])) for r in rows})))
        raise AnalysisError(f"--min-n {a.min_n} leaves no runs; the data sizes here are {sizes}")
    return out


def _fit(rows: list[dict], a: argparse.Namespace, source: str) -> dict:
    if a.n_boot < 0:
        raise AnalysisError(f"--n-boot must be >= 0 (0 = no intervals); got {a.n_boot}")
    if a.huber_delta is not None and not a.huber_delta > 0:
        raise AnalysisError(
            f"--huber-delta must be > 0 (log units) or omitted for auto; got {a.huber_delta}"
        )
    if not 0 < a.error_floor < 1:
        raise AnalysisError(f"--error-floor must be in (0, 1); got {a.error_floor}")
    # Runs that did not train (paired.trained) are left out of the fits: no multiplier from them.
    rows, flagged = pr.split_trained(rows, a.min_steps, a.min_pairs)
    for f in flagged:
        _warn(pr.describe_flag(f) + "; left out of the fits")
    if not any(r["objective"] == a.baseline for r in rows) and any(
        f["objective"] == a.baseline for f in flagged
    ):
        raise AnalysisError(
            f"baseline objective '{a.baseline}': none of its runs trained (see the warnings "
            f"above; --min-steps {a.min_steps}, --min-pairs {a.min_pairs}), so nothing is "
            f"compared with it"
        )
    fits = fit_table(
        rows,
        baseline=a.baseline,
        n_boot=a.n_boot,
        seed=a.seed,
        ci=a.ci,
        huber_delta=a.huber_delta,
        error_floor=a.error_floor,
        source_path=source,
        metric=a.metric,
    )
    pr.mark_untrained(fits, flagged, a.min_steps, a.min_pairs)
    for k, m in fits["methods"].items():
        if m.get("fit_error"):
            _warn(f"{k} not fitted: {m['fit_error']}")
        if m.get("n_floored"):
            _warn(
                f"{k}: {m['n_floored']} run(s) with test_error 0 floored at {a.error_floor} for the log-space fit"
            )
    return fits


def _plot_rows(rows: list[dict], a: argparse.Namespace) -> list[dict]:
    """The runs the plots draw: those that trained, like the fits (all of them if none did)."""
    return pr.split_trained(rows, a.min_steps, a.min_pairs)[0] or rows


def _load_fits(path: str) -> dict:
    try:
        with open(path) as f:
            fits = json.load(f)
    except (OSError, ValueError) as e:
        raise AnalysisError(
            f"cannot read fits file {path}: {e} (make one with: eightfold-analyze fit)"
        ) from None
    if not isinstance(fits, dict) or fits.get("schema") != "eightfold.fits/1":
        raise AnalysisError(f"{path} is not an eightfold fits.json (schema eightfold.fits/1)")
    return fits


def cmd_collect(a: argparse.Namespace) -> int:
    _collect(a.root, Path(a.output))
    print(a.output)
    return 0


def cmd_fit(a: argparse.Namespace) -> int:
    rows = _sized(_metric_rows(col.read_results(a.results), a.results, a.metric), a)
    fits = _fit(rows, a, a.results)
    write_json(a.output, fits)
    print(a.output)
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    rows = _sized(_metric_rows(col.read_results(a.results), a.results, a.metric), a)
    if a.fits:
        fits = _load_fits(a.fits)
    else:
        try:
            fits = _fit(rows, a, a.results)
        except AnalysisError as e:  # the points are still worth plotting
            _warn(f"plotting points without fitted curves: {e}")
            fits = None
    for p in plot_all(_plot_rows(rows, a), fits, a.out):
        print(p)
    return 0


def _report(a: argparse.Namespace, require_root: bool) -> int:
    out = Path(a.out)
    src = Path(a.input)
    problems = None
    if not src.exists():
        what = "sweep root" if require_root else "sweep root or results.csv"
        raise AnalysisError(f"{what} {src} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        _, problems = _collect(str(src), out / "results.csv")
        csv_path = out / "results.csv"
    elif require_root:
        raise AnalysisError(
            f"{src} is not a sweep root directory (expected e.g. SWEEP_ROOT with runs/<run_name>/)"
        )
    else:
        csv_path = src
        side = col.problems_path(src)
        if side.is_file():
            problems = json.loads(side.read_text()).get("problems")
    every = col.read_results(csv_path)
    rows = _sized(every, a)
    paired = pr.compare_all(
        rows,
        a.baseline,
        a.n_boot,
        a.seed,
        a.ci,
        a.min_steps,
        a.min_pairs,
        str(csv_path),
        requested=a.compare,
    )
    write_json(out / "paired.json", paired)
    fit_error = None
    if getattr(a, "fits", None):
        fits = _load_fits(a.fits)
        a.metric = fits.get("metric", "test_error")
    metric_rows = _sized(_metric_rows(every, csv_path, a.metric), a)  # the table keeps `rows`
    if not getattr(a, "fits", None):
        try:
            fits = _fit(metric_rows, a, str(csv_path))
            write_json(out / "fits.json", fits)
        except AnalysisError as e:
            fits, fit_error = None, str(e)
    plots = plot_all(_plot_rows(metric_rows, a), fits, out)
    raw = _sized(_raw_rows(csv_path), a)
    label = f"{src} (only the runs at n >= {a.min_n}: --min-n)" if a.min_n else str(src)
    path = write_report(
        out, rows, fits, plots, problems, fit_error, label, paired=paired, raw_rows=raw
    )
    print(path)
    if fit_error:
        # Collect, plots and report were still written; the fit itself is what failed.
        raise AnalysisError(f"{fit_error} [partial report without fits: {path}]")
    return 0


def _fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fit options")
    g.add_argument(
        "--baseline", default="sft", help="objective the others are compared to (default: sft)"
    )
    g.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000; 0 = none)"
    )
    g.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default: 0)")
    g.add_argument("--ci", type=float, default=0.95, help="interval level (default: 0.95)")
    g.add_argument(
        "--huber-delta",
        type=float,
        default=None,
        help="Huber threshold on log residuals (default: auto, 1.345 x MAD of a pilot fit)",
    )
    g.add_argument(
        "--metric",
        default="test_error",
        help="what is fitted: test_error (1 - greedy accuracy, default) or test_pass@K"
        " (fitted as its error 1 - pass@K), e.g. test_pass@5",
    )
    g.add_argument(
        "--min-n",
        type=_size,
        default=0,
        help="leave out runs at data sizes below N: fits, multipliers, paired tests, tables"
        " (default: 0, every size)",
    )
    g.add_argument(
        "--error-floor",
        type=float,
        default=1e-3,
        help="test_error 0 is replaced by this before taking logs (default: 1e-3)",
    )
    g = p.add_argument_group("runs that did not train (left out of fits and paired tests)")
    g.add_argument(
        "--min-steps",
        type=int,
        default=100,
        help="flag a run on pi_sft that took fewer optimizer steps (default: 100; 0 = never)",
    )
    g.add_argument(
        "--min-pairs",
        type=int,
        default=100,
        help="flag a run on pi_sft that trained on fewer pairs/items (default: 100; 0 = never)",
    )


def _pair(text: str) -> tuple[str, str]:
    """--compare OBJECTIVE:REFERENCE, two different objective names."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b or ":" in b or a == b:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not OBJECTIVE:REFERENCE with two different objective names,"
            " e.g. step_dpo:rft_control"
        )
    return a, b


def _compare_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compare",
        type=_pair,
        action="append",
        default=[],
        metavar="OBJECTIVE:REFERENCE",
        help="also test OBJECTIVE against REFERENCE on the same problems at each n (repeatable;"
        " every objective is always tested against its matched control and the baseline)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eightfold-analyze", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("collect", help="sweep root -> results.csv (+ results.csv.problems.json)")
    s.add_argument("root")
    s.add_argument("-o", "--output", default="results.csv")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser(
        "fit", help="results.csv -> fits.json (power-law fits, bootstrap CIs, multipliers)"
    )
    s.add_argument("results")
    s.add_argument("-o", "--output", default="fits.json")
    _fit_options(s)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser(
        "plot", help="results.csv -> scaling / multiplier / residual plots (PNG + PDF)"
    )
    s.add_argument("results")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--fits", help="fits.json from `fit` (default: fit now)")
    _fit_options(s)
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser(
        "report", help="sweep root or results.csv -> DIR/report.md (+ fits, paired tests, plots)"
    )
    s.add_argument("input")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--fits", help="fits.json from `fit` (default: fit now)")
    _compare_option(s)
    _fit_options(s)
    s.set_defaults(func=lambda a: _report(a, require_root=False))

    s = sub.add_parser(
        "all", help="collect + fit + plot + report for a sweep root; prints the report path"
    )
    s.add_argument("input", metavar="root")
    s.add_argument("--out", required=True, help="output directory")
    _compare_option(s)
    _fit_options(s)
    s.set_defaults(func=lambda a: _report(a, require_root=True))
    return p


def _check_outputs(a: argparse.Namespace) -> None:
    """Where the command writes, checked before it reads anything: a directory it can write to
    (``--out``), or a file whose folder it can write to (``--output``)."""
    out = getattr(a, "out", None)
    if out is not None and (problem := check_writable_dir(out, "--out")):
        raise AnalysisError(problem)
    output = getattr(a, "output", None)
    if output is not None:
        path = Path(output)
        if path.is_dir():
            raise AnalysisError(f"--output={output} is a directory; expected a file name")
        if problem := check_writable_dir(path.parent, "the folder of --output"):
            raise AnalysisError(problem)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        return args.func(args)
    except AnalysisError as e:
        print(f"eightfold-analyze: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
