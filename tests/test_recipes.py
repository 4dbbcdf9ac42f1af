"""Real-model recipes (conf/recipe/): a recipe sets every objective's scale-dependent values, the
tiny recipe is the runs of today (same config, same run hash), and a sweep's pi_sft is its own
SFT run under a recipe."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from eightfold.rundir import config_hash
from eightfold.train import CONF_DIR, sft_config
from tests.helpers import compose_cfg

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
REAL = [r for r in RECIPES if r != "tiny"]
OBJECTIVES = sorted(p.stem for p in (CONF_DIR / "objective").glob("*.yaml"))
# which recipe block each objective reads (variants read their parent's)
FAMILY = {"sft": "sft", "rft": "rft", "dpo": "dpo", "step_dpo": "dpo", "awr": "awr"}


def _family(objective: str) -> str:
    return next(FAMILY[f] for f in sorted(FAMILY, key=len, reverse=True) if objective.startswith(f))


def _compose(*overrides: str):
    return compose_cfg([*overrides, "paths.root=/ROOT"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_tiny_recipe_is_todays_run(objective):
    """recipe=tiny writes out the defaults: the resolved config (less the recipe block) and the run
    hash equal those without a recipe, so no existing run directory or cache moves."""
    plain = _compose("experiment=cpu_hard", f"objective={objective}")
    tiny = _compose("experiment=cpu_hard", f"objective={objective}", "recipe=tiny")
    resolved = OmegaConf.to_container(tiny, resolve=True)
    assert resolved.pop("recipe")["name"] == "tiny"
    assert resolved == OmegaConf.to_container(plain, resolve=True)
    assert config_hash(tiny) == config_hash(plain)


@pytest.mark.parametrize("recipe", REAL)
@pytest.mark.parametrize("objective", ["sft", "rft", "rft_control", "dpo", "step_dpo", "awr"])
def test_a_recipe_sets_each_objectives_values(recipe, objective):
    cfg = _compose(f"recipe={recipe}", f"objective={objective}")
    r, module = cfg.recipe, cfg.objective.module
    block = r[_family(objective)]
    for key, value in block.items():
        assert module[key] == value, (recipe, objective, key)
    assert module.lr <= 2e-5  # a real model never trains at the tiny model's 3e-3 .. 1e-5 lrs
    if objective != "sft":
        assert cfg.objective.steps == r.steps
    if objective == "rft":
        assert module.base_lr == r.sft.lr  # init=base retrains with the SFT recipe


def test_the_recipe_block_is_not_hashed_but_what_it_sets_is():
    """Tuning the DPO lr of a recipe leaves its SFT runs (every pi_sft) where they are."""
    sft = _compose("recipe=7b")
    assert config_hash(_compose("recipe=7b", "recipe.dpo.lr=1e-6")) == config_hash(sft)
    assert config_hash(_compose("recipe=7b", "recipe.sft.lr=2e-5")) != config_hash(sft)
    dpo = _compose("recipe=7b", "objective=dpo")
    assert config_hash(sft_config(dpo)) == config_hash(sft)  # the sweep's own SFT run is pi_sft


def test_an_override_beats_the_recipe():
    cfg = _compose("recipe=7b", "objective=dpo", "objective.module.lr=3e-7", "data.batch_size=4")
    assert cfg.objective.module.lr == 3e-7 and cfg.data.batch_size == 4
