"""Power-law fits: solver correctness, parameter recovery, interval coverage, robustness."""

import json

import numpy as np
import pytest
from scipy import optimize

from eightfold_analysis import fit as F
from eightfold_analysis.common import AnalysisError, jsonable

SIZES = [128, 256, 512, 1024, 2048, 4096, 8192]
TRUE = {"E": 0.15, "A": 3.0, "alpha": 0.4}


def curve(n, E=TRUE["E"], A=TRUE["A"], alpha=TRUE["alpha"]):
    return E + A * np.asarray(n, dtype=float) ** -alpha


def rows_for(rng, objective="sft", k=1.0, seeds=4, noise=0.04, sizes=SIZES, source="p", **params):
    """Runs of a method worth k times the baseline's data: err(n) = err_b(k n), log-normal noise."""
    return [
        {
            "objective": objective,
            "source": source,
            "n": n,
            "seed": s,
            "test_error": float(curve(k * n, **params) * np.exp(rng.normal(0, noise))),
        }
        for n in sizes
        for s in range(seeds)
    ]


def test_nnls2_matches_scipy_nnls():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.uniform(0, 2, 6)
        t = rng.normal(0.3, 0.5, 6)
        om = rng.uniform(0.1, 2, 6)
        E, A = F.nnls2(x, t, om)
        s = np.sqrt(om)
        ref, _ = optimize.nnls(np.c_[np.ones(6), x] * s[:, None], t * s)

        def obj(e, a, x=x, t=t, om=om):
            return (om * (e + a * x - t) ** 2).sum()

        assert obj(E, A) == pytest.approx(obj(*ref), rel=1e-9, abs=1e-12)
        assert E >= 0 and A >= 0


def test_grid_fit_reaches_the_global_optimum():
    """Variable projection must find the best Huber-log loss that many L-BFGS-B starts find."""
    rng = np.random.default_rng(1)
    for _ in range(4):
        n = np.repeat(SIZES, 3).astype(float)
        E, A, a = rng.uniform(0, 0.3), rng.uniform(0.5, 5), rng.uniform(0.05, 1.0)
        y = np.clip(curve(n, E, A, a) * np.exp(rng.normal(0, 0.08, len(n))), 1e-3, 1)
        u = np.log(n / np.exp(np.log(SIZES).mean()))
        got = F._fit_saturating(u, y[None], np.ones((1, len(n))), 0.05)[0]

        def loss(th, u=u, y=y):  # Huber(0.05) on log residuals, with its gradient
            x = np.exp(-th[2] * u)
            yh = th[0] + th[1] * x
            if np.any(yh <= 0):
                return 1e30, np.zeros(3)
            r = np.log(yh / y)
            g = np.clip(r, -0.05, 0.05) / yh
            return F._huber(r, 0.05).sum(), np.array(
                [g.sum(), (g * x).sum(), -(g * th[1] * x * u).sum()]
            )

        best = min(
            optimize.minimize(
                loss,
                [e0, max(y.mean() - e0, 1e-3), a0],
                jac=True,
                method="L-BFGS-B",
                bounds=[(0, None), (1e-12, None), (0.01, 3)],
            ).fun
            for a0 in np.geomspace(0.02, 2, 6)
            for e0 in (0, 0.2)
        )
        assert got[3] <= best * 1.01 + 1e-9


def test_noise_free_data_recovers_parameters_exactly():
    rows = [
        {"objective": "sft", "source": "p", "n": n, "seed": s, "test_error": float(curve(n))}
        for n in SIZES
        for s in range(2)
    ]
    m = F.fit_table(rows, n_boot=0)["methods"]["sft/p"]
    for name, v in TRUE.items():
        assert m[name] == pytest.approx(v, rel=1e-3)


def test_noisy_fit_recovers_truth_within_intervals():
    rows = rows_for(np.random.default_rng(7))
    fits = F.fit_table(rows, n_boot=500, seed=0)
    m = fits["methods"]["sft/p"]
    for name, v in TRUE.items():
        assert m[f"{name}_low"] <= v <= m[f"{name}_high"], (
            name,
            m[f"{name}_low"],
            m[f"{name}_high"],
        )
        assert m[f"{name}_low"] <= m[name] <= m[f"{name}_high"]
    assert fits["bootstrap_mode"] == "seed" and "stratified" in fits["ci_method"]
    assert m["preferred_model"] == "saturating"  # E = 0.15 is far from zero
    json.dumps(jsonable(fits), allow_nan=False)  # fits.json must be strict JSON


@pytest.mark.parametrize("seeds", [3, 1])
def test_interval_coverage_near_nominal(seeds):
    """90% intervals over repeated draws cover the truth roughly 90% of the time.

    3 seeds uses the stratified seed bootstrap, 1 seed the residual bootstrap.
    Measured with 100+ draws both sit at 0.83-0.89; the band here is tolerant for 40 draws.
    """
    draws, hits = 40, {k: 0 for k in TRUE}
    for d in range(draws):
        rows = rows_for(np.random.default_rng(1000 + d), seeds=seeds, noise=0.05)
        m = F.fit_table(rows, n_boot=150, seed=d, ci=0.9)["methods"]["sft/p"]
        for k, v in TRUE.items():
            hits[k] += m[f"{k}_low"] <= v <= m[f"{k}_high"]
    cover = {k: h / draws for k, h in hits.items()}
    assert all(0.75 <= c <= 0.99 for c in cover.values()), cover


def test_bootstrap_is_deterministic_given_seed():
    rows = rows_for(np.random.default_rng(3))
    a = F.fit_table(rows, n_boot=100, seed=5)
    b = F.fit_table(rows, n_boot=100, seed=5)
    c = F.fit_table(rows, n_boot=100, seed=6)
    assert json.dumps(jsonable(a)) == json.dumps(jsonable(b))
    assert a["methods"]["sft/p"]["alpha_low"] != c["methods"]["sft/p"]["alpha_low"]


def test_single_seed_uses_residual_bootstrap_and_says_so():
    fits = F.fit_table(rows_for(np.random.default_rng(4), seeds=1), n_boot=200)
    m = fits["methods"]["sft/p"]
    assert fits["bootstrap_mode"] == "residual" and "residual" in fits["ci_method"]
    assert m["alpha_low"] < m["alpha"] < m["alpha_high"]


def _one_size(objective, k, seeds, test_size, n=1024):
    return [
        {
            "objective": objective,
            "source": "p",
            "n": n,
            "seed": s,
            "test_error": float(curve(k * n) * (1 + 0.02 * s)),
            "test_size": test_size,
        }
        for s in range(seeds)
    ]


def test_one_seed_method_at_one_size_gets_a_test_problem_interval():
    """A method run at one size with one seed is not fitted; its measured multiplier still gets an
    interval, from its test problems, wider for fewer problems, and none without test_size."""
    base = [
        {**r, "test_size": 500} for r in rows_for(np.random.default_rng(8), seeds=1, noise=0.02)
    ]
    got = {}
    for m in (200, 5000, None):
        fits = F.fit_table(base + _one_size("x", 4.0, 1, m), n_boot=400)
        assert fits["bootstrap_mode"] == "residual"
        got[m] = fits["methods"]["x/p"]
    for m in (200, 5000):
        x = got[m]
        assert x["multiplier_basis"] == "measured"
        assert x["multiplier_interval_basis"] == "test_problems"
        assert x["multiplier_low"] < x["multiplier"] < x["multiplier_high"]
        assert x["multiplier"] == pytest.approx(4.0, rel=0.25)
    width = {m: got[m]["multiplier_high"] - got[m]["multiplier_low"] for m in (200, 5000)}
    assert width[5000] < width[200] / 2  # ~sqrt(25) = 5x narrower
    assert got[None]["multiplier_low"] is None and got[None]["multiplier_interval_basis"] is None


def test_unfitted_method_with_seeds_resamples_its_seeds_even_in_residual_mode():
    base = rows_for(np.random.default_rng(9), seeds=1, noise=0.02)
    fits = F.fit_table(base + _one_size("x", 4.0, 3, 500), n_boot=400)
    x = fits["methods"]["x/p"]
    assert fits["bootstrap_mode"] == "residual"
    assert x["multiplier_interval_basis"] == "seed"
    assert x["multiplier_low"] < x["multiplier_high"]


def test_pure_power_law_data_prefers_or_allows_e_zero():
    rng = np.random.default_rng(5)
    rows = rows_for(rng, E=0.0, A=2.0, alpha=0.3, noise=0.03)
    m = F.fit_table(rows, n_boot=200)["methods"]["sft/p"]
    assert m["power_law"]["alpha"] == pytest.approx(0.3, abs=0.03)
    assert m["E_low"] == pytest.approx(0.0, abs=1e-9)  # the E interval reaches the boundary
    assert m["preferred_model"] != "saturating"


def test_huber_resists_a_diverged_seed():
    rng = np.random.default_rng(6)
    rows = rows_for(rng)
    clean = F.fit_table(rows, n_boot=0)["methods"]["sft/p"]["alpha"]
    rows[len(rows) // 2]["test_error"] = 0.95  # one run blew up
    hub = F.fit_table(rows, n_boot=0)["methods"]["sft/p"]["alpha"]
    ls = F.fit_table(rows, n_boot=0, huber_delta=100.0)["methods"]["sft/p"][
        "alpha"
    ]  # ~least squares
    assert abs(hub - clean) < abs(ls - clean)
    assert abs(hub - clean) < 0.05


def test_zero_errors_are_floored_and_counted():
    rows = rows_for(np.random.default_rng(8))
    rows[-1]["test_error"] = 0.0
    m = F.fit_table(rows, n_boot=0, error_floor=1e-3)["methods"]["sft/p"]
    assert m["n_floored"] == 1 and m["alpha"] is not None


def test_fittable_checks():
    rng = np.random.default_rng(9)
    with pytest.raises(AnalysisError, match="fewer than 3 distinct data sizes"):
        F.fit_table(rows_for(rng, sizes=[1000]), n_boot=0)
    with pytest.raises(AnalysisError, match="fewer than 3"):
        F.fit_table(rows_for(rng, sizes=[100, 1000]), n_boot=0)
    zeros = [dict(r, test_error=0.0) for r in rows_for(rng)]
    with pytest.raises(AnalysisError, match="every run has test_error 0"):
        F.fit_table(zeros, n_boot=0)
    with pytest.raises(AnalysisError, match="available: sft"):
        F.fit_table(rows_for(rng), baseline="rft", n_boot=0)
    flat = [dict(r, test_error=0.3) for r in rows_for(rng)]
    with pytest.raises(AnalysisError, match="does not decrease"):
        F.fit_table(flat, n_boot=0)
