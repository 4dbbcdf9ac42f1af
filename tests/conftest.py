"""Shared fixtures. Helpers the tests import (REPO, compose_cfg, run_cli) are in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import compose_cfg


@pytest.fixture
def smoke_cfg(tmp_path: Path):
    """A factory: the smoke experiment writing under tmp_path, plus extra overrides."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg(
            [
                "experiment=smoke",
                f"paths.root={tmp_path}",
                "trainer.enable_progress_bar=false",
                *overrides,
            ]
        )

    return make
