"""Every objective trains a tiny model through the real config (experiment=smoke objective=X).

One SFT run is shared by the whole module (as in a sweep over objectives), so is the sampling
pass and the rollout pass: the later objectives read them from <paths.root>/cache.
"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

import eightfold.objectives.preference as preference
from eightfold.objectives.pi_sft import SampleSet, select_negatives
from eightfold.rundir import config_hash, run_dir
from eightfold.runfiles import RESULT
from eightfold.train import run
from tests.helpers import REPO, compose_cfg, run_cli

COMMON = {
    "objective",
    "source",
    "n",
    "seed",
    "test_accuracy",
    "test_error",
    "config_hash",
    "train_steps",
    "samples",
    "positives",
    "negatives",
    "novel_positives",
    "spurious_positives",
    "sft_run",
}

# The smoke experiment, made able to produce right and wrong samples in seconds: SFT for 300
# steps (the shared pi_sft), 8 samples per problem, 20 steps per objective, no intermediate
# checkpoints.
OVERRIDES = [
    "trainer.max_steps=300",
    "checkpoint_every_n_steps=100000",
    "objective.k=8",
    "objective.steps=20",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("objectives")


def cfg_for(root, objective: str, *extra: str):
    return compose_cfg(
        [
            "experiment=smoke",
            f"paths.root={root}",
            "trainer.enable_progress_bar=false",
            f"objective={objective}",
            *OVERRIDES,
            *extra,
        ]
    )


def finished(cfg) -> dict:
    on_disk = json.loads((run_dir(cfg) / RESULT).read_text())
    assert on_disk.keys() >= COMMON, COMMON - on_disk.keys()
    assert on_disk["objective"] == cfg.objective.name
    return on_disk


def test_rft_trains_on_teacher_plus_self_generated(root):
    cfg = cfg_for(root, "rft")
    result = run(cfg)
    r = finished(cfg)
    assert r["train_steps"] == 20 == r["objective_steps"]  # its own budget, not the SFT's 300
    assert r["samples"] == 8 * cfg.data.size and r["samples_cached"] is False
    assert r["rft_train_pairs"] == cfg.data.size + r["rft_self_added"] and r["rft_self_added"] > 0
    assert r["rft_kept"] <= r["positives"] and r["rft_kept_spurious"] <= r["rft_kept"]
    assert result["test_accuracy"] == r["test_accuracy"]
    # the SFT run it started from was trained once, with objective=sft and saved weights
    sft_dir = root / "runs" / r["sft_run"]
    assert (sft_dir / "model").is_dir() and json.loads((sft_dir / RESULT).read_text())[
        "train_steps"
    ] == 300


def test_dpo_trains_its_step_budget_and_computes_reference_logps_once(root, monkeypatch):
    calls = []
    original = preference.reference_logps

    def counting(model, items, pad_id, batch_size=128, chunk_size=None):
        forwards = []
        hook = model.register_forward_hook(lambda *a: forwards.append(1))
        try:
            out = original(model, items, pad_id, batch_size, chunk_size)
        finally:
            hook.remove()
        calls.append((len(items), len(forwards)))
        return out

    monkeypatch.setattr(preference, "reference_logps", counting)
    cfg = cfg_for(root, "dpo", "objective.module.ref_batch_size=64")
    run(cfg)
    r = finished(cfg)
    assert r["samples_cached"] is True  # the rft run's sampling pass, not a new one
    assert r["pairs"] > 0 and r["pairs_skipped_no_chosen"] >= 0
    # objective.steps, not trainer.max_steps and not a number of epochs
    assert r["train_steps"] == r["objective_steps"] == 20
    assert r["budget_items"] == r["pairs"] and r["budget_epochs"] == round(20 * 32 / r["pairs"], 3)
    # one pass of the frozen reference over all pairs, before training; none during training
    assert calls == [(r["pairs"], -(-r["pairs"] // 64))]
    assert r["ref_logps_cached"] is False
    # averaged over the last epoch's steps (nats, not beta x the last batch)
    assert isinstance(r["logratio_gap_last_epoch"], float)
    assert 0 <= r["reward_accuracy_last_epoch"] <= 1 and r["logratio_gap_last_epoch"] > 0
    assert "collapse_warning" in r
    # another run on the same pairs (here: another beta) reads them from the cache
    cfg2 = cfg_for(
        root,
        "dpo",
        "objective.module.ref_batch_size=64",
        "objective.module.beta=0.3",
        "objective.module.loss_type=ipo",
        "objective.module.nll_weight=0.5",
    )
    run(cfg2)
    r2 = finished(cfg2)
    assert len(calls) == 1 and r2["ref_logps_cached"] is True and r2["pairs"] == r["pairs"]
    assert r2["config_hash"] != r["config_hash"]


def test_dpo_without_pairs_keeps_pi_sft(root):
    cfg = cfg_for(root, "dpo", "objective.max_negatives=0")
    run(cfg)
    r = finished(cfg)
    assert r["pairs"] == 0 and r["train_steps"] == 0
    sft = json.loads((root / "runs" / r["sft_run"] / RESULT).read_text())
    assert r["test_accuracy"] == sft["test_accuracy"]  # the policy is pi_sft's weights, untouched


def test_step_dpo_rollouts_pits_agreement_and_pairs(root):
    cfg = cfg_for(root, "step_dpo", "objective.max_negatives=120", "objective.rollouts=4")
    run(cfg)
    r = finished(cfg)
    assert r["negatives_rolled_out"] == 120
    assert (
        0 < r["rollouts"] < r["rollouts_without_reuse"]
    )  # early stop and shared prefixes saved work
    assert r["rollout_time_s"] > 0 and r["rollouts_cached"] is False
    assert (
        0 <= r["first_pit_agreement"] <= 1
        and r["first_pit_agreement_n"] == 120 - r["dead_prompt_negatives"]
    )
    assert (
        r["pairs"]
        + r["pairs_skipped_no_pit"]
        + r["pairs_skipped_no_chosen"]
        + r["pairs_skipped_unconfirmed"]
        + r["pairs_duplicate"]
        == 120
    )
    assert r["pairs"] > 0 and r["train_steps"] == r["objective_steps"] > 0


def test_negatives_where_greedy_wrong_keeps_only_problems_greedy_gets_wrong(root):
    # the selection rule on hand-made records: problem 1's greedy answer is right, so its
    # negatives go; problem 0's stay
    recs = [
        {"problem": p, "completion": f"x={p}{j}", "ids": [p, j], "correct": j == 0}
        for p in (0, 1)
        for j in range(3)
    ]
    samples = SampleSet([], recs, {})
    kept, _ = select_negatives(samples, None, None, 0, problems={0})
    assert {p for p, _ in kept} == {0} and len(kept) == 2
    assert len(select_negatives(samples, None, None, 0)[0]) == 4
    # through a real run: a greedy pass over the training prompts, cached, reported, and
    # fewer or as many negatives as the default selection on the same samples
    plain, where = (
        cfg_for(root, "dpo"),
        cfg_for(root, "dpo", "objective.negatives_where=greedy_wrong"),
    )
    tree = OmegaConf.to_container(plain, resolve=True)
    del tree["objective"]["negatives_where"]  # off, the key leaves every existing hash alone
    assert config_hash(tree) == config_hash(plain) and run_dir(plain) != run_dir(where)
    run(plain)
    run(where)
    a, b = finished(plain), finished(where)
    assert 0.0 <= b["greedy_train_accuracy"] <= 1.0 and "greedy_train_accuracy" not in a
    assert b["budget_items"] <= a["budget_items"]
    assert b["greedy_wrong_problems"] == round((1 - b["greedy_train_accuracy"]) * a["n"])
    assert list((root / "cache" / "greedy").glob("*.jsonl"))


def test_awr_shares_the_step_dpo_rollouts(root):
    cfg = cfg_for(root, "awr", "objective.max_negatives=120", "objective.rollouts=4")
    run(cfg)
    r = finished(cfg)
    assert r["rollouts_cached"] is True  # the step_dpo run's rollouts: one pass for both
    assert r["awr_items"] == 2 * r["pairs"] and r["train_steps"] == r["objective_steps"] > 0
    assert r["first_pit_agreement"] is not None and r["awr_negative_weights"] > 0  # signed


def test_one_multirun_over_objectives_writes_one_result_each(root):
    overrides = [
        o for o in OVERRIDES if not o.startswith("objective.")
    ]  # sft has no sampling knobs
    proc = run_cli(
        [
            "eightfold.train",
            "-m",
            "experiment=smoke",
            "objective=sft,rft,dpo,step_dpo",
            f"paths.root={root}",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
        cwd=REPO,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in root.glob("runs/*/result.json")]
    k4 = [r for r in results if r["objective"] == "sft" or r.get("samples") == 16 * 64]
    assert sorted(r["objective"] for r in k4) == ["dpo", "rft", "sft", "step_dpo"]
    assert len({r["sft_run"] for r in k4 if r["objective"] != "sft"}) == 1  # one shared pi_sft
    for r in k4:
        assert {
            "objective",
            "n",
            "seed",
            "test_accuracy",
            "test_error",
            "config_hash",
            "train_steps",
        } <= r.keys()


@pytest.mark.parametrize(
    "extra, too_few",
    [
        (["objective.max_negatives=3", "objective.steps=7"], True),  # 3 pairs, 7 steps: 75 passes
        (["objective.steps=2"], False),  # every pair at most once
    ],
)
def test_the_step_budget_is_honoured_with_few_and_many_pairs(root, extra, too_few):
    cfg = cfg_for(root, "dpo", *extra)
    run(cfg)
    r = finished(cfg)
    asked = cfg.objective.steps
    assert r["train_steps"] == r["objective_steps"] == asked
    assert r["budget_too_few_pairs"] is too_few
    assert (r["budget_epochs"] > cfg.objective.max_epochs) is too_few


def test_matched_control_trains_the_same_pairs_and_steps_without_the_preference_loss(root):
    # a large lr, so that 20 steps move the contrast well beyond the noise of a smoke run
    lr = "objective.module.lr=1e-3"
    dpo, control = cfg_for(root, "dpo", lr), cfg_for(root, "dpo_control", lr)
    run(dpo), run(control)
    a, b = finished(dpo), finished(control)
    assert (a["pairs"], a["train_steps"]) == (b["pairs"], b["train_steps"])
    # the control never optimises the contrast: its gap stays near 0, DPO's grows
    assert a["logratio_gap_last_epoch"] > b["logratio_gap_last_epoch"]
