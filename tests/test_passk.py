"""pass@k: the unbiased estimator, a real tiny model run that measures it, the run-hash rule, bad
settings, and eightfold-analyze fitting and reporting it (--metric)."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from math import comb

import numpy as np
import pytest
import torch

from eightfold.config import ConfigError
from eightfold.evaluate import evaluate, pass_at_k
from eightfold.rundir import config_hash, run_dir
from eightfold.train import run
from eightfold.validate import validate_config
from eightfold_analysis.cli import main as analyze
from tests.helpers import compose_cfg


def _closed_form(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(comb(n - c, k), comb(n, k)))  # exact, then rounded once


def test_estimator_matches_the_closed_form_on_constructed_counts():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_closed_form(n, c, k), abs=1e-12)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 6, 5) == 1.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    # large n: C(2000, 1000) overflows a float; the product form stays exact to rounding
    for c in (1, 7, 100, 990):
        assert pass_at_k(2000, c, 1000) == pytest.approx(_closed_form(2000, c, 1000), rel=1e-9)
    with pytest.raises(ValueError, match="0 < k <= n"):
        pass_at_k(4, 1, 5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real run: the smoke model trained until it solves some problems, pass@k at temperature 0."""
    torch.set_num_threads(1)
    cfg = compose_cfg(
        [
            "experiment=smoke",
            f"paths.root={tmp_path_factory.mktemp('passk')}",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=150",
            "eval.pass_k=[1,4]",
            "eval.sampling.n=4",
            "eval.sampling.temperature=0",
        ]
    )
    return cfg, run(cfg)


def test_pass_at_1_at_temperature_0_is_greedy_accuracy(trained):
    cfg, result = trained
    on_disk = json.loads((run_dir(cfg) / "result.json").read_text())
    assert on_disk["test_accuracy"] > 0.05  # it learned something: the check is not 0 == 0
    assert on_disk["test_pass@1"] == on_disk["test_accuracy"] == on_disk["test_pass@4"]
    assert on_disk["pass_k_n"] == 4 and on_disk["pass_k_temperature"] == 0.0
    assert on_disk["pass_k_top_p"] == 1.0


def test_sampling_path_agrees_with_greedy_when_cold_and_grows_with_k_when_hot(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, result = trained
    model_dir = run_dir(cfg) / "model"
    model, tok = (
        AutoModelForCausalLM.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_examples()
    args = (model, tok, dm.test_examples, dm.kind)
    cold = evaluate(
        *args,
        max_new_tokens=dm.max_new_tokens,
        pass_k=[1],
        sampling={"n": 2, "temperature": 0.01, "top_p": 1.0},
    )
    assert cold["test_accuracy"] == result["test_accuracy"]
    assert abs(cold["test_pass@1"] - cold["test_accuracy"]) <= 2 / len(dm.test_examples)
    hot = evaluate(
        *args,
        max_new_tokens=dm.max_new_tokens,
        pass_k=[1, 2, 8],
        sampling={"n": 8, "temperature": 1.0, "top_p": 1.0},
        seed=3,
    )
    assert 0 <= hot["test_pass@1"] <= hot["test_pass@2"] <= hot["test_pass@8"] <= 1
    assert hot["test_pass@8"] > hot["test_pass@1"]  # 8 hot tries find answers one does not
    again = evaluate(
        *args,
        max_new_tokens=dm.max_new_tokens,
        pass_k=[1, 2, 8],
        sampling={"n": 8, "temperature": 1.0, "top_p": 1.0},
        seed=3,
    )
    assert again == hot  # seeded


def test_pass_k_settings_enter_the_hash_only_when_on(tmp_path):
    base = compose_cfg([f"paths.root={tmp_path}"])
    off_other_sampling = compose_cfg([f"paths.root={tmp_path}", "eval.sampling.temperature=0.2"])
    on = compose_cfg([f"paths.root={tmp_path}", "eval.pass_k=[1,5]"])
    on_other_sampling = compose_cfg(
        [f"paths.root={tmp_path}", "eval.pass_k=[1,5]", "eval.sampling.temperature=0.2"]
    )
    assert config_hash(base) == config_hash(off_other_sampling)  # off: sampling is not read
    assert len({config_hash(base), config_hash(on), config_hash(on_other_sampling)}) == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.pass_k=[0,5]", "eval.pass_k=[0, 5] is not valid: expected null (off) or a list"),
        ("eval.pass_k=[32]", "eval.pass_k=[32] is not valid with eval.sampling.n=16"),
        ("eval.sampling.temperature=-1", "eval.sampling.temperature=-1 is not valid"),
        ("eval.sampling.top_p=0", "eval.sampling.top_p=0 is not valid"),
        ("eval.sampling.n=0", "eval.sampling.n=0 is not valid"),
    ],
)
def test_bad_pass_k_settings_name_the_value(override, message, tmp_path):
    overrides = ["experiment=smoke", f"paths.root={tmp_path}", "eval.pass_k=[1,5]", override]
    if override.startswith("eval.pass_k"):
        overrides.remove("eval.pass_k=[1,5]")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_cfg(overrides))


def _sweep(root):
    """Finished runs of two objectives with pass@1/@5 (rft worth ~2x the data at every metric)."""
    rng = np.random.default_rng(0)
    for obj, k in (("sft", 1.0), ("rft", 2.0)):
        for n in (100, 300, 1000, 3000):
            for s in range(2):
                d = root / "runs" / f"{obj}-{n}-{s}"
                d.mkdir(parents=True)
                (d / "config.yaml").write_text(f"objective: {obj}\n")
                err = float((0.1 + 2.0 * (k * n) ** -0.4) * np.exp(rng.normal(0, 0.03)))
                err5 = float((0.02 + 1.2 * (k * n) ** -0.5) * np.exp(rng.normal(0, 0.03)))
                result = {
                    "objective": obj,
                    "source": "procedural",
                    "n": n,
                    "seed": s,
                    "test_error": err,
                    "test_accuracy": 1 - err,
                    "test_pass@1": 1 - err * 1.05,
                    "test_pass@5": 1 - err5,
                    "pass_k_n": 16,
                    "pass_k_temperature": 0.7,
                    "pass_k_top_p": 1.0,
                    "config_hash": f"{obj}{n}{s}",
                    "run_dir": str(d),
                }
                (d / "result.json").write_text(json.dumps(result))
    return root


def test_analyze_fits_and_reports_either_metric(tmp_path, capsys):
    root = _sweep(tmp_path / "sweep")
    assert analyze(["all", str(root), "--out", str(tmp_path / "greedy"), "--n-boot", "20"]) == 0
    assert (
        analyze(
            [
                "all",
                str(root),
                "--out",
                str(tmp_path / "p5"),
                "--n-boot",
                "20",
                "--metric",
                "test_pass@5",
            ]
        )
        == 0
    )
    greedy = json.loads((tmp_path / "greedy" / "fits.json").read_text())
    p5 = json.loads((tmp_path / "p5" / "fits.json").read_text())
    assert greedy["metric"] == "test_error" and p5["metric"] == "test_pass@5"
    assert p5["error"] == "1 - test_pass@5"
    a_greedy = greedy["methods"]["sft/procedural"]["alpha"]
    a_p5 = p5["methods"]["sft/procedural"]["alpha"]
    assert a_greedy == pytest.approx(0.4, abs=0.1) and a_p5 == pytest.approx(0.5, abs=0.1)
    report = (tmp_path / "p5" / "report.md").read_text()
    assert "## pass@k" in report and "test_pass@5" in report and "Fitted: 1 - test_pass@5" in report
    assert "16 samples per test problem at temperature 0.7" in report
    assert "## pass@k" in (tmp_path / "greedy" / "report.md").read_text()  # shown either way

    csv_path = tmp_path / "greedy" / "results.csv"
    assert (
        analyze(
            [
                "fit",
                str(csv_path),
                "-o",
                str(tmp_path / "f.json"),
                "--n-boot",
                "0",
                "--metric",
                "test_pass@1",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "f.json").read_text())["metric"] == "test_pass@1"
    capsys.readouterr()
    assert analyze(["fit", str(csv_path), "--metric", "test_pass@3"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "no run in" in err
        and "available: test_error, test_pass@1, test_pass@5" in err
    )
    assert analyze(["fit", str(csv_path), "--metric", "pass5"]) == 2
    assert "--metric 'pass5' is not valid" in capsys.readouterr().err
