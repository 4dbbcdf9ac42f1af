"""Data-efficiency multipliers: inversion, k-times-the-data recovery, flags, pairing."""

import numpy as np
import pytest

from eightfold_analysis import fit as F
from eightfold_analysis import multiplier as M
from eightfold_analysis.plot import plot_all

SIZES = [128, 256, 512, 1024, 2048, 4096, 8192]


def curve(n, E=0.15, A=3.0, alpha=0.4):
    return E + A * np.asarray(n, dtype=float) ** -alpha


def rows_for(rng, objective, k=1.0, seeds=4, noise=0.03, sizes=SIZES, shared=None):
    """err_X(n) = err_b(k n): X is worth exactly k times the baseline's data. `shared` adds a
    per-(n, seed) effect common to all methods (same seed = same data order), which pairing cancels."""
    out = []
    for n in sizes:
        for s in range(seeds):
            common = 0.0 if shared is None else shared[(n, s)]
            out.append(
                {
                    "objective": objective,
                    "source": "p",
                    "n": n,
                    "seed": s,
                    "test_error": float(curve(k * n) * np.exp(common + rng.normal(0, noise))),
                }
            )
    return out


def test_inverse_of_baseline_curve():
    n = np.array([100.0, 1000.0, 10000.0])
    err = curve(n)
    assert np.allclose(M.n_baseline(err, 0.15, 3.0, 0.4), n)
    assert M.n_baseline(0.15, 0.15, 3.0, 0.4) == np.inf  # at the asymptote: never reached
    assert M.n_baseline(0.10, 0.15, 3.0, 0.4) == np.inf  # below it: never reached


@pytest.mark.parametrize("k", [4.0, 0.5])
def test_method_worth_k_times_the_data_gives_multiplier_k(k):
    rng = np.random.default_rng(11)
    rows = rows_for(rng, "sft") + rows_for(rng, "x", k=k)
    m = F.fit_table(rows, n_boot=400, seed=1)["methods"]["x/p"]
    assert m["multiplier"] == pytest.approx(k, rel=0.12)
    assert m["multiplier_low"] <= k <= m["multiplier_high"]
    assert not m["multiplier_extrapolated"] and not m["multiplier_unreachable"]
    inside = [p for p in m["multipliers"] if not p["extrapolated"]]
    assert inside and all(p["multiplier"] == pytest.approx(k, rel=0.2) for p in inside)
    # k*n beyond the baseline's largest size is an extrapolation and must say so.
    for p in m["multipliers"]:
        assert p["extrapolated"] == (not SIZES[0] <= p["n_baseline"] <= SIZES[-1])
        if 1.3 * SIZES[0] <= k * p["n"] <= SIZES[-1] / 1.3:
            assert not p["extrapolated"]
        if not SIZES[0] / 1.3 <= k * p["n"] <= SIZES[-1] * 1.3:
            assert p["extrapolated"]
    assert m["multiplier_p_gt_1"] == (1.0 if k > 1 else 0.0)


def test_baseline_against_itself_is_exactly_one():
    rows = rows_for(np.random.default_rng(12), "sft")
    m = F.fit_table(rows, n_boot=100)["methods"]["sft/p"]
    assert m["is_baseline"]
    assert m["multiplier"] == pytest.approx(1.0) and m["multiplier_low"] == pytest.approx(1.0)
    assert m["multiplier_high"] == pytest.approx(1.0)


def test_unreachable_when_method_beats_the_baseline_asymptote(tmp_path):
    rng = np.random.default_rng(13)
    base = rows_for(rng, "sft")
    much_better = [
        dict(r, objective="x", test_error=r["test_error"] * 0.2) for r in rows_for(rng, "sft")
    ]
    fits = F.fit_table(base + much_better, n_boot=100)
    m = fits["methods"]["x/p"]
    assert all(
        p["unreachable"] and p["multiplier"] is None for p in m["multipliers"]
    )  # inf -> null + flag
    assert all(p["extrapolated"] for p in m["multipliers"])
    assert m["multiplier"] is None and m["multiplier_unreachable"]
    # The charts must cope with a method that has no finite multiplier at all.
    paths = plot_all(base + much_better, fits, tmp_path)
    assert (tmp_path / "multipliers.png") in paths and (
        tmp_path / "multipliers.png"
    ).stat().st_size > 0


def test_summary_ignores_sizes_whose_match_lies_outside_baseline_range():
    rng = np.random.default_rng(14)
    rows = rows_for(rng, "sft") + rows_for(rng, "x", k=8.0)
    m = F.fit_table(rows, n_boot=100)["methods"]["x/p"]
    # 8 n <= 8192 only for n <= 1024.
    assert m["multiplier_sizes"] == [128, 256, 512, 1024]
    assert m["multiplier"] == pytest.approx(8.0, rel=0.15)


def test_paired_draws_share_seed_indices_and_narrow_the_interval():
    rng = np.random.default_rng(15)
    shared = {(n, s): rng.normal(0, 0.08) for n in SIZES for s in range(4)}  # seed effects shared
    rows = rows_for(rng, "sft", shared=shared, noise=0.01) + rows_for(
        rng, "x", k=2.0, shared=shared, noise=0.01
    )
    datas = F.group(rows, 1e-3)
    draws = F.Draws(list(datas.values()), 50, 0, "seed")
    assert np.array_equal(draws.seed_weights(datas["sft/p"]), draws.seed_weights(datas["x/p"]))
    paired = F.fit_table(rows, n_boot=300, seed=0)["methods"]["x/p"]
    # Unpaired: relabel X's seeds so the shared effects no longer line up within a replicate.
    shuffled = [dict(r, seed=(r["seed"] + 1) % 4) if r["objective"] == "x" else r for r in rows]
    unpaired = F.fit_table(shuffled, n_boot=300, seed=0)["methods"]["x/p"]
    width = lambda m: np.log(m["multiplier_high"] / m["multiplier_low"])  # noqa: E731
    assert width(paired) < width(unpaired)
    assert paired["multiplier"] == pytest.approx(2.0, rel=0.12)


def test_measured_multiplier_for_a_method_with_one_size():
    rng = np.random.default_rng(16)
    rows = rows_for(rng, "sft") + rows_for(rng, "x", k=4.0, sizes=[512])
    m = F.fit_table(rows, n_boot=200)["methods"]["x/p"]
    assert m["alpha"] is None and "distinct data size" in m["fit_error"]
    assert m["multiplier_basis"] == "measured"
    assert m["multiplier"] == pytest.approx(4.0, rel=0.15)
    assert m["multiplier_low"] < 4.0 < m["multiplier_high"]


def test_interval_handles_infinite_replicates():
    v = np.array([[1.0], [2.0], [np.inf], [np.inf]])
    lo, hi = M.interval(v, 0.5)
    assert np.isfinite(lo[0]) and np.isinf(hi[0])
