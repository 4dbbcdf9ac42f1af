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


def seed_limits(rows: list[dict]) -> list[str]:
    """What one seed cannot show: a section only when some (objective, source, n) ran one seed."""
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["objective"], r["source"], r["n"]), []).append(1 - r["test_error"])
    single = sorted(k for k, acc in cells.items() if len(acc) == 1)
    if not single:
        return []
    names = ", ".join(f"{o} n={n}" for o, _, n in single[:8]) + (" ..." if len(single) > 8 else "")
    L = [
        "## What one seed cannot show",
        "",
        f"{len(single)} of {len(cells)} (objective, data size) cells ran a single seed ({names}).",
        "",
        "- Their intervals resample test problems or fit residuals, never training: they leave "
        "out how much a second seed (another data draw, initialisation and batch order) would "
        "move the accuracy.",
    ]
    spread = sorted((float(np.std(acc, ddof=1)), k) for k, acc in cells.items() if len(acc) >= 2)
    if spread:
        sd, (o, _, n) = spread[-1]
        med = float(np.median([x for x, _ in spread]))
        L.append(
            f"- Where these runs have several seeds, the seed-to-seed standard deviation of test "
            f"accuracy is {100 * med:.1f} points (median over {len(spread)} cells), up to "
            f"{100 * sd:.1f} ({o} n={n}): a one-seed difference smaller than that is not evidence."
        )
    else:
        L.append(
            "- No cell here has several seeds, so the seed-to-seed spread is not measured by "
            "these runs at all."
        )
    L += [
        "- A multiplier whose interval excludes 1 on one seed is a lead, not a finding: run the "
        "study with its seeds (the sweep's `seed` axis) for an interval over seeds.",
        "",
    ]
    return L


def _signed(x) -> str:
    return "—" if x is None else f"{x:+.3f}"


def _examples(items: list[dict], k: int = 6) -> str:
    ids = [f"{f['objective']}/{f['source']} n={f['n']} seed={f['seed']}" for f in items[:k]]
    return "; ".join(ids) + (f"; … {len(items) - k} more" if len(items) > k else "")


def flag_section(paired: dict) -> list[str]:
    """Runs on pi_sft that did not train (paired.trained): which, and why."""
    flagged, ms, mp = paired["not_trained"], paired["min_steps"], paired["min_pairs"]
    L = [f"## Runs that did not train ({len(flagged)})", ""]
    rule = (
        f"fewer than {ms} optimizer steps (--min-steps), fewer than {mp} pairs/items "
        "(--min-pairs), or too few pairs for the step budget (more passes over them than "
        "objective.max_epochs)"
    )
    if not flagged:
        return L + [f"None: no run on pi_sft trained on {rule}.", ""]
    L += [
        f"A run on pi_sft is flagged when it trained on {rule}. Flagged runs are left out of the "
        "fits and the multipliers; the paired tests leave out only those below --min-steps or "
        "--min-pairs (many passes over few pairs is still training, and how such a run compares "
        "with its control is the measurement). Their accuracies stay in the table above.",
        "",
    ]
    body = [
        [
            str(f["objective"]),
            str(f["source"]),
            str(f["n"]),
            str(f["seed"]),
            "—" if f.get("train_steps") is None else str(f["train_steps"]),
            "—" if f.get("budget_items") is None else str(f["budget_items"]),
            fmt(f.get("budget_epochs")),
            f["reason"],
        ]
        for f in flagged
    ]
    return (
        L
        + _table(
            ["objective", "source", "n", "seed", "steps", "pairs/items", "passes", "why"], body
        )
        + [""]
    )


def paired_section(paired: dict) -> list[str]:
    """Objective vs matched control and vs the baseline on the same test problems, per n."""
    L = ["## Paired tests at equal n", ""]
    comps, base = paired["comparisons"], paired["baseline"]
    done = [c for c in comps if c.get("n_seeds")]
    skipped = paired["skipped"]
    if not done:
        if any("test_outcomes" in s["reason"] for s in skipped):
            why = "no two comparable runs have per-problem test outcomes (test_outcomes in result.json)"
        elif comps:
            why = "no objective shares a seed that trained with its control or with " + base
        else:
            why = f"no objective ran at the same source and n as its matched control or {base}"
        L += [f"No paired tests: {why}.", ""]
    else:
        boot = (
            f"{paired['ci_level']:.0%} paired bootstrap over test problems within each seed "
            f"({paired['n_boot']} resamples, seed {paired['seed']})"
            if paired["n_boot"]
            else "no intervals (--n-boot 0)"
        )
        pairs = paired.get("requested") or []
        asked = (
            " (and " + ", ".join(f"{a} vs {b}" for a, b in pairs) + ", asked for with --compare)"
            if pairs
            else ""
        )
        L += [
            "Each objective against its matched control and against "
            f"{base}{asked}, on the same test problems and seeds. Δ = accuracy(objective) − "
            f"accuracy(reference), the mean over seeds; interval: {boot}. McNemar: exact "
            "two-sided p on the discordant problems summed over seeds; +/− = problems only the "
            "objective / only the reference got right. Runs that did not train are left out.",
            "",
        ]
        cells = sorted({(str(c["source"]), c["n"]) for c in done}, key=lambda x: (x[0], x[1]))
        for src, n in cells:
            body = []
            for c in done:
                if (str(c["source"]), c["n"]) != (src, n):
                    continue
                ci = (
                    f" [{_signed(c['diff_low'])}, {_signed(c['diff_high'])}]"
                    if c.get("diff_low") is not None
                    else ""
                )
                body.append(
                    [
                        c["objective"],
                        f"{c['reference']} ({c['kind']})",
                        f"{c['accuracy']:.3f} vs {c['reference_accuracy']:.3f}",
                        _signed(c["diff"]) + ci,
                        fmt(c["p_mcnemar"], 2),
                        f"+{c['objective_only']} / −{c['reference_only']}",
                        f"{c['n_seeds']} ({c['n_problems']} problems)",
                        "; ".join(c["notes"]),
                    ]
                )
            L += [f"**source: {src}, n = {n}**", ""]
            L += _table(
                [
                    "objective",
                    "vs",
                    "accuracy",
                    "Δ accuracy [CI]",
                    "McNemar p",
                    "+ / −",
                    "seeds",
                    "notes",
                ],
                body,
            ) + [""]
        # Pairs with nothing to compare, one line per pair and reason over all sizes.
        missing: dict[tuple, list] = {}
        for c in comps:
            if not c.get("n_seeds"):
                why = sorted({x.split(": ", 1)[-1] for x in c["notes"]}) or ["no seeds"]
                key = (str(c["source"]), c["objective"], c["reference"], "; ".join(why))
                missing.setdefault(key, []).append(c["n"])
        if missing:
            L += ["Pairs with no seed to compare:", ""]
            L += [
                f"- {src}: {obj} vs {ref} at n = {', '.join(map(str, ns))}: {why}"
                for (src, obj, ref, why), ns in missing.items()
            ] + [""]
    if skipped:
        by: dict[str, list[dict]] = {}
        for s in skipped:
            by.setdefault(s["reason"], []).append(s)
        L += ["Runs not in the paired tests (details in paired.json):", ""]
        L += [f"- {why}: {len(ss)} run(s): {_examples(ss)}" for why, ss in by.items()] + [""]
    return L


def _pass_ks(raw_rows: list[dict]) -> list[str]:
    """The test_pass@k columns that some run filled, by k."""
    ks = {c for r in raw_rows for c, v in r.items() if c.startswith("test_pass@") and v}
    return sorted(ks, key=lambda c: int(c.split("@")[1]))


def pass_k_tables(raw_rows: list[dict]) -> list[str]:
    """Mean pass@k per objective x n (runs with eval.pass_k set), one table per source and k."""
    columns = _pass_ks(raw_rows)
    if not columns:
        return []
    first = next(r for r in raw_rows if r.get(columns[0]) not in ("", None))
    how = (
        f"{first.get('pass_k_n', '?')} samples per test problem at temperature "
        f"{first.get('pass_k_temperature', '?')}, top_p {first.get('pass_k_top_p', '?')}"
    )
    out = [
        "## pass@k",
        "",
        f"Unbiased estimator 1 - C(n-c, k) / C(n, k) from {how}; mean over seeds (number of "
        "seeds). Fit it with `--metric test_pass@K`.",
        "",
    ]
    for src in sorted({r["source"] for r in raw_rows}):
        rs = [r for r in raw_rows if r["source"] == src]
        ns = sorted({int(float(r["n"])) for r in rs})
        for c in columns:
            body = []
            for obj in sorted({r["objective"] for r in rs}):
                cells = []
                for n in ns:
                    v = [
                        float(r[c])
                        for r in rs
                        if r["objective"] == obj and int(float(r["n"])) == n and r.get(c)
                    ]
                    cells.append(f"{np.mean(v):.3f} ({len(v)})" if v else "")
                body.append([obj, *cells])
            out += [f"**source: {src}** — {c}", ""]
            out += _table(["objective", *[f"n={n}" for n in ns]], body) + [""]
    return out


def _positions(raw_rows: list[dict]) -> list[str]:
    """The test_position_accuracy@i columns that some run filled, by i."""
    cols = {c for r in raw_rows for c, v in r.items() if c.startswith("test_position_accuracy@")}
    cols = {c for c in cols if any(r.get(c) not in ("", None) for r in raw_rows)}
    return sorted(cols, key=lambda c: int(c.split("@")[1]))


def position_tables(raw_rows: list[dict]) -> list[str]:
    """The star graph's Clever-Hans diagnostic, per run: teacher-forced accuracy of each path
    node (result.json's test_position_accuracy), one table per source."""
    columns = _positions(raw_rows)
    if not columns:
        return []
    out = [
        "## Accuracy per path position",
        "",
        "Teacher-forced accuracy of each node of the answer path on the test graphs, given the "
        "right nodes before it (node 0 is the source). The Clever-Hans signature: near 1 after "
        "node 1, near 1/degree at node 1, the only node that needs planning back from the goal "
        "(docs/testbed.md#the-star-graph).",
        "",
    ]
    for src in sorted({r["source"] for r in raw_rows}):
        rs = [r for r in raw_rows if r["source"] == src and any(r.get(c) for c in columns)]
        if not rs:
            continue
        body = [
            [
                str(r["objective"]),
                str(r["n"]),
                str(r["seed"]),
                *[f"{float(r[c]):.3f}" if r.get(c) not in ("", None) else "—" for c in columns],
            ]
            for r in rs
        ]
        out += [f"**source: {src}**", ""]
        out += _table(
            ["objective", "n", "seed", *[f"node {c.split('@')[1]}" for c in columns]], body
        ) + [""]
    return out


def write_report(
    out_dir: str | Path,
    rows: list[dict],
    fits: dict | None,
    plots: list[Path],
    problems: list[dict] | None = None,
    fit_error: str | None = None,
    input_desc: str = "",
    paired: dict | None = None,
    raw_rows: list[dict] | None = None,
) -> Path:
    out_dir = Path(out_dir)
    L = ["# eightfold analysis report", ""]
    if input_desc:
        L += [f"Input: `{input_desc}` — {len(rows)} finished runs.", ""]
    if problems:
        L += [f"## Runs not in the table ({len(problems)})", ""]
        L += [f"- {describe_problem(p)}" for p in problems] + [""]
    L += ["## Test accuracy", ""] + accuracy_tables(rows)
    L += pass_k_tables(raw_rows or [])
    L += position_tables(raw_rows or [])
    if paired is not None:
        L += flag_section(paired) + paired_section(paired)

    L += ["## Fits", ""]
    if fits is None:
        L += [f"No fits: {fit_error or 'not computed'}.", ""]
    else:
        L += [
            f"Fitted: {fits.get('error', 'test_error = 1 - test_accuracy (greedy)')}. "
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
            left_out = (
                f"{m['n_not_trained']} run(s) that did not train left out"
                if m.get("n_not_trained") and m.get("n_runs")
                else ""
            )
            if m.get("multiplier") is None and not m.get("multiplier_unreachable"):
                note = "; ".join(x for x in (m.get("multiplier_note", ""), left_out) if x)
                body.append([k, "—", "—", "—", note])
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
            if m.get("multiplier_interval_basis") == "test_problems":
                flags.append("interval: test problems only (one seed)")
            if left_out:
                flags.append(left_out)
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
        L += seed_limits(rows)
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
