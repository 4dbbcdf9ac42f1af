"""Data-efficiency multipliers: how much more data the baseline needs to match method X.

For a baseline fit err_b(n) = E_b + A_b n^-alpha_b the inverse is
    n_b(e) = (A_b / (e - E_b))^(1/alpha_b)      defined for e > E_b,
and the multiplier of X at its data size n is k(n) = n_b(err_X(n)) / n.
k = 4 reads "X at n is as good as the baseline at 4n". If err_X(n) <= E_b the baseline never
gets there (k = inf, "unreachable"). If n_b falls outside the sizes the baseline was actually
run at, k leans on the fitted curve beyond the data ("extrapolated").

Every function broadcasts, so the same code handles the point estimate (shape (J,)) and the
bootstrap replicates (shape (B, J)) with the baseline parameters shaped (B, 1).
"""

from __future__ import annotations

import warnings

import numpy as np

SUMMARY = (
    "geometric mean of k(n) over the method's measured sizes n whose matched baseline size "
    "n_b lies inside the baseline's measured n range; if there are none, over all of the "
    "method's sizes, flagged extrapolated. The set of sizes is fixed by the point estimate "
    "and reused in every bootstrap replicate."
)
_BIG = 1e300  # stands in for +inf inside quantiles (linear interpolation of inf gives nan)


def n_baseline(err, E, A, alpha) -> np.ndarray:
    """Baseline data size that reaches error `err`; +inf where err <= E (never reached)."""
    err, E, A, alpha = np.broadcast_arrays(
        *(np.asarray(v, dtype=float) for v in (err, E, A, alpha))
    )
    gap = err - E
    ok = (gap > 0) & (A > 0) & (alpha > 0)
    with np.errstate(all="ignore"):
        nb = np.where(
            ok,
            (np.where(ok, A, 1.0) / np.where(ok, gap, 1.0)) ** (1.0 / np.where(ok, alpha, 1.0)),
            np.inf,
        )
    return np.where(np.isnan(err), np.nan, nb)


def geometric_mean(k: np.ndarray, include: np.ndarray) -> np.ndarray:
    """Geometric mean over the last axis restricted to `include`; inf if any included k is inf."""
    with np.errstate(divide="ignore"):
        logs = np.log(np.compress(include, k, axis=-1))
    return np.exp(logs.mean(axis=-1)) if logs.shape[-1] else np.full(k.shape[:-1], np.nan)


def interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0; +inf survives, nan (failed replicates) is ignored."""
    v = np.where(np.isposinf(values), _BIG, values)
    q = [(1 - level) / 2, (1 + level) / 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices -> nan -> JSON null
        lo, hi = np.nanquantile(v, q, axis=0) if v.shape[0] else (np.nan * v.sum(0),) * 2
    lo, hi = (np.where(x >= _BIG / 10, np.inf, x) for x in (lo, hi))
    return lo, hi


def compare(
    n: np.ndarray,
    err: np.ndarray,
    err_boot: np.ndarray | None,
    base: dict,
    base_boot: dict | None,
    base_range: tuple[float, float],
    level: float,
) -> dict:
    """Per-size and summary multipliers of a method (errors `err` at sizes `n`) vs a baseline fit.

    base/base_boot hold E, A, alpha (scalars / (B,) arrays of the paired bootstrap replicates).
    """
    nb = n_baseline(err, base["E"], base["A"], base["alpha"])
    k = nb / n
    lo_n, hi_n = base_range
    unreachable = ~np.isfinite(nb)
    extrapolated = unreachable | (nb < lo_n * (1 - 1e-9)) | (nb > hi_n * (1 + 1e-9))
    include = ~extrapolated
    summary_extrapolated = not include.any()
    if summary_extrapolated:
        include = np.ones_like(include)
    summary = float(geometric_mean(k, include))
    out = {
        "k": k,
        "n_baseline": nb,
        "extrapolated": extrapolated,
        "unreachable": unreachable,
        "summary": summary,
        "summary_sizes": n[include],
        "summary_extrapolated": summary_extrapolated,
        "summary_unreachable": bool(unreachable[include].any()),
        "k_low": np.full_like(k, np.nan),
        "k_high": np.full_like(k, np.nan),
        "summary_low": np.nan,
        "summary_high": np.nan,
        "p_gt_1": np.nan,
    }
    if err_boot is not None and base_boot is not None and err_boot.shape[0]:
        col = {key: np.asarray(base_boot[key])[:, None] for key in ("E", "A", "alpha")}
        kb = n_baseline(err_boot, col["E"], col["A"], col["alpha"]) / n
        sb = geometric_mean(kb, include)
        out["k_low"], out["k_high"] = interval(kb, level)
        lo, hi = interval(sb[:, None], level)
        out["summary_low"], out["summary_high"] = float(lo[0]), float(hi[0])
        ok = ~np.isnan(sb)
        out["p_gt_1"] = float((sb[ok] > 1).mean()) if ok.any() else np.nan
    return out
