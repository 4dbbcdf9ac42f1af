"""One Markdown page with the tables, fits, multipliers and embedded plots."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from eightfold.runfiles import write_atomic

from .collect import describe_problem


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def fmt_ci(m: dict, name: str) -> str:
    v, lo, hi = m.get(name), m.get(f"{name}_low"), m.get(f"{name}_high")
    if v is None:
        return "—"
    if lo is None and hi is None:
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi if hi is not None else math.inf)}]"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in body
    ]


def accuracy_tables(rows: list[dict]) -> list[str]:
    """Mean ± std test accuracy (seeds) per objective x n, one table per source."""
    out = []
    for src in sorted({r["source"] for r in rows}):
        rs = [r for r in rows if r["source"] == src]
        ns = sorted({r["n"] for r in rs})
        body = []
        for obj in sorted({r["objective"] for r in rs}):
            cells = []
            for n in ns:
                acc = [1 - r["test_error"] for r in rs if r["objective"] == obj and r["n"] == n]
                if not acc:
                    cells.append("")
                elif len(acc) == 1:
                    cells.append(f"{acc[0]:.3f} (1)")
                else:
                    cells.append(f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f} ({len(acc)})")
            body.append([obj, *cells])
        out += [f"**source: {src}** — mean test accuracy ± std over seeds (number of seeds)", ""]
        out += _table(["objective", *[f"n={n}" for n in ns]], body) + [""]
    return out


def write_report(
    out_dir: str | Path,
    rows: list[dict],
    fits: dict | None,
    plots: list[Path],
    problems: list[dict] | None = None,
    fit_error: str | None = None,
    input_desc: str = "",
) -> Path:
    out_dir = Path(out_dir)
    L = ["# eightfold analysis report", ""]
    if input_desc:
        L += [f"Input: `{input_desc}` — {len(rows)} finished runs.", ""]
    if problems:
        L += [f"## Runs not in the table ({len(problems)})", ""]
        L += [f"- {describe_problem(p)}" for p in problems] + [""]
    L += ["## Test accuracy", ""] + accuracy_tables(rows)

    L += ["## Fits", ""]
    if fits is None:
        L += [f"No fits: {fit_error or 'not computed'}.", ""]
    else:
        L += [
            f"Model `{fits['model']}`, alternative `{fits['alternative']}`. "
            f"Intervals: {fits['ci_level']:.0%}, {fits['ci_method']} "
            f"({fits['n_boot']} resamples, seed {fits['seed']}).",
            "",
        ]
        body = []
        for k, m in fits["methods"].items():
            if m.get("alpha") is None:
                body.append([k, "—", "—", "—", "—", "—", f"not fitted: {m.get('fit_error')}"])
                continue
            body.append(
                [
                    k,
                    fmt_ci(m, "E"),
                    fmt_ci(m, "A"),
                    fmt_ci(m, "alpha"),
                    fmt(m["goodness_of_fit"]["rmse_log"]),
                    fmt_ci(m["power_law"], "alpha"),
                    m["preferred_model"],
                ]
            )
        L += _table(
            ["method", "E", "A", "α", "rmse (log)", "power-law α", "preferred (AIC)"], body
        ) + [""]

        base = fits["baseline"]
        L += [
            f"## Data-efficiency multipliers vs {base}",
            "",
            f"k = {fits['multiplier_definition']}",
            "",
        ]
        body = []
        for k, m in fits["methods"].items():
            if m.get("is_baseline"):
                continue
            if m.get("multiplier") is None and not m.get("multiplier_unreachable"):
                body.append([k, "—", "—", "—", m.get("multiplier_note", "")])
                continue
            flags = [
                f
                for f, on in (
                    ("extrapolated", m.get("multiplier_extrapolated")),
                    ("unreachable by baseline", m.get("multiplier_unreachable")),
                )
                if on
            ]
            flags.append(f"basis: {m.get('multiplier_basis')}")
            pl = m.get("power_law", {})
            k_txt = (
                "∞ (baseline never reaches it)"
                if m.get("multiplier") is None
                else fmt_ci(m, "multiplier") + "×"
            )
            body.append(
                [
                    k,
                    k_txt,
                    fmt(m.get("multiplier_p_gt_1"), 2),
                    fmt_ci(pl, "multiplier") + "×" if pl.get("multiplier") is not None else "—",
                    ", ".join(flags) + f"; sizes {m.get('multiplier_sizes')}",
                ]
            )
        L += _table(["method", "multiplier [CI]", "P(k>1)", "pure power law", "notes"], body) + [""]
        for k, m in fits["methods"].items():
            if m.get("is_baseline") or not m.get("multipliers"):
                continue
            L += [f"<details><summary>{k}: multiplier per data size</summary>", ""]
            body = [
                [
                    str(p["n"]),
                    fmt(p["err_mean"]),
                    fmt(p.get("err_fit")),
                    fmt(p.get("n_baseline")),
                    fmt_ci(p, "multiplier") if "multiplier" in p else "—",
                    fmt_ci(p, "multiplier_measured"),
                    "extrapolated" if p.get("extrapolated", p["extrapolated_measured"]) else "",
                ]
                for p in m["multipliers"]
            ]
            L += _table(
                ["n", "err (mean)", "err (fit)", f"n_{base}", "k (fit)", "k (measured)", ""], body
            )
            L += ["", "</details>", ""]

    pngs = [p for p in plots if p.suffix == ".png"]
    if pngs:
        L += ["## Plots", ""]
        for p in pngs:
            rel = os.path.relpath(p, out_dir)
            L += [
                f"![{p.stem}]({rel})  ",
                f"[{p.stem} (PDF)]({os.path.relpath(p.with_suffix('.pdf'), out_dir)})",
                "",
            ]
    if fits is not None:
        L += [
            "## Method",
            "",
            f"- Fit: {fits['fit_method']}.",
            f"- Huber delta: {fits['huber_delta']}.",
            f"- Zero errors floored at {fits['error_floor']}.",
            f"- Intervals: {fits['ci_method']}.",
            "",
        ]
    return write_atomic(out_dir / "report.md", "\n".join(L) + "\n")
