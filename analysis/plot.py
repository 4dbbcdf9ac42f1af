"""Figures: scaling curves, multipliers, residuals. Each is written as PNG and PDF."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from eightfold.runfiles import write_atomic  # noqa: E402

KNOWN_ORDER = ("sft", "rft", "dpo", "step_dpo")


def colours(objectives: list[str], baseline: str | None = None) -> dict[str, str]:
    """Stable objective -> colour map: baseline first, then the paper's order, then the rest."""
    rest = sorted(set(objectives) - set(KNOWN_ORDER) - {baseline})
    order = [
        o for o in ([baseline] if baseline else []) + list(KNOWN_ORDER) + rest if o in objectives
    ]
    order = list(dict.fromkeys(order))
    cmap = plt.get_cmap("tab10")
    return {o: cmap(i % 10) for i, o in enumerate(order)}


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        paths.append(write_atomic(out_dir / f"{name}.{ext}", buf.getvalue()))
    plt.close(fig)
    return paths


def _by_method(rows: list[dict]) -> dict[tuple[str, str], dict[int, list[float]]]:
    out: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        out.setdefault((r["objective"], r["source"]), {}).setdefault(r["n"], []).append(
            r["test_error"]
        )
    return out


def _panels(n: int, rows: int = 1, w: float = 5.2, h: float = 4.0):
    fig, axes = plt.subplots(rows, n, figsize=(w * n, h * rows), squeeze=False)
    return fig, axes


def scaling_plot(rows: list[dict], fits: dict | None, out_dir: Path) -> list[Path]:
    """Log-log test error vs n: seed points, mean +- std, fitted curve with bootstrap band; one panel per source."""
    data = _by_method(rows)
    sources = sorted({s for _, s in data})
    baseline = fits["baseline"] if fits else None
    col = colours(sorted({o for o, _ in data}), baseline)
    methods = (fits or {}).get("methods", {})
    fig, axes = _panels(len(sources))
    for ax, src in zip(axes[0], sources):
        present = [o for o in col if (o, src) in data]
        for i, obj in enumerate(present):
            by_n = data[(obj, src)]
            ns = np.array(sorted(by_n), dtype=float)
            # Dodge each objective a little along the log-n axis so bars at one n do not overlap.
            dodge = 1.0 + 0.025 * (i - (len(present) - 1) / 2)
            mean = np.array([np.mean(by_n[n]) for n in sorted(by_n)])
            std = np.array(
                [np.std(by_n[n], ddof=1) if len(by_n[n]) > 1 else 0.0 for n in sorted(by_n)]
            )
            c = col[obj]
            for n in sorted(by_n):  # individual seeds, faint, zeros cannot go on a log axis
                e = np.array(by_n[n])
                ax.scatter(
                    np.full(len(e[e > 0]), n * dodge), e[e > 0], s=8, color=c, alpha=0.3, lw=0
                )
            m = methods.get(f"{obj}/{src}", {})
            label = obj
            if m.get("alpha") is not None:
                label += f"  (α={m['alpha']:.2f}"
                if not m.get("is_baseline") and m.get("multiplier") is not None:
                    label += f", {m['multiplier']:.2g}× {baseline}"
                label += ")"
            lower = np.minimum(std, mean * 0.95)  # keep the bar above zero on a log axis
            ax.errorbar(
                ns * dodge,
                mean,
                yerr=[lower, std],
                fmt="o",
                ms=5,
                color=c,
                capsize=3,
                label=label,
                zorder=3,
            )
            curve = m.get("curve")
            if curve:
                cn, ce = np.array(curve["n"], dtype=float), np.array(curve["err"], dtype=float)
                inside = (cn >= ns.min() * (1 - 1e-9)) & (cn <= ns.max() * (1 + 1e-9))
                ax.plot(cn[inside], ce[inside], "-", color=c, lw=1.6)
                for part in (cn < ns.min(), cn > ns.max()):  # beyond the method's own sizes: dashed
                    if part.any():
                        ax.plot(
                            cn[part | _edge(part, inside)],
                            ce[part | _edge(part, inside)],
                            "--",
                            color=c,
                            lw=1.2,
                        )
                lo, hi = (
                    np.array([np.nan if v is None else v for v in curve[k]], dtype=float)
                    for k in ("err_low", "err_high")
                )
                if np.isfinite(lo).any():
                    ax.fill_between(cn, lo, hi, color=c, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax)
        all_n = [n for o in present for n in data[(o, src)]]
        # Label exactly the measured sizes, in plain numbers (log minor labels collide).
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(set(all_n))))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if min(all_n) == max(all_n):  # a single size: centre it rather than autoscale to a decade
            ax.set_xlim(min(all_n) / 2, min(all_n) * 2)
        ax.set_xlabel("training examples n")
        metric = (fits or {}).get("metric", "test_error")  # eightfold-analyze --metric
        ax.set_ylabel("test error (1 − accuracy)" if metric == "test_error" else f"1 − {metric}")
        ax.set_title(f"source: {src}")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    band = f"; band: {fits['ci_level']:.0%} bootstrap" if fits and fits.get("n_boot") else ""
    line = f", line = E + A·n^−α fit{band}" if fits else " (no fitted curves)"
    fig.suptitle(f"Scaling: points = mean ± std over seeds{line}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, "scaling")


class _PlainLog(ticker.LogFormatter):
    """LogFormatter's choice of which ticks to label, but printed as 0.3 rather than 3e-01."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:.3g}"


def _plain_ticks(ax) -> None:
    # Error axes often span under a decade: label the minor ticks too, in plain numbers.
    ax.yaxis.set_major_formatter(_PlainLog(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _edge(part: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The inside point next to a dashed segment, so solid and dashed lines join up."""
    edge = np.zeros_like(part)
    idx = np.flatnonzero(inside)
    if idx.size and part.any():
        edge[idx[0] if np.flatnonzero(part)[0] < idx[0] else idx[-1]] = True
    return edge


def _v(x) -> float:
    return np.nan if x is None else float(x)


def multiplier_plot(fits: dict, out_dir: Path) -> list[Path]:
    """Left: summary multiplier per method with CI; right: k(n) per size. Dashed line at 1 = parity."""
    baseline = fits["baseline"]
    ms = {
        k: m
        for k, m in fits["methods"].items()
        if not m.get("is_baseline") and m.get("multipliers")
    }
    if not ms:
        return []
    col = colours(sorted({m["objective"] for m in fits["methods"].values()}), baseline)
    sources = sorted({m["source"] for m in ms.values()})
    keys = sorted(ms, key=lambda k: (ms[k]["source"], list(col).index(ms[k]["objective"])))
    w_sum = max(4.5, 0.8 * len(keys))  # room for one tick label per method
    fig, axes = plt.subplots(
        1,
        1 + len(sources),
        figsize=(w_sum + 5.0 * len(sources), 4.0),
        squeeze=False,
        gridspec_kw={"width_ratios": [w_sum] + [5.0] * len(sources)},
    )
    ax = axes[0][0]
    vals = np.array(
        [
            _v(ms[k].get(f))
            for k in keys
            for f in ("multiplier", "multiplier_low", "multiplier_high")
        ]
    )
    vals = vals[np.isfinite(vals) & (vals > 0)]
    bottom, top = min([0.5, *vals]) / 1.5, max([2.0, *vals]) * 1.5
    ax.set_ylim(
        bottom, top * 2
    )  # explicit: annotations alone would leave a log axis without limits
    for i, k in enumerate(keys):
        m, c = ms[k], col[ms[k]["objective"]]
        v, lo, hi = (
            _v(m.get("multiplier")),
            _v(m.get("multiplier_low")),
            _v(m.get("multiplier_high")),
        )
        if not np.isfinite(v):
            txt = "∞\n(unreachable)" if m.get("multiplier_unreachable") else "n/a"
            ax.plot([i], [top], "^" if m.get("multiplier_unreachable") else "x", color=c, ms=9)
            ax.annotate(
                txt,
                (i, top),
                xytext=(0, -24),
                textcoords="offset points",
                ha="center",
                color=c,
                fontsize=8,
            )
            continue
        hollow = m.get("multiplier_extrapolated")
        yerr = None
        if np.isfinite(lo) and np.isfinite(hi):
            yerr = [[max(0.0, v - lo)], [max(0.0, hi - v)]]  # a bound a hair past v: no bar
        elif np.isfinite(lo):  # upper end unreachable in some replicates
            yerr = [[max(0.0, v - lo)], [0]]
            ax.annotate(
                "↑∞", (i, v), xytext=(6, 0), textcoords="offset points", color=c, fontsize=8
            )
        ax.errorbar(
            [i], [v], yerr=yerr, fmt="o", ms=8, capsize=5, color=c, mfc="white" if hollow else c
        )
        ax.annotate(f"{v:.2g}×", (i, v), xytext=(8, 4), textcoords="offset points", fontsize=8)
    ax.axhline(1.0, ls="--", color="grey", lw=1)
    ax.set_yscale("log")
    _plain_ticks(ax)
    # one source: the objective alone (the panel title names the source); long names slant
    labels = [ms[k]["objective"] if len(sources) == 1 else k.replace("/", "\n") for k in keys]
    ax.set_xticks(range(len(keys)), labels, fontsize=8, rotation=25, ha="right")
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylabel(f"data multiplier vs {baseline}  (×)")
    ax.set_title(f"summary, {fits['ci_level']:.0%} CI (hollow = extrapolated)", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.25)

    series, ylim = [], {}  # ylim: per-size panel -> finite (min, max); inf must not set the scale
    for k in keys:
        m = ms[k]
        per = m["multipliers"]
        fitted = "multiplier" in per[0]
        key = "multiplier" if fitted else "multiplier_measured"
        arr = {
            name: np.array([_v(p[f"{key}{suf}"]) for p in per])
            for name, suf in (("v", ""), ("lo", "_low"), ("hi", "_high"))
        }
        arr["n"] = np.array([p["n"] for p in per], dtype=float)
        arr["ex"] = np.array(
            [p["extrapolated" if fitted else "extrapolated_measured"] for p in per]
        )
        ax2 = axes[0][1 + sources.index(m["source"])]
        series.append((m, fitted, ax2, arr))
        # Scale to the estimates and lower bounds; wide upper bounds may run off the top.
        low = np.concatenate([arr[a][np.isfinite(arr[a])] for a in ("v", "lo")])
        top = arr["v"][np.isfinite(arr["v"])]
        lo0, hi0 = ylim.get(ax2, (1.0, 2.0))
        ylim[ax2] = (min([lo0, *low]), max([hi0, *(top * 3)]))
    for m, fitted, ax2, a in series:
        c = col[m["objective"]]
        ax2.plot(
            a["n"],
            a["v"],
            "-",
            color=c,
            lw=1.2,
            label=f"{m['objective']} ({'fit' if fitted else 'measured'})",
        )
        if np.isfinite(a["lo"]).any():
            # JSON null upper bound with a lower bound = unbounded (baseline never gets there in
            # some replicates): run the band off the top of the panel.
            hi = np.where(np.isnan(a["hi"]) & np.isfinite(a["lo"]), ylim[ax2][1] * 10, a["hi"])
            ax2.fill_between(a["n"], a["lo"], hi, color=c, alpha=0.15, lw=0)
        ax2.scatter(a["n"][~a["ex"]], a["v"][~a["ex"]], color=c, s=25, zorder=3)
        ax2.scatter(
            a["n"][a["ex"]], a["v"][a["ex"]], facecolor="white", edgecolor=c, s=25, zorder=3
        )
    for src, ax2 in zip(sources, axes[0][1:]):
        if ax2 in ylim:
            ax2.set_ylim(ylim[ax2][0] / 1.5, ylim[ax2][1] * 1.5)
        ax2.axhline(1.0, ls="--", color="grey", lw=1)
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        _plain_ticks(ax2)
        ax2.set_xlabel("method's training examples n")
        ax2.set_ylabel(f"k(n) = n_{baseline}(err(n)) / n")
        ax2.set_title(f"{src}: per data size (hollow = extrapolated)", fontsize=10)
        ax2.grid(True, which="both", alpha=0.25)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir, "multipliers")


def residual_plot(rows: list[dict], fits: dict, out_dir: Path) -> list[Path]:
    """Log residuals (fit − data) vs n for both models: a trend means the functional form is off."""
    floor = float(fits.get("error_floor") or 0.0)
    methods = {k: m for k, m in fits["methods"].items() if m.get("alpha") is not None}
    if not methods:
        return []
    data = _by_method(rows)
    sources = sorted({m["source"] for m in methods.values()})
    col = colours(sorted({o for o, _ in data}), fits["baseline"])
    fig, axes = _panels(len(sources), rows=2, h=3.2)
    for j, src in enumerate(sources):
        for i, (label, get) in enumerate(
            (
                ("E + A·n^−α", lambda m: (m["E"], m["A"], m["alpha"])),
                ("A·n^−α (E = 0)", lambda m: (0.0, m["power_law"]["A"], m["power_law"]["alpha"])),
            )
        ):
            ax = axes[i][j]
            for m in sorted(methods.values(), key=lambda m: list(col).index(m["objective"])):
                if m["source"] != src:
                    continue
                E, A, a = get(m)
                by_n = data[(m["objective"], src)]
                ns = np.array(sorted(by_n), dtype=float)
                res = [
                    np.log(E + A * n**-a) - np.log(np.maximum(by_n[n], floor)) for n in sorted(by_n)
                ]
                c = col[m["objective"]]
                for n, r in zip(ns, res):
                    ax.scatter(np.full(len(r), n), r, s=10, color=c, alpha=0.5, lw=0)
                ax.plot(
                    ns, [np.mean(r) for r in res], "-o", ms=3, color=c, lw=1, label=m["objective"]
                )
            ax.axhline(0, color="grey", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_title(f"{src}: residuals of {label}", fontsize=9)
            ax.set_xlabel("training examples n")
            ax.set_ylabel("log(fit) − log(error)")
            ax.grid(True, which="both", alpha=0.25)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "residuals")


def plot_all(rows: list[dict], fits: dict | None, out_dir: str | Path) -> list[Path]:
    """Write every figure that the inputs allow; without fits only the scaling points are drawn."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = scaling_plot(rows, fits, out_dir)
    if fits:
        paths += multiplier_plot(fits, out_dir)
        paths += residual_plot(rows, fits, out_dir)
    return paths
