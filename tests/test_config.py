"""The real config tree composes, every group option instantiates, bad overrides fail early."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from eightfold.rundir import config_hash, run_dir
from tests.conftest import REPO, compose_cfg, run_cli


@pytest.mark.parametrize("experiment", ["smoke", "cpu_default", "cpu_hard"])
def test_experiments_compose_and_instantiate(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}", f"paths.root={tmp_path}"])
    dm = instantiate(cfg.data, _convert_="all")
    model, tok = instantiate(cfg.model)
    module = instantiate(cfg.objective.module, model=model, tokenizer=tok, _convert_="all")
    assert dm.size == cfg.data.size and module.name == cfg.objective.name
    assert model.config.vocab_size == len(tok)


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_options_compose(trainer, tmp_path):
    cfg = compose_cfg([f"trainer={trainer}", f"paths.root={tmp_path}"])
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert cfg.trainer.max_steps > 0


def test_config_hash_ignores_paths_and_workers_but_not_results(tmp_path):
    base = compose_cfg([f"paths.root={tmp_path}/a"])
    same = compose_cfg(
        [f"paths.root={tmp_path}/b", "data.num_workers=2", "trainer.enable_progress_bar=false"]
    )
    other = compose_cfg([f"paths.root={tmp_path}/a", "data.size=500"])
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)
    assert run_dir(base).name.startswith("sft-procedural-n1000-s0-")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.size=0", "data.size=0 is not valid"),
        ("data.size=abc", "data.size='abc' is not valid"),
        ("data.size=99999", "larger than the problem pool"),
        ("objective=nope", "Could not find 'objective/nope'"),
        ("data.task.modulus=8", "data.task.modulus=8 is not valid"),
        ("data.source=self", "objective=rft objective.positives=self"),
    ],
)
def test_bad_overrides_stop_before_training(override, message, tmp_path: Path):
    proc = run_cli(
        [
            "eightfold.train",
            "experiment=smoke",
            f"paths.root={tmp_path}",
            "data.task.steps=1",
            "data.task.chains=1",
            override,
        ],
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
