"""Fit test_error(n) = E + A * n^(-alpha) per (objective, source), with paired bootstrap CIs.

Why this way (docs/analysis.md#the-fit-and-why):
- The objective is Huber on log-space residuals log(err_hat) - log(err): errors are relative, so a
  0.40 -> 0.38 change counts like 0.04 -> 0.038, and one diverged seed cannot drag the curve.
- Variable projection: for a fixed alpha the model is linear in (E, A), so we profile them out
  with an exact 2-variable non-negative least-squares solve (Gauss-Newton/IRLS steps on the log
  Huber loss) and search alpha on a dense log-spaced grid, then refine. No start-point lottery,
  unlike a single curve_fit. The point estimate gets a final L-BFGS-B polish.
- Everything is vectorised over bootstrap replicates: a replicate is a weight vector (how often
  each run was drawn) or a resampled error vector, so 1000 refits cost a few numpy passes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from . import multiplier as mult
from .common import AnalysisError, jsonable

MODEL = "test_error(n) = E + A * n^(-alpha), E >= 0, A > 0, alpha > 0"
POWER_LAW = "test_error(n) = A * n^(-alpha)  (E = 0)"
ALPHA_MIN, ALPHA_MAX = 0.01, 3.0
COARSE = np.geomspace(ALPHA_MIN, ALPHA_MAX, 48)  # ~13% steps in alpha ...
FINE = 13  # ... then 13 points across the best two coarse steps (~2%), then a parabola in log alpha
GN_ITERS = 8
CHUNK = 128  # bootstrap replicates per numpy pass (keeps arrays in cache)
MIN_SIZES = 3  # three parameters need three distinct data sizes
HUBER_K = 1.345  # classical Huber tuning: 95% efficiency under Gaussian noise
DELTA_FLOOR = 1e-3  # Epoch AI's delta; used when the pilot residuals are ~0 (noise-free data)
CURVE_POINTS = 60


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    """One method's runs, sorted by (n, seed)."""

    objective: str
    source: str
    n: np.ndarray
    seed: list
    err: np.ndarray  # zeros floored to error_floor
    n_floored: int = 0
    all_zero: bool = False
    test_size: np.ndarray | None = None  # test problems behind each run's error (nan: unknown)

    @property
    def key(self) -> str:
        return f"{self.objective}/{self.source}"

    @property
    def sizes(self) -> np.ndarray:
        return np.unique(self.n)

    def size_means(self, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Weighted mean error at each size; y, w (B, N) -> (B, S)."""
        return np.stack(
            [
                (w[:, self.n == s] * y[:, self.n == s]).sum(1) / w[:, self.n == s].sum(1)
                for s in self.sizes
            ],
            axis=1,
        )


def group(rows: list[dict], error_floor: float) -> dict[str, Data]:
    by: dict[tuple, list] = {}
    for r in rows:
        by.setdefault((r["objective"], r["source"]), []).append(r)
    out = {}
    for (obj, src), rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: (r["n"], str(r["seed"])))
        err = np.array([r["test_error"] for r in rs], dtype=float)
        d = Data(
            obj,
            src,
            np.array([r["n"] for r in rs], dtype=float),
            [r["seed"] for r in rs],
            np.maximum(err, error_floor),
            int((err < error_floor).sum()),
            bool((err == 0).all()),
            np.array([r.get("test_size") or np.nan for r in rs], dtype=float),
        )
        out[d.key] = d
    return out


# ----------------------------------------------------------------------------- core solvers


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    with np.errstate(invalid="ignore"):
        return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _huber_weight(r: np.ndarray, delta: float) -> np.ndarray:
    """IRLS weight psi(r)/r of the Huber loss."""
    a = np.abs(r)
    with np.errstate(divide="ignore"):
        return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))


def nnls2(x: np.ndarray, t: np.ndarray, om: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact min_{E,A >= 0} sum om*(E + A*x - t)^2 over the last axis, vectorised.

    A convex QP in two variables: the unconstrained solution if it is feasible, else the better
    of the two clipped one-variable solutions on the boundary rays (what scipy's nnls would
    return, but for millions of tiny problems at once).
    """
    s0, s1, s2 = om.sum(-1), (om * x).sum(-1), (om * x * x).sum(-1)
    t0, t1 = (om * t).sum(-1), (om * x * t).sum(-1)
    det = s0 * s2 - s1 * s1
    with np.errstate(all="ignore"):
        E, A = (s2 * t0 - s1 * t1) / det, (s0 * t1 - s1 * t0) / det
        a_only = np.maximum(t1 / s2, 0.0)
        e_only = np.maximum(t0 / s0, 0.0)
    interior = (det > 1e-12 * s0 * s2) & (E >= 0) & (A >= 0)
    use_a = a_only * a_only * s2 - 2 * a_only * t1 <= e_only * e_only * s0 - 2 * e_only * t0
    E_b, A_b = np.where(use_a, 0.0, e_only), np.where(use_a, a_only, 0.0)
    return np.where(interior, E, E_b), np.where(interior, A, A_b)


def _profile(alpha: np.ndarray, u: np.ndarray, y: np.ndarray, w: np.ndarray, delta: float):
    """Best (E, A) for each alpha. alpha (b|1, G), u (N,), y/w (b, N) -> loss, E, A of shape (b, G).

    Gauss-Newton on the log residuals: linearising log(E + A x) around the current fit turns
    each step into a weighted 2-variable NNLS. The first step (yhat = y) is plain relative least
    squares, which is already close to the log-space optimum.
    """
    x = np.exp(-alpha[..., None] * u)  # (b|1, G, N)
    y, w = y[:, None, :], w[:, None, :]
    logy = np.log(y)
    yhat = np.broadcast_to(y, np.broadcast_shapes(x.shape, y.shape))
    for _ in range(GN_ITERS):
        r = np.log(yhat) - logy
        om = w * _huber_weight(r, delta) / (yhat * yhat)
        E, A = nnls2(x, yhat * (1.0 - r), om)
        yhat = np.maximum(E[..., None] + A[..., None] * x, 1e-12)
    loss = (w * _huber(np.log(yhat) - logy, delta)).sum(-1)
    return loss, E, A


def _fit_saturating(u: np.ndarray, y: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    """Variable-projection fit per row of y/w (B, N) -> (B, 4) columns E, A(normalised), alpha, loss."""
    B, G = w.shape[0], len(COARSE)
    y = np.broadcast_to(y, w.shape)
    out = np.empty((B, 4))
    for s in range(0, B, CHUNK):
        yc, wc = y[s : s + CHUNK], w[s : s + CHUNK]
        rows = np.arange(len(wc))
        loss, _, _ = _profile(COARSE[None], u, yc, wc, delta)
        i = loss.argmin(1)
        lo, hi = COARSE[np.clip(i - 1, 0, G - 1)], COARSE[np.clip(i + 1, 0, G - 1)]
        fine = lo[:, None] * (hi / lo)[:, None] ** np.linspace(0, 1, FINE)
        lf, ef, af = _profile(fine, u, yc, wc, delta)
        j = lf.argmin(1)
        best = np.stack([ef[rows, j], af[rows, j], fine[rows, j], lf[rows, j]], 1)
        # Parabola through the three fine points around the minimum (equal steps in log alpha).
        jj = np.clip(j, 1, FINE - 2)
        l0, l1, l2 = lf[rows, jj - 1], lf[rows, jj], lf[rows, jj + 1]
        h = np.log(fine[:, 1] / fine[:, 0])
        den = l0 - 2 * l1 + l2
        with np.errstate(all="ignore"):
            off = np.where(den > 0, 0.5 * h * (l0 - l2) / den, 0.0)
        a_ref = np.clip(fine[rows, jj] * np.exp(np.clip(off, -h, h)), ALPHA_MIN, ALPHA_MAX)
        lr, er, ar = _profile(a_ref[:, None], u, yc, wc, delta)
        ref = np.stack([er[:, 0], ar[:, 0], a_ref, lr[:, 0]], 1)
        out[s : s + CHUNK] = np.where((lr[:, 0] < best[:, 3])[:, None], ref, best)
    return out


def _fit_power(
    u: np.ndarray, y: np.ndarray, w: np.ndarray, delta: float, iters: int = 30
) -> np.ndarray:
    """Pure power law: Huber regression of log err on log n (IRLS), per row -> (B, 3): A(norm), alpha, loss."""
    z = np.log(np.broadcast_to(y, w.shape))
    h = np.ones_like(w)
    for _ in range(iters):
        om = w * h
        s0, s1, s2 = om.sum(1), (om * u).sum(1), (om * u * u).sum(1)
        t0, t1 = (om * z).sum(1), (om * u * z).sum(1)
        with np.errstate(all="ignore"):
            slope = (s0 * t1 - s1 * t0) / (s0 * s2 - s1 * s1)
        alpha = np.clip(np.nan_to_num(-slope, nan=ALPHA_MIN), ALPHA_MIN, ALPHA_MAX)
        a = (t0 + alpha * s1) / s0  # best intercept for that alpha
        r = a[:, None] - alpha[:, None] * u - z
        h = _huber_weight(r, delta)
    return np.stack([np.exp(a), alpha, (w * _huber(r, delta)).sum(1)], 1)


def _polish(u: np.ndarray, y: np.ndarray, delta: float, start: np.ndarray) -> np.ndarray:
    """L-BFGS-B on (E, A, alpha) from the grid optimum; returns [E, A, alpha, loss]."""
    logy = np.log(y)

    def f(th):
        E, A, a = th
        x = np.exp(-a * u)
        yhat = E + A * x
        if np.any(yhat <= 0):
            return 1e30, np.zeros(3)
        r = np.log(yhat) - logy
        g = np.clip(r, -delta, delta) / yhat  # d loss / d yhat
        return _huber(r, delta).sum(), np.array([g.sum(), (g * x).sum(), -(g * A * x * u).sum()])

    # Tight tolerances: near a good fit the loss is ~1e-6, and L-BFGS-B's default ftol is
    # relative to max(|f|, 1), so it would stop at once (the Chinchilla fit's failure mode).
    res = optimize.minimize(
        f,
        start[:3],
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None), (1e-300, None), (ALPHA_MIN, ALPHA_MAX)],
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000},
    )
    return np.r_[res.x, res.fun] if res.fun < start[3] else start


# ----------------------------------------------------------------------------- one method


@dataclass
class Fit:
    data: Data
    n0: float  # reference size: A is fitted for (n / n0) so the solves are well conditioned
    delta: float
    sat: np.ndarray  # E, A(normalised), alpha, loss
    pow: np.ndarray  # A(normalised), alpha, loss
    boot_sat: np.ndarray = field(default=None)  # (B, 4)
    boot_pow: np.ndarray = field(default=None)  # (B, 3)
    boot_means: np.ndarray = field(default=None)  # (B, S) per-size mean errors of each replicate

    def params(self, boot: bool = False) -> dict:
        """E, A (original units), alpha of the saturating fit."""
        s = self.boot_sat if boot else self.sat[None]
        out = {"E": s[:, 0], "A": s[:, 1] * self.n0 ** s[:, 2], "alpha": s[:, 2]}
        return out if boot else {k: float(v[0]) for k, v in out.items()}

    def pow_params(self, boot: bool = False) -> dict:
        s = self.boot_pow if boot else self.pow[None]
        out = {"E": np.zeros(len(s)), "A": s[:, 0] * self.n0 ** s[:, 1], "alpha": s[:, 1]}
        return out if boot else {k: float(v[0]) for k, v in out.items()}

    def residuals(self, model: str = "saturating") -> np.ndarray:
        return np.log(
            predict(self.data.n, **(self.params() if model == "saturating" else self.pow_params()))
        ) - np.log(self.data.err)


def predict(n, E, A, alpha) -> np.ndarray:
    return E + A * np.asarray(n, dtype=float) ** -alpha


def check_fittable(d: Data) -> str | None:
    """Why this method cannot be fitted, or None."""
    if d.all_zero:
        return (
            "every run has test_error 0, so a log-space fit is impossible "
            "(isolated zeros are floored at --error-floor; an all-zero curve is not)"
        )
    sizes = d.sizes
    if len(sizes) < MIN_SIZES:
        return (
            f"only {len(sizes)} distinct data size(s) (n={', '.join(str(int(s)) for s in sizes)}); "
            f"fitting E + A*n^-alpha needs >= {MIN_SIZES}"
        )
    return None


def fit_point(d: Data, huber_delta: float | None = None) -> Fit:
    """Point estimate for one method (requires check_fittable(d) is None)."""
    n0 = float(np.exp(np.log(d.sizes).mean()))
    u = np.log(d.n / n0)
    y, w = d.err[None], np.ones((1, len(d.err)))
    delta = huber_delta
    if delta is None:
        # Scale the Huber threshold to the noise: MAD of a plain least-squares pilot fit.
        pilot = _fit_saturating(u, y, w, np.inf)[0]
        r = np.log(predict(np.exp(u), pilot[0], pilot[1], pilot[2])) - np.log(d.err)
        mad = 1.4826 * np.median(np.abs(r - np.median(r)))
        delta = max(HUBER_K * mad, DELTA_FLOOR)
    sat = _polish(u, d.err, delta, _fit_saturating(u, y, w, delta)[0])
    pw = _fit_power(u, y, w, delta)[0]
    return Fit(d, n0, float(delta), sat, pw)


def bootstrap(f: Fit, draws: Draws) -> None:
    """Fill f.boot_* with refits on the paired replicates of `draws` (see Draws)."""
    d = f.data
    u = np.log(d.n / f.n0)
    if draws.mode == "seed":
        w = draws.seed_weights(d)
        ys = ym = np.broadcast_to(d.err, w.shape)
        yp = ys
    else:
        w = np.ones((draws.n_boot, len(d.err)))
        if len(d.err) <= 3:  # 3 points, 3 parameters: exact fit, no residual noise to resample
            f.boot_sat = np.full((draws.n_boot, 4), np.nan)
            f.boot_pow = np.full((draws.n_boot, 3), np.nan)
            f.boot_means = np.full((draws.n_boot, len(d.sizes)), np.nan)
            return
        idx = draws.residual_index(len(d.err))
        ys = _residual_resample(np.log(predict(d.n, **f.params())), f.residuals(), idx, 3)
        yp = _residual_resample(
            np.log(predict(d.n, **f.pow_params())), f.residuals("power_law"), idx, 2
        )
        ym = ys
    f.boot_sat = _fit_saturating(u, ys, w, f.delta)
    f.boot_pow = _fit_power(u, yp, w, f.delta)
    f.boot_means = d.size_means(ym, w)


def _residual_resample(log_fit: np.ndarray, r: np.ndarray, idx: np.ndarray, p: int) -> np.ndarray:
    """y* = fit * exp(r*), r* drawn from centred residuals inflated by sqrt(N/(N-p)) (fit shrinks them)."""
    m = len(r)
    if m <= p:  # exact fit: residuals carry no information about the noise
        return np.full(idx.shape, np.nan)
    rc = (r - r.mean()) * np.sqrt(m / (m - p))
    return np.exp(log_fit + rc[idx])


# ----------------------------------------------------------------------------- paired resampling


class Draws:
    """Random numbers shared by all methods, so replicate b resamples the same seed ranks everywhere.

    mode "seed": within each data size, draw that size's seeds with replacement (stratified,
    so no replicate loses a size). Method X and the baseline use the same uniforms at the same n,
    hence the same seed indices when they ran the same seeds (paired bootstrap).
    mode "residual": used when some size has a single seed (a seed bootstrap would then have no
    spread at that size); resample log residuals of the fit, again with shared indices.
    """

    def __init__(self, datas: list[Data], n_boot: int, seed: int, mode: str):
        self.n_boot, self.mode, self.seed = n_boot, mode, seed
        sizes = sorted({float(s) for d in datas for s in d.sizes})
        self.col = {s: i for i, s in enumerate(sizes)}
        max_m = max(int((d.n == s).sum()) for d in datas for s in d.sizes)
        rng = np.random.default_rng(seed)
        self.u_seed = rng.random((n_boot, len(sizes), max_m))
        self.u_res = rng.random((n_boot, max(len(d.n) for d in datas)))

    def seed_weights(self, d: Data) -> np.ndarray:
        """(B, N) weights: how often each run was drawn, rescaled so every size keeps weight m.

        Draw m - 1 of the m seeds (Rao-Wu rescaled bootstrap): a plain m-of-m draw shrinks the
        variance of a size's mean by (m-1)/m, which with 2-4 seeds makes intervals visibly too
        narrow; m - 1 draws give exactly the unbiased variance of the mean.
        """
        w = np.zeros((self.n_boot, len(d.n)))
        for s in d.sizes:
            pos = np.flatnonzero(d.n == s)
            m = len(pos)
            k = max(m - 1, 1)
            idx = (self.u_seed[:, self.col[float(s)], :k] * m).astype(int)
            w[:, pos] = (idx[..., None] == np.arange(m)).sum(1) * (m / k)
        return w

    def residual_index(self, N: int) -> np.ndarray:
        return (self.u_res[:, :N] * N).astype(int)

    def test_problem_errors(self, d: Data) -> np.ndarray | None:
        """(B, N) errors of each run with its test problems drawn with replacement; None when a
        run's test_size is unknown. A bootstrap of a mean of 0/1 outcomes is a binomial draw, so
        no per-problem file is needed. Each method draws its own problems (not paired with the
        baseline): runs scored on the same problems are positively correlated, so unpaired draws
        overstate the spread of a difference (conservative)."""
        if d.test_size is None or np.isnan(d.test_size).any():
            return None
        rng = np.random.default_rng([self.seed, zlib.crc32(d.key.encode())])
        m = d.test_size.astype(int)
        return rng.binomial(m, np.clip(d.err, 0, 1), size=(self.n_boot, len(m))) / m


# ----------------------------------------------------------------------------- whole table


def _interval_fields(name: str, point: float, boot: np.ndarray | None, level: float) -> dict:
    lo, hi = mult.interval(boot[:, None], level) if boot is not None else ([np.nan], [np.nan])
    return {name: point, f"{name}_low": float(lo[0]), f"{name}_high": float(hi[0])}


def _gof(f: Fit, model: str) -> dict:
    r = f.residuals(model)
    N, p = len(r), 3 if model == "saturating" else 2
    ss = float((r * r).sum())
    logy = np.log(f.data.err)
    ss_tot = float(((logy - logy.mean()) ** 2).sum())
    rho = stats.spearmanr(f.data.n, r).statistic if N >= 3 and np.ptp(r) > 0 else np.nan
    return {
        "huber_loss": float(f.sat[3] if model == "saturating" else f.pow[2]),
        "rmse_log": float(np.sqrt(ss / N)),
        "r2_log": 1 - ss / ss_tot if ss_tot > 0 else np.nan,
        "aic": N * np.log(ss / N) + 2 * p if ss > 0 else -np.inf,
        "max_abs_residual_log": float(np.abs(r).max()),
        "residual_trend_spearman": float(rho),
        "n_points": N,
        "n_params": p,
    }


def _curve(f: Fit, n_lo: float, n_hi: float, level: float) -> dict:
    n = np.geomspace(n_lo, n_hi, CURVE_POINTS)
    err = predict(n, **f.params())
    out = {
        "n": n,
        "err": err,
        "err_low": np.full_like(n, np.nan),
        "err_high": np.full_like(n, np.nan),
    }
    if f.boot_sat is not None:
        b = f.params(boot=True)
        out["err_low"], out["err_high"] = mult.interval(
            predict(n[None], b["E"][:, None], b["A"][:, None], b["alpha"][:, None]), level
        )
    return out


def _size_table(d: Data, raw_err: dict) -> list[dict]:
    out = []
    for s in d.sizes:
        e = np.array(raw_err[float(s)])
        out.append(
            {
                "n": int(s),
                "seeds": len(e),
                "err_mean": float(e.mean()),
                "err_std": float(e.std(ddof=1)) if len(e) > 1 else None,
            }
        )
    return out


def _multiplier_fields(c: dict, sizes: np.ndarray, prefix: str = "multiplier") -> dict:
    return {
        prefix: c["summary"],
        f"{prefix}_low": c["summary_low"],
        f"{prefix}_high": c["summary_high"],
        f"{prefix}_p_gt_1": c["p_gt_1"],
        f"{prefix}_extrapolated": c["summary_extrapolated"],
        f"{prefix}_unreachable": c["summary_unreachable"],
        f"{prefix}_sizes": [int(s) for s in c["summary_sizes"]],
    }


def _fit_entry(f: Fit, src_n: list[float], ci: float) -> dict:
    """E, A, alpha with intervals, goodness of fit, the pure power law and the curve band."""
    e: dict = {}
    bp = f.params(boot=True) if f.boot_sat is not None else None
    for name, v in f.params().items():
        e.update(_interval_fields(name, v, None if bp is None else bp[name], ci))
    e["huber_delta"] = f.delta
    e["goodness_of_fit"] = _gof(f, "saturating")
    bpp = f.pow_params(boot=True) if f.boot_pow is not None else None
    e["power_law"] = {"model": POWER_LAW}
    for name in ("A", "alpha"):
        e["power_law"].update(
            _interval_fields(name, f.pow_params()[name], None if bpp is None else bpp[name], ci)
        )
    e["power_law"]["goodness_of_fit"] = _gof(f, "power_law")
    daic = e["goodness_of_fit"]["aic"] - e["power_law"]["goodness_of_fit"]["aic"]
    if not np.isfinite(daic):  # an exact fit (zero residuals): AIC says nothing
        e["preferred_model"] = "saturating"
    else:
        e["preferred_model"] = (
            "saturating" if daic < -2 else "power_law" if daic > 2 else "either (|delta AIC| <= 2)"
        )
    e["curve"] = _curve(f, min(src_n), max(src_n), ci)
    return e


def _curve_at(sizes: np.ndarray, p: dict | None) -> np.ndarray | None:
    """Fitted errors at `sizes` for each bootstrap replicate: (B, J), or None without replicates."""
    return (
        None
        if p is None
        else predict(sizes[None], p["E"][:, None], p["A"][:, None], p["alpha"][:, None])
    )


def _multiplier_entry(
    d: Data, f: Fit | None, base: Fit, means: np.ndarray, boot_means: np.ndarray | None, ci: float
) -> dict:
    """Summary + per-size multipliers of method d vs the baseline fit (fit-based and measured)."""
    sizes = d.sizes
    brange = (float(base.data.sizes.min()), float(base.data.sizes.max()))
    bboot = base.params(boot=True) if base.boot_sat is not None else None
    cm = mult.compare(sizes, means, boot_means, base.params(), bboot, brange, ci)
    cf = None
    e: dict = {}
    if f is not None:
        xboot = f.params(boot=True) if f.boot_sat is not None else None
        cf = mult.compare(
            sizes,
            predict(sizes, **f.params()),
            _curve_at(sizes, xboot),
            base.params(),
            bboot,
            brange,
            ci,
        )
        # Same comparison under the pure power law (the paper's n_SFT(e) = (A / e)^(1 / b)).
        has = f.boot_pow is not None and base.boot_pow is not None
        cp = mult.compare(
            sizes,
            predict(sizes, **f.pow_params()),
            _curve_at(sizes, f.pow_params(boot=True) if has else None),
            base.pow_params(),
            base.pow_params(boot=True) if has else None,
            brange,
            ci,
        )
        e["power_law"] = _multiplier_fields(cp, sizes)
    e.update(_multiplier_fields(cf if cf is not None else cm, sizes))
    e["multiplier_basis"] = "fit" if cf is not None else "measured"
    per = []
    for j, s in enumerate(sizes):
        row = {"n": int(s), "err_mean": float(means[j])}
        if cf is not None:
            row.update(
                {
                    "err_fit": float(predict(s, **f.params())),
                    "n_baseline": cf["n_baseline"][j],
                    "multiplier": cf["k"][j],
                    "multiplier_low": cf["k_low"][j],
                    "multiplier_high": cf["k_high"][j],
                    "extrapolated": bool(cf["extrapolated"][j]),
                    "unreachable": bool(cf["unreachable"][j]),
                }
            )
        row.update(
            {
                "n_baseline_measured": cm["n_baseline"][j],
                "multiplier_measured": cm["k"][j],
                "multiplier_measured_low": cm["k_low"][j],
                "multiplier_measured_high": cm["k_high"][j],
                "extrapolated_measured": bool(cm["extrapolated"][j]),
                "unreachable_measured": bool(cm["unreachable"][j]),
            }
        )
        per.append(row)
    e["multipliers"] = per
    return e


def _measured_boot(d: Data, f: Fit | None, draws: Draws | None) -> tuple[np.ndarray | None, str]:
    """Bootstrap replicates (B, S) of a method's mean error at each size, and what they resample.

    1. a fitted method: its fit's replicates (the table's design: seeds or residuals);
    2. an unfitted method (one or two sizes) with >= 2 seeds at every size: its seeds (Rao-Wu),
       also when some other size of the table has one seed;
    3. otherwise (a single seed somewhere): its test problems, which leaves the seed-to-seed
       spread out of the interval: the report says so.
    """
    if draws is None:
        return None, ""
    if f is not None:
        return f.boot_means, draws.mode
    if min(np.unique(d.n, return_counts=True)[1]) >= 2:
        w = draws.seed_weights(d)
        return d.size_means(np.broadcast_to(d.err, w.shape), w), "seed"
    y = draws.test_problem_errors(d)
    if y is None:
        return None, ""
    return d.size_means(y, np.ones_like(y)), "test_problems"


def _no_fit_error(datas: dict[str, Data], problems: dict[str, str | None]) -> AnalysisError:
    if all(p.startswith("only ") for p in problems.values()):
        seen = sorted({int(s) for d in datas.values() for s in d.sizes})
        return AnalysisError(
            f"cannot fit E + A*n^-alpha: every method has fewer than {MIN_SIZES} "
            f"distinct data sizes (sizes in the results: {', '.join(map(str, seen))}); "
            f"run >= {MIN_SIZES} sizes (collect and plot still work)"
        )
    why: dict[str, list[str]] = {}
    for k, p in problems.items():
        why.setdefault(p, []).append(k)
    return AnalysisError(
        "no method could be fitted: " + "; ".join(f"{p} ({', '.join(ks)})" for p, ks in why.items())
    )


CI_METHOD = {
    "seed": (
        "stratified paired seed bootstrap: within each data size m-1 of its m seeds are drawn "
        "with replacement and reweighted by m/(m-1) (Rao-Wu rescaling, so few seeds do not "
        "understate the spread); the baseline and every method share the drawn seed ranks in "
        "each replicate; percentile intervals"
    ),
    "residual": (
        "paired residual bootstrap (some data size has a single seed, so seeds cannot be "
        "resampled): centred log residuals of each fit, inflated by sqrt(N/(N-p)), are "
        "resampled with indices shared across methods; percentile intervals"
    ),
}


def metric_error(metric: str) -> str:
    """What is fitted for a metric, in words."""
    if metric in ("test_error", "test_accuracy"):
        return "test_error = 1 - test_accuracy (greedy)"
    return f"1 - {metric}"


def fit_table(
    rows: list[dict],
    baseline: str = "sft",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    huber_delta: float | None = None,
    error_floor: float = 1e-3,
    source_path: str | None = None,
    metric: str = "test_error",
) -> dict:
    """Fit every (objective, source) in `rows` and compare each to `baseline`; returns fits.json content.

    ``rows[i]["test_error"]`` is the error of ``metric`` (1 - accuracy, or 1 - pass@k): the fit is
    the same; the name is recorded so that fits.json and the report say what was fitted."""
    if not rows:
        raise AnalysisError("no finished runs to fit")
    objectives = sorted({r["objective"] for r in rows})
    if baseline not in objectives:
        raise AnalysisError(
            f"baseline objective '{baseline}' is not in the results; available: "
            f"{', '.join(objectives)} (choose one with --baseline)"
        )
    if not 0 < ci < 1:
        raise AnalysisError(f"--ci must be a level in (0, 1), e.g. 0.95; got {ci}")
    datas = group(rows, error_floor)
    raw: dict[str, dict] = {k: {} for k in datas}  # unfloored errors per size, for the tables
    for r in rows:
        raw[f"{r['objective']}/{r['source']}"].setdefault(float(r["n"]), []).append(r["test_error"])

    problems = {k: check_fittable(d) for k, d in datas.items()}
    fits: dict[str, Fit] = {}
    for k, d in datas.items():
        if problems[k] is None:
            f = fit_point(d, huber_delta)
            if f.sat[1] <= 1e-9 * d.err.mean():
                problems[k] = (
                    "test_error does not decrease with n (best fit is flat, A = 0), "
                    "so no power law describes it"
                )
            else:
                fits[k] = f
    if not fits:
        raise _no_fit_error(datas, problems)

    # One design for the whole table so every comparison is paired the same way.
    one_seed = any(min(np.unique(d.n, return_counts=True)[1]) < 2 for d in datas.values())
    mode = "residual" if one_seed else "seed"
    draws = Draws(list(datas.values()), n_boot, seed, mode) if n_boot > 0 else None
    if draws is not None:
        for f in fits.values():
            bootstrap(f, draws)

    methods = {}
    for k, d in datas.items():
        f, base = fits.get(k), fits.get(f"{baseline}/{d.source}")
        e: dict = {
            "objective": d.objective,
            "source": d.source,
            "is_baseline": d.objective == baseline,
            "n_runs": len(d.n),
            "n_floored": d.n_floored,
            "sizes": _size_table(d, raw[k]),
            "fit_error": problems[k],
        }
        if f is not None:
            e.update(
                _fit_entry(
                    f, [s for dd in datas.values() if dd.source == d.source for s in dd.sizes], ci
                )
            )
        else:
            e.update(
                dict.fromkeys(
                    (
                        "E",
                        "E_low",
                        "E_high",
                        "A",
                        "A_low",
                        "A_high",
                        "alpha",
                        "alpha_low",
                        "alpha_high",
                    )
                )
            )
        if base is None:
            why = problems.get(f"{baseline}/{d.source}") or "no baseline runs for this source"
            e.update(
                multiplier=None,
                multiplier_note=f"no fit for baseline {baseline}/{d.source}: {why}",
                multipliers=[],
            )
        else:
            means = np.array([np.mean(raw[k][float(s)]) for s in d.sizes])
            boot_means, interval_basis = _measured_boot(d, f, draws)
            m = _multiplier_entry(d, f, base, means, boot_means, ci)
            m["multiplier_interval_basis"] = interval_basis if boot_means is not None else None
            e["power_law"] = {**e.get("power_law", {}), **m.pop("power_law", {})}
            if not e["power_law"]:
                del e["power_law"]
            e.update(m)
            if e["is_baseline"]:  # k == 1 by construction; P(k > 1) would only measure rounding
                e["multiplier_p_gt_1"] = None
        methods[k] = e

    # jsonable: the in-memory result is exactly what fits.json holds (inf/nan -> null, no numpy).
    return jsonable(
        {
            "schema": "eightfold.fits/1",
            "input": source_path,
            "metric": metric,
            "error": metric_error(metric),
            "model": MODEL,
            "alternative": POWER_LAW,
            "baseline": baseline,
            "fit_method": (
                "variable projection: alpha on a log grid in [0.01, 3] (48 coarse + 13 fine "
                "points + parabolic refinement), (E, A) by exact non-negative least squares "
                "inside Gauss-Newton/IRLS steps on a Huber loss of log residuals; point "
                "estimate polished with L-BFGS-B"
            ),
            "huber_delta": "auto (1.345 x MAD of a least-squares pilot fit's log residuals, >= 1e-3)"
            if huber_delta is None
            else huber_delta,
            "error_floor": error_floor,
            "ci_method": CI_METHOD[mode] if n_boot > 0 else "none (--n-boot 0)",
            "bootstrap_mode": mode if n_boot > 0 else None,
            "ci_level": ci,
            "n_boot": n_boot,
            "seed": seed,
            "multiplier_definition": (
                "k(n) = n_b(err_X(n)) / n with n_b(e) = (A_b / (e - E_b))^(1/alpha_b) "
                "the inverse of the baseline fit and err_X the method's fitted curve "
                "(multiplier_measured uses the measured mean error instead). "
                "Summary: " + mult.SUMMARY
            ),
            "methods": methods,
        }
    )
