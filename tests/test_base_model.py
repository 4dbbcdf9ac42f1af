"""The pretrained base (``base=<preset>``, issue 14's LLM regime): built once, reused by every run
that names the same base, keyed by its config, and the weights a run starts from."""

from __future__ import annotations

import json

import pytest
import torch

from eightfold.config import ConfigError
from eightfold.rundir import run_dir
from eightfold.train import base_config, run
from tests.helpers import compose_cfg

BASE = ["base=short_chains", "base.steps=6", "base.data.size=64", "base.data.task.steps=1"]


def _cfg(tmp_path, *extra: str):
    return compose_cfg(
        ["experiment=smoke", "trainer.max_steps=4", f"paths.root={tmp_path}", *BASE, *extra]
    )


def test_base_is_trained_once_shared_and_keyed_by_its_config(tmp_path):
    first = _cfg(tmp_path, "data.size=32")
    base_dir = run_dir(base_config(first))
    run(first)
    stamp = (base_dir / "result.json").stat().st_mtime_ns
    assert json.loads((base_dir / "result.json").read_text())["train_steps"] == 6

    # another data size (and another seed) of the same study: the same base, not trained again
    run(_cfg(tmp_path, "data.size=48", "seed=1"))
    assert run_dir(base_config(_cfg(tmp_path, "data.size=48", "seed=1"))) == base_dir
    assert (base_dir / "result.json").stat().st_mtime_ns == stamp

    # another base config: another base directory
    other = _cfg(tmp_path, "data.size=32", "base.steps=7")
    assert run_dir(base_config(other)) != base_dir
    # and the run that starts from it is a different run
    assert run_dir(other) != run_dir(first)


def test_a_run_starts_from_the_base_weights(tmp_path):
    # lr 0: the SFT run's saved weights are exactly the base's weights
    cfg = _cfg(tmp_path, "data.size=32", "objective.module.lr=0.0")
    base_dir = run_dir(base_config(cfg))
    sft = run(cfg)
    from eightfold.models import hf_causal_lm

    base, _ = hf_causal_lm(str(base_dir / "model"), dtype="float32")
    tuned, _ = hf_causal_lm(sft["run_dir"] + "/model", dtype="float32")
    for (name, a), (_, b) in zip(base.state_dict().items(), tuned.state_dict().items()):
        assert torch.equal(a, b), name
    # from scratch (no base), the same run starts elsewhere
    scratch = run(
        compose_cfg(
            [
                "experiment=smoke",
                "trainer.max_steps=4",
                f"paths.root={tmp_path}",
                "data.size=32",
                "objective.module.lr=0.0",
            ]
        )
    )
    plain, _ = hf_causal_lm(scratch["run_dir"] + "/model", dtype="float32")
    assert not torch.equal(plain.lm_head.weight, base.lm_head.weight)


def test_no_base_adds_no_key_so_run_hashes_stay():
    assert "base" not in compose_cfg(["experiment=smoke"])


@pytest.mark.parametrize("steps", [0, -3, "many"])
def test_bad_base_steps_is_one_clear_error(tmp_path, steps):
    with pytest.raises(ConfigError, match=f"base.steps={steps!r}"):
        base_config(_cfg(tmp_path, f"base.steps={steps}"))
