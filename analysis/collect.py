"""Walk a sweep root into one tidy table (results.csv) plus a list of runs that did not finish.

A run directory holds config.yaml (written at start) and then either result.json (finished)
or failed.json (crashed). config.yaml alone means the run is still going or was killed.
Nothing is dropped silently: every run that is not a clean row ends up in `problems`.

Per-problem test outcomes (result.json's ``test_outcomes``, one "0"/"1" per test problem) go to
a sidecar, ``results.csv.outcomes.json`` ({run_dir: outcomes}), not to a results.csv column: a
string of 500-2000 digits makes every row of the table unreadable in a viewer, and spreadsheets
and pandas read a column of digit strings as numbers, dropping the leading zeros (or overflowing)
and with them the problem order the paired tests rely on. JSON keeps them strings. results.csv
keeps ``run_dir``, the sidecar's key, and ``read_results`` attaches the outcomes back to each row
(a ``test_outcomes`` column, e.g. from an older collect, is read too).

Other lists are left out, except ``test_position_accuracy`` (a few numbers, one per path node of
the star graph): one column per node, ``test_position_accuracy@0``, ``@1``, ...
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from eightfold.runfiles import CONFIG, FAILED, RESULT, write_atomic

from .common import AnalysisError, write_json

MARKERS = (RESULT, FAILED, CONFIG)
IDENTITY = ("objective", "source", "n", "seed", "config_hash")
# Column order of results.csv: the contract's columns first, then any scalar extras.
COLUMNS = (
    "objective",
    "source",
    "n",
    "seed",
    "test_error",
    "test_accuracy",
    "config_hash",
    "run_dir",
    "wall_time_s",
    "config_path",
)
# What fit/plot/report need; test_error may instead be derived from test_accuracy.
REQUIRED = ("objective", "source", "n", "seed", "test_error")
OUTCOMES = "test_outcomes"  # kept in the sidecar results.csv.outcomes.json (module docstring)
# Optional result.json fields read_results types and keeps: the training budget of an objective
# on pi_sft (paired.trained flags runs that did not train) and its last-epoch preference metrics.
# test_size: the test problems behind a run's error, which the fit's test-problem bootstrap of a
# single-seed method needs (fit._measured_boot).
RUN_INTS = ("train_steps", "objective_steps", "budget_items", "test_size")
RUN_FLOATS = ("budget_epochs", "logratio_gap_last_epoch", "reward_accuracy_last_epoch")
RUN_BOOLS = ("budget_too_few_pairs",)
# A list in result.json that becomes one column per entry: the star graph's teacher-forced
# accuracy per path node (``test_position_accuracy@0`` = the source, ``@1`` = the first node
# after it, where a Clever-Hans model sits near 1/degree); report.py shows it per run.
POSITIONS = "test_position_accuracy"


def find_run_dirs(root: Path) -> list[Path]:
    """Every non-hidden dir holding a marker file, at any depth (.hydra/config.yaml is skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(m in filenames for m in MARKERS):
            found.append(Path(dirpath))
    # A dir with only config.yaml that has runs below it is a sweep-level config, not a run.
    has_run_below = {p for d in found for p in d.parents}
    runs = []
    for d in found:
        only_config = not (d / RESULT).exists() and not (d / FAILED).exists()
        if not (only_config and d in has_run_below):
            runs.append(d)
    return runs


def _read_json(path: Path) -> dict:
    with open(path) as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError("top level is not a JSON object")
    return obj


def _finite01(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0.0 <= v <= 1.0 else None


def _row_from_result(res: dict, run_dir: Path) -> tuple[dict | None, str | None]:
    """A results.csv row, or (None, why the result.json is unusable)."""
    err, acc = _finite01(res.get("test_error")), _finite01(res.get("test_accuracy"))
    if err is None and acc is not None:
        err = 1.0 - acc
    if acc is None and err is not None:
        acc = 1.0 - err
    if err is None:
        return None, (
            f"test_error/test_accuracy missing or not a number in [0, 1] "
            f"(test_error={res.get('test_error')!r}, test_accuracy={res.get('test_accuracy')!r})"
        )
    missing = [k for k in ("objective", "source", "n", "seed") if res.get(k) in (None, "")]
    if missing:
        return None, f"result.json lacks {', '.join(missing)}"
    row = {k: res.get(k) for k in COLUMNS}
    row.update(test_error=err, test_accuracy=acc, run_dir=res.get("run_dir") or str(run_dir))
    for k, v in sorted(res.items()):
        if k not in row and (v is None or isinstance(v, (str, int, float, bool))):
            row[k] = v
    if isinstance(res.get(POSITIONS), list):  # a value that is not an accuracy: an empty cell
        row.update({f"{POSITIONS}@{i}": _finite01(v) for i, v in enumerate(res[POSITIONS])})
    return row, None


def collect(root: str | Path) -> tuple[list[dict], list[dict]]:
    """Return (rows of finished runs, problems). Raises AnalysisError if root is absent or empty."""
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"sweep root {root} does not exist or is not a directory")
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise AnalysisError(
            f"no runs under {root}: expected run directories holding config.yaml "
            f"and result.json/failed.json, e.g. {root}/runs/<run_name>/"
        )
    rows, problems = [], []
    for d in run_dirs:
        rel = str(d.relative_to(root)) if d != root else "."
        if (d / RESULT).exists():
            try:
                row, why = _row_from_result(_read_json(d / RESULT), d)
            except (OSError, ValueError) as e:
                row, why = None, f"unreadable result.json: {e}"
            if row is not None:
                rows.append(row)
            else:
                problems.append({"status": "invalid", "run_dir": rel, "error": why})
        elif (d / FAILED).exists():
            try:
                info = _read_json(d / FAILED)
            except (OSError, ValueError) as e:
                info = {"error": f"unreadable failed.json: {e}"}
            p = {"status": "failed", "run_dir": rel}
            p.update({k: info.get(k) for k in IDENTITY})
            p["error"] = str(info.get("error", "no error message in failed.json"))
            problems.append(p)
        else:
            problems.append(
                {
                    "status": "incomplete",
                    "run_dir": rel,
                    "error": "config.yaml but no result.json/failed.json (running or killed)",
                }
            )
    rows.sort(key=lambda r: (str(r["source"]), str(r["objective"]), _num(r["n"]), _num(r["seed"])))
    return rows, problems


def _num(x: Any) -> Any:
    """Sort key that orders numbers numerically and puts strings after them."""
    try:
        return (0, float(x), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(x))


def duplicates(rows: list[dict]) -> list[tuple]:
    """(objective, source, n, seed) keys that appear more than once (e.g. a rerun with a new config)."""
    seen, dup = set(), []
    for r in rows:
        key = (r["objective"], r["source"], r["n"], r["seed"])
        if key in seen and key not in dup:
            dup.append(key)
        seen.add(key)
    return dup


def describe_problem(p: dict) -> str:
    ident = ""
    if p.get("objective") is not None:
        ident = f" ({p.get('objective')}/{p.get('source')} n={p.get('n')} seed={p.get('seed')})"
    return f"{p['status']}: {p['run_dir']}{ident}: {p['error']}"


def write_results(
    rows: list[dict], problems: list[dict], out: str | Path, root: str | Path
) -> Path:
    """Write results.csv and its sidecar <out>.problems.json (always, even when there are none)."""
    out = Path(out)
    outcomes = {str(r["run_dir"]): r[OUTCOMES] for r in rows if r.get(OUTCOMES)}
    rows = [{k: v for k, v in r.items() if k != OUTCOMES} for r in rows]
    extras = sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*COLUMNS, *extras], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    write_atomic(out, buf.getvalue())
    counts = {
        s: sum(p["status"] == s for p in problems) for s in ("failed", "incomplete", "invalid")
    }
    write_json(
        problems_path(out),
        {
            "root": str(root),
            "n_finished": len(rows),
            **{f"n_{s}": c for s, c in counts.items()},
            "problems": problems,
        },
    )
    # Always written (even empty), so a stale sidecar of an earlier collect never lingers.
    write_json(
        outcomes_path(out),
        {"schema": "eightfold.outcomes/1", "key": "run_dir", "outcomes": outcomes},
    )
    return out


def problems_path(results_csv: str | Path) -> Path:
    return Path(str(results_csv) + ".problems.json")


def outcomes_path(results_csv: str | Path) -> Path:
    return Path(str(results_csv) + ".outcomes.json")


def _read_outcomes(path: Path) -> dict[str, str]:
    """run_dir -> test_outcomes from the sidecar of results.csv ({} when there is none)."""
    side = outcomes_path(path)
    if not side.is_file():
        return {}
    try:
        obj = _read_json(side)
    except (OSError, ValueError) as e:
        raise AnalysisError(
            f"cannot read {side}: {e} (rewrite it with: eightfold-analyze collect)"
        ) from None
    out = obj.get("outcomes")
    if not isinstance(out, dict) or not all(isinstance(v, str) for v in out.values()):
        raise AnalysisError(
            f'{side} is not an outcomes sidecar ({{"outcomes": {{run_dir: "0101..."}}}}); '
            f"rewrite it with: eightfold-analyze collect"
        )
    return out


def _run_fields(r: dict, where: str, side: dict[str, str]) -> dict:
    """The optional per-run fields of a results.csv row, typed; empty cells are left out."""
    out: dict = {}
    run_dir = (r.get("run_dir") or "").strip()
    if run_dir:
        out["run_dir"] = run_dir
    for c in (*RUN_INTS, *RUN_FLOATS, *RUN_BOOLS):
        v = (r.get(c) or "").strip()
        if not v:
            continue
        if c in RUN_BOOLS:
            if v.lower() not in ("true", "false", "1", "0"):
                raise AnalysisError(f"{where}: {c}={v!r} is not true/false")
            out[c] = v.lower() in ("true", "1")
            continue
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or (c in RUN_INTS and (x != int(x) or x < 0)):
            kind = "a non-negative integer" if c in RUN_INTS else "a finite number"
            raise AnalysisError(f"{where}: {c}={v!r} is not {kind}")
        out[c] = int(x) if c in RUN_INTS else x
    o = (r.get(OUTCOMES) or "").strip() or side.get(run_dir, "")
    if o:
        if o.strip("01"):
            raise AnalysisError(
                f"{where}: test_outcomes of {run_dir or 'this run'} is not a string of 0/1 "
                f"(one per test problem)"
            )
        out[OUTCOMES] = o
    return out


def _parse_int(s: str) -> int | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v == int(v) else None


def read_results(path: str | Path) -> list[dict]:
    """Read and validate results.csv into typed rows {objective, source, n:int, seed, test_error:float},
    plus run_dir, the budget fields and test_outcomes (from the sidecar) where a run has them."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(
            f"results file {path} does not exist (make one with: eightfold-analyze collect SWEEP_ROOT -o {path})"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        raw = list(reader)
    cols = set(header)
    if "test_error" not in cols and "test_accuracy" in cols:
        cols.add("test_error")  # derived below
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise AnalysisError(
            f"{path} is missing column(s) {', '.join(missing)}; required columns: "
            f"{', '.join(REQUIRED)} (test_error may be replaced by test_accuracy)"
        )
    if not raw:
        raise AnalysisError(f"{path} has no rows: no finished runs to analyse")
    side = _read_outcomes(path)
    rows = []
    for i, r in enumerate(raw, start=2):  # line 1 is the header
        where = f"{path} line {i}"
        for c in ("objective", "source", "seed"):
            if not (r.get(c) or "").strip():
                raise AnalysisError(
                    f"{where}: empty {c}; every row needs objective, source, n, seed"
                )
        n = _parse_int(r["n"])
        if n is None or n <= 0:
            raise AnalysisError(f"{where}: n={r['n']!r} is not a positive integer data size")
        if (r.get("test_error") or "").strip():
            err = _finite01(r["test_error"])
            bad = r["test_error"]
        else:
            acc = _finite01(r.get("test_accuracy"))
            err, bad = (None if acc is None else 1.0 - acc), r.get("test_accuracy")
        if err is None:
            raise AnalysisError(
                f"{where}: test_error={bad!r} is not a finite number in [0, 1] "
                f"(NaN/empty values are not allowed; drop or rerun that run)"
            )
        seed = r["seed"].strip()
        rows.append(
            {
                "objective": r["objective"].strip(),
                "source": r["source"].strip(),
                "n": n,
                "seed": int(seed) if _parse_int(seed) is not None and "." not in seed else seed,
                "test_error": err,
                **_run_fields(r, where, side),
            }
        )
    return rows
