"""Paired tests at equal n, and the runs that did not train.

Every run of a study with the same data config and test_size is evaluated on the same test
problems, in the same order, and saves one outcome per problem (``test_outcomes``, "0"/"1").
Two runs at the same (source, n, seed) can therefore be compared problem by problem, which is far
more sensitive than comparing two accuracies: the problems both get right or both get wrong carry
no information, and only the discordant ones (one right, the other wrong) decide. Why this way
(docs/analysis.md#paired-tests-at-equal-n):

- **Difference**: accuracy(objective) - accuracy(reference) on the same problems; pooled over
  seeds, the mean of the per-seed differences.
- **McNemar's exact test**: under "no difference" each discordant problem is equally likely to
  favour either run, so the count favouring the objective is Binomial(discordant, 1/2); two-sided
  binomial test (scipy.stats.binomtest). Pooled over seeds: the summed discordant counts.
- **Paired bootstrap**: resample test problems with replacement (within each seed when pooled:
  stratified), keeping both runs' outcomes on a problem together. A problem contributes +1, -1 or
  0 to the difference, so a resample is one multinomial draw of those three counts, exactly the
  same distribution as drawing problem indices. Percentile interval at --ci. The interval is over
  test problems for the seeds that were run; the spread between seeds is in ``per_seed``.

Who is compared with whom: every objective with its matched control (``matched_controls``) and
with the baseline (``sft``), at the same source and n, on the seeds both ran; and any other pair
asked for by name (``eightfold-analyze all --compare step_dpo:rft_control``).

``trained`` is the one rule for runs that did not train: used by the fits (such runs get no
multiplier), by these tests (such runs are left out) and by the report (which lists them).
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import stats

from .common import AnalysisError, jsonable

CONTROL = "_control"
# result.json fields of an objective trained on pi_sft for a step budget (not of sft).
BUDGET_FIELDS = ("objective_steps", "budget_items", "budget_epochs", "budget_too_few_pairs")
METHOD = (
    "difference = accuracy(objective) - accuracy(reference) on the same test problems and seed, "
    "pooled over seeds as the mean of the per-seed differences; McNemar's exact test = two-sided "
    "binomial test (p = 1/2) on the discordant problems (summed over seeds when pooled); "
    "interval = paired bootstrap over test problems (stratified by seed), percentile"
)


# ----------------------------------------------------------------------------- who is compared


def matched_controls(objectives) -> dict[str, str]:
    """objective -> its matched control: the longest prefix X (at "_" boundaries) of the name with
    X_control among `objectives`. dpo_pool_long -> dpo_control, step_dpo_v0 -> step_dpo_control,
    rft_self -> rft_control; a new objective with a _control twin is paired without code."""
    names = set(objectives)
    out = {}
    for o in sorted(names):
        if o.endswith(CONTROL):
            continue
        parts = o.split("_")
        for i in range(len(parts), 0, -1):
            c = "_".join(parts[:i]) + CONTROL
            if c in names:
                out[o] = c
                break
    return out


# ----------------------------------------------------------------------------- did it train


def trained(
    row: dict, min_steps: int = 100, min_pairs: int = 100, budget: bool = True
) -> tuple[bool, str]:
    """(True, "") or (False, why): a run on pi_sft that took fewer than `min_steps` optimizer
    steps, trained on fewer than `min_pairs` pairs/items, or (with ``budget``) had too few pairs
    for its step budget (budget_too_few_pairs). Runs without budget fields (sft, older runs)
    always train. The paired tests pass ``budget=False``: a run that made many passes over few
    pairs did train, and how it compares with its control is the measurement."""
    if all(row.get(k) is None for k in BUDGET_FIELDS):
        return True, ""
    why = []
    steps = row.get("train_steps")
    if steps is None:
        steps = row.get("objective_steps")
    if steps is not None and steps < min_steps:
        why.append(f"{steps} optimizer steps < --min-steps {min_steps}")
    items = row.get("budget_items")
    if items is not None and items < min_pairs:
        why.append(f"{items} pairs/items < --min-pairs {min_pairs}")
    if budget and row.get("budget_too_few_pairs"):
        epochs = row.get("budget_epochs")
        passes = f"{epochs:g} passes" if epochs is not None else "no pass"
        why.append(f"too few pairs for the step budget ({passes} over them > objective.max_epochs)")
    return not why, "; ".join(why)


def _check_limits(min_steps: int, min_pairs: int) -> None:
    for name, v in (("--min-steps", min_steps), ("--min-pairs", min_pairs)):
        if v < 0:
            raise AnalysisError(f"{name} must be >= 0 (0 = never flag); got {v}")


def split_trained(
    rows: list[dict], min_steps: int = 100, min_pairs: int = 100
) -> tuple[list[dict], list[dict]]:
    """(rows that trained, one entry per run that did not: which run and why)."""
    _check_limits(min_steps, min_pairs)
    kept, flagged = [], []
    for r in rows:
        ok, why = trained(r, min_steps, min_pairs)
        if ok:
            kept.append(r)
        else:
            flagged.append(
                {
                    **{k: r.get(k) for k in ("objective", "source", "n", "seed", "run_dir")},
                    "train_steps": r.get("train_steps"),
                    "objective_steps": r.get("objective_steps"),
                    "budget_items": r.get("budget_items"),
                    "budget_epochs": r.get("budget_epochs"),
                    "budget_too_few_pairs": r.get("budget_too_few_pairs"),
                    "reason": why,
                }
            )
    return kept, flagged


def describe_flag(f: dict) -> str:
    return (
        f"{f['objective']}/{f['source']} n={f['n']} seed={f['seed']}: did not train ({f['reason']})"
    )


def mark_untrained(fits: dict, flagged: list[dict], min_steps: int, min_pairs: int) -> dict:
    """Record in fits.json which runs were left out of the fits, and give a method none of whose
    runs trained an entry that says so (no fit, no multiplier)."""
    fits["min_steps"], fits["min_pairs"] = min_steps, min_pairs
    fits["not_trained"] = flagged
    count: dict[str, int] = {}
    for f in flagged:
        key = f"{f['objective']}/{f['source']}"
        count[key] = count.get(key, 0) + 1
    for key, c in sorted(count.items()):
        m = fits["methods"].get(key)
        if m is not None:
            m["n_not_trained"] = c
            continue
        why = f"none of its {c} run(s) trained (see not_trained), so nothing is left to fit"
        obj, src = key.split("/", 1)
        fits["methods"][key] = {
            "objective": obj,
            "source": src,
            "is_baseline": False,
            "n_runs": 0,
            "n_not_trained": c,
            "sizes": [],
            "fit_error": why,
            **dict.fromkeys(("E", "E_low", "E_high", "A", "A_low", "A_high")),
            **dict.fromkeys(("alpha", "alpha_low", "alpha_high")),
            "multiplier": None,
            "multiplier_note": f"no multiplier: {why}",
            "multipliers": [],
        }
    return fits


# ----------------------------------------------------------------------------- the statistics


def outcomes(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) == ord("1")


def mcnemar(obj_only: int, ref_only: int) -> float:
    """Exact two-sided McNemar p: binomial test of obj_only out of the discordant pairs at 1/2."""
    m = obj_only + ref_only
    return 1.0 if m == 0 else float(stats.binomtest(obj_only, m, 0.5).pvalue)


def _draws(rng: np.random.Generator, obj_only: int, ref_only: int, t: int, n_boot: int):
    """Bootstrap differences over t resampled problems: (B,) from one multinomial per replicate."""
    c = rng.multinomial(t, [obj_only / t, ref_only / t, 1.0 - (obj_only + ref_only) / t], n_boot)
    return (c[:, 0] - c[:, 1]) / t


def _interval(d: np.ndarray | None, ci: float) -> tuple[float | None, float | None]:
    if d is None:
        return None, None
    lo, hi = np.quantile(d, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def paired_test(
    a_list: list[str], b_list: list[str], n_boot: int = 1000, ci: float = 0.95, rng=None
) -> dict:
    """Objective outcomes a vs reference outcomes b, one string pair per seed (equal lengths).

    Returns the pooled difference with its stratified bootstrap interval, McNemar on the summed
    discordant counts, and the same per seed."""
    rng = rng if rng is not None else np.random.default_rng(0)
    per, boots = [], []
    for sa, sb in zip(a_list, b_list):
        a, b = outcomes(sa), outcomes(sb)
        if len(a) != len(b) or not len(a):
            raise ValueError(f"outcome strings of lengths {len(a)} and {len(b)}")
        t, oo, ro = len(a), int((a & ~b).sum()), int((~a & b).sum())
        d = _draws(rng, oo, ro, t, n_boot) if n_boot > 0 else None
        boots.append(d)
        lo, hi = _interval(d, ci)
        per.append(
            {
                "n_problems": t,
                "accuracy": float(a.mean()),
                "reference_accuracy": float(b.mean()),
                "diff": (oo - ro) / t,
                "diff_low": lo,
                "diff_high": hi,
                "objective_only": oo,
                "reference_only": ro,
                "p_mcnemar": mcnemar(oo, ro),
            }
        )
    oo, ro = sum(p["objective_only"] for p in per), sum(p["reference_only"] for p in per)
    lo, hi = _interval(np.mean(boots, axis=0) if n_boot > 0 else None, ci)
    return {
        "n_seeds": len(per),
        "n_problems": sum(p["n_problems"] for p in per),
        "accuracy": float(np.mean([p["accuracy"] for p in per])),
        "reference_accuracy": float(np.mean([p["reference_accuracy"] for p in per])),
        "diff": float(np.mean([p["diff"] for p in per])),
        "diff_low": lo,
        "diff_high": hi,
        "objective_only": oo,
        "reference_only": ro,
        "p_mcnemar": mcnemar(oo, ro),
        "per_seed": per,
    }


# ----------------------------------------------------------------------------- the whole table


def _seed_key(s) -> tuple:
    return (0, s, "") if isinstance(s, int) else (1, 0, str(s))


def compare_all(
    rows: list[dict],
    baseline: str = "sft",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_steps: int = 100,
    min_pairs: int = 100,
    source_path: str | None = None,
    requested: list[tuple[str, str]] | None = None,
) -> dict:
    """Every paired comparison of the table (paired.json content): objective vs matched control
    and vs baseline at each (source, n), on the seeds both ran, trained, with outcomes; and each
    `requested` (objective, reference) pair, kind "requested"."""
    if not 0 < ci < 1:
        raise AnalysisError(f"--ci must be a level in (0, 1), e.g. 0.95; got {ci}")
    if n_boot < 0:
        raise AnalysisError(f"--n-boot must be >= 0 (0 = no intervals); got {n_boot}")
    names = {r["objective"] for r in rows}
    requested = list(requested or [])
    for pair in requested:
        for name in pair:
            if name not in names:
                raise AnalysisError(
                    f"--compare {pair[0]}:{pair[1]}: no runs of objective {name!r}; "
                    f"the objectives here are {', '.join(sorted(names))}"
                )
    _, flagged = split_trained(rows, min_steps, min_pairs)
    controls = matched_controls(names)

    # (source, n) -> objective -> seed -> [rows]
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["source"], r["n"]), {}).setdefault(r["objective"], {}).setdefault(
            r["seed"], []
        ).append(r)
    skipped = []

    def usable(rs: list[dict]) -> tuple[dict | None, str]:
        if len(rs) > 1:
            return None, f"{len(rs)} runs for this seed (duplicates; none used)"
        ok, why = trained(rs[0], min_steps, min_pairs, budget=False)
        if not ok:
            return None, "did not train"
        if not rs[0].get("test_outcomes"):
            return None, "no test_outcomes (a run from before per-problem outcomes)"
        return rs[0], ""

    for (src, n), objs in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        for obj, seeds in sorted(objs.items()):
            for s, rs in sorted(seeds.items(), key=lambda kv: _seed_key(kv[0])):
                r, why = usable(rs)
                if r is None and why != "did not train":  # those are listed in not_trained
                    skipped.append(
                        {"objective": obj, "source": src, "n": n, "seed": s, "reason": why}
                    )

    comparisons = []
    for (src, n), objs in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        for obj in sorted(objs):
            if obj == baseline and not any(a == obj for a, _ in requested):
                continue
            refs = [(controls.get(obj), "control"), (baseline, "baseline")]
            refs += [(b, "requested") for a, b in requested if a == obj and b not in dict(refs)]
            for ref, kind in refs:
                if ref is None or ref not in objs or ref == obj:
                    continue
                a_s, b_s, used, notes = [], [], [], []
                for s in sorted(set(objs[obj]) | set(objs[ref]), key=_seed_key):
                    ra, wa = usable(objs[obj][s]) if s in objs[obj] else (None, "not run")
                    rb, wb = usable(objs[ref][s]) if s in objs[ref] else (None, "not run")
                    if ra is None or rb is None:
                        who = [f"{o} {w}" for o, w in ((obj, wa), (ref, wb)) if w]
                        notes.append(f"seed {s}: {', '.join(who)}")
                    elif len(ra["test_outcomes"]) != len(rb["test_outcomes"]):
                        notes.append(
                            f"seed {s}: different test sets ({len(ra['test_outcomes'])} vs "
                            f"{len(rb['test_outcomes'])} problems)"
                        )
                    else:
                        a_s.append(ra["test_outcomes"])
                        b_s.append(rb["test_outcomes"])
                        used.append(s)
                c = {
                    "source": src,
                    "n": n,
                    "objective": obj,
                    "reference": ref,
                    "kind": kind,
                    "seeds": used,
                    "notes": notes,
                }
                if used:
                    rng = np.random.default_rng(
                        [seed, zlib.crc32(f"{src}|{n}|{obj}|{ref}".encode())]
                    )
                    res = paired_test(a_s, b_s, n_boot, ci, rng)
                    for s, p in zip(used, res["per_seed"]):
                        p["seed"] = s
                    c.update(res)
                else:
                    c.update(n_seeds=0, diff=None, diff_low=None, diff_high=None, p_mcnemar=None)
                comparisons.append(c)

    return jsonable(
        {
            "schema": "eightfold.paired/1",
            "input": source_path,
            "baseline": baseline,
            "controls": controls,
            "method": METHOD,
            "ci_level": ci,
            "n_boot": n_boot,
            "seed": seed,
            "min_steps": min_steps,
            "min_pairs": min_pairs,
            "requested": [list(p) for p in requested],
            "comparisons": comparisons,
            "skipped": skipped,
            "not_trained": flagged,
        }
    )
