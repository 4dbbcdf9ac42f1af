"""The real config tree composes, every group option instantiates, bad overrides fail early,
and the config move of issue 12 left every run hash where it was."""

from __future__ import annotations

import dataclasses
import json
import pickle
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, OmegaConf

from eightfold.config import (
    CHOICES,
    SCHEMAS,
    ConfigError,
    Positives,
    compose_error_message,
    register_configs,
)
from eightfold.rundir import config_hash, run_dir
from eightfold.train import CONF_DIR
from eightfold.validate import ConfigError as ValidateConfigError
from eightfold.validate import validate_config
from tests.helpers import REPO, compose_cfg, run_cli

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
OBJECTIVES = sorted(p.stem for p in (CONF_DIR / "objective").glob("*.yaml"))
BASE_OBJECTIVES = sorted(SCHEMAS)  # one schema each; every other objective file is a variant
VARIANTS = [o for o in OBJECTIVES if o not in SCHEMAS]

HASHES = json.loads((REPO / "tests" / "data" / "config_hashes.json").read_text())
ROOT = HASHES["root"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose_and_instantiate(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}", f"paths.root={tmp_path}"])
    dm = instantiate(cfg.data, _convert_="all")
    model, tok = instantiate(cfg.model)
    module = instantiate(cfg.objective.module, model=model, tokenizer=tok, _convert_="all")
    assert dm.size == cfg.data.size and module.name == cfg.objective.name
    assert model.config.vocab_size == len(tok)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objectives_compose_and_instantiate(objective, tmp_path):
    cfg = compose_cfg(["experiment=smoke", f"objective={objective}", f"paths.root={tmp_path}"])
    assert cfg.objective.name == objective  # the run name and the analysis label
    assert not OmegaConf.missing_keys(cfg.objective)  # the YAML gives every key its schema has
    validate_config(cfg)
    for key, enum in CHOICES.items():  # typed: a typo would have failed above
        value = OmegaConf.select(cfg.objective, key)
        assert value is None or isinstance(value, enum), key
    model, tok = instantiate(cfg.model)
    module = instantiate(cfg.objective.module, model=model, tokenizer=tok, _convert_="all")
    assert isinstance(module, get_class(cfg.objective.module._target_))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_files_say_how_to_run_them(objective):
    first = (CONF_DIR / "objective" / f"{objective}.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# eightfold-train objective={objective}")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_files_say_how_to_run_them(experiment):
    lines = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# eightfold-train experiment={experiment}")


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


# --- the move of issue 12 kept every hash (tests/data/config_hashes.json, written before it) ---
# Issue 13 then changed the defaults of the objectives on pi_sft on purpose (the old ones trained
# the DPO family 2-44 optimizer steps: docs/objectives.md#the-training-budget). Those entries are
# listed under "changed" in the JSON, with the reason; the old configs are reproduced by the
# `<objective>_v0` files, up to the renamed and added keys below (checked key by key).
CHANGED = HASHES["changed"]["objectives"]
V0_ADDED = {  # keys the *_v0 files carry that did not exist before issue 13, at their v0 value
    "rft": {"epochs": None, "max_epochs": 8},
    "dpo": {"max_epochs": 8, "module.preference_weight": 1.0},
    "step_dpo": {
        "max_epochs": 8,
        "module.preference_weight": 1.0,
        "chosen": "random",
        "pair_form": "shared_prefix",
        "confirm_rollouts": 0,
    },
    "awr": {"max_epochs": 8, "chosen": "random", "module.weighting": "exp"},
}
V0_MOVED = {"module.epochs": "epochs", "module.max_steps": "steps"}  # the budget left the module


def _get(tree: dict, dotted: str):
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    return tree, leaf


def as_v0(config: dict, objective: str) -> dict:
    """A config recorded before issue 13, as its `<objective>_v0` file composes it today."""
    config = json.loads(json.dumps(config))
    o = config["objective"]
    o["name"] = f"{objective}_v0"
    for old, new in V0_MOVED.items():
        tree, leaf = _get(o, old)
        if leaf in tree:
            o[new] = tree.pop(leaf)
    for dotted, value in V0_ADDED[objective].items():
        tree, leaf = _get(o, dotted)
        tree[leaf] = value
    return config


def _objective(entry: dict) -> str:
    return next(ov.split("=", 1)[1] for ov in entry["overrides"] if ov.startswith("objective="))


@pytest.mark.parametrize(
    "entry", HASHES["compositions"], ids=lambda e: ",".join(e["overrides"][:3])
)
def test_composition_unchanged_by_the_config_move(entry):
    objective = (
        _objective(entry) if any(o.startswith("objective=") for o in entry["overrides"]) else "sft"
    )
    if objective in CHANGED:  # the old defaults live on in <objective>_v0
        overrides = [
            o if not o.startswith("objective=") else f"objective={objective}_v0"
            for o in entry["overrides"]
        ]
        cfg = compose_cfg([*overrides, f"paths.root={ROOT}"])
        assert _without_later_keys(cfg) == as_v0(entry["config"], objective)
        return
    cfg = compose_cfg([*entry["overrides"], f"paths.root={ROOT}"])
    assert _without_later_keys(cfg) == entry["config"]
    assert config_hash(cfg) == entry["config_hash"]


def _without_later_keys(cfg) -> dict:
    """The resolved config less the keys added after the recording that no hash sees: the
    ``logger`` group and ``gpu_memory_gib`` (rundir.HASH_EXCLUDE) and, while pass@k is off,
    ``eval.pass_k`` and ``eval.sampling`` (rundir.HASH_WHEN_ON), and the same for
    ``objective.spurious_analysis`` and ``objective.negatives_where``. The hash assertion above
    shows that adding them moved no run directory."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("logger")
    tree.pop("gpu_memory_gib", None)  # the sweep's fit check (rundir.HASH_EXCLUDE)
    if tree["eval"].get("pass_k") is None:
        tree["eval"] = {k: v for k, v in tree["eval"].items() if k not in ("pass_k", "sampling")}
    spurious = tree["objective"].get("spurious_analysis")
    if spurious is not None and spurious["positives"] is None:  # off (rundir.HASH_WHEN_ON)
        tree["objective"].pop("spurious_analysis")
    if "negatives_where" in tree["objective"] and tree["objective"]["negatives_where"] is None:
        tree["objective"].pop("negatives_where")  # off (rundir.HASH_WHEN_ON)
    return tree


def test_the_changed_entries_say_why():
    assert set(CHANGED) == set(V0_ADDED) and len(HASHES["changed"]["why"]) > 40


def _twins(variant: str) -> list[tuple[str, dict]]:
    """The first recorded sweep run per sweep file that ran ``variant`` as a bundle of overrides."""
    out = {}
    for sweep, rows in HASHES["sweeps"].items():
        for row in rows:
            if f"objective.name={variant}" in row["overrides"] and sweep not in out:
                out[sweep] = row
    return sorted(out.items())


# Variants that no sweep ran under their own name: what each must equal instead.
# rft_self: data_source.yaml's `self_generated` ran it as objective.positives=self under the name
# rft, so its runs cannot be told from plain rft; the file gives it its own name (and hash).
# The controls and *_v0 files of issue 13 are new: their bundles are written here.
EQUIVALENT = {
    "rft_self": ["objective=rft", "objective.positives=self", "objective.name=rft_self"],
    "dpo_control": [
        "objective=dpo",
        "objective.module.preference_weight=0.0",
        "objective.name=dpo_control",
    ],
    "step_dpo_control": [
        "objective=step_dpo",
        "objective.module.preference_weight=0.0",
        "objective.name=step_dpo_control",
    ],
    "awr_control": [
        "objective=awr",
        "objective.module.weighting=chosen_only",
        "objective.name=awr_control",
    ],
    "rft_v0": ["objective=rft", "objective.k=4", "objective.name=rft_v0"],
    "dpo_v0": [
        "objective=dpo",
        "objective.k=4",
        "objective.max_negatives=400",
        "objective.steps=null",
        "objective.epochs=2",
        "objective.module.lr=3e-5",
        "objective.module.nll_weight=0.0",
        "objective.name=dpo_v0",
    ],
    "step_dpo_v0": [
        "objective=step_dpo",
        "objective.k=4",
        "objective.max_negatives=400",
        "objective.steps=null",
        "objective.epochs=2",
        "objective.chosen=random",
        "objective.module.lr=3e-5",
        "objective.module.nll_weight=0.0",
        "objective.name=step_dpo_v0",
    ],
    "awr_v0": [
        "objective=awr",
        "objective.k=4",
        "objective.max_negatives=400",
        "objective.steps=null",
        "objective.epochs=2",
        "objective.chosen=random",
        "objective.module.lr=1e-4",
        "objective.module.weighting=exp",
        "objective.name=awr_v0",
    ],
}


def _today(override: str) -> str:
    """An override of a recorded bundle, in today's keys (issue 13 moved the budget)."""
    key, _, value = override.partition("=")
    for old, new in V0_MOVED.items():
        if key == f"objective.{old}":
            return f"objective.{new}={value}"
    return override


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_file_is_its_override_bundle(variant):
    """Each variant file is exactly the bundle of overrides a sweep ran under its name (applied to
    today's parent), so the variant still means what the recorded runs meant."""
    twins = _twins(variant)
    assert twins or variant in EQUIVALENT, (
        f"objective/{variant}.yaml has no recorded twin: add it to EQUIVALENT"
    )
    bundles = [
        (
            [o for o in row["overrides"] if not o.startswith("objective")],
            [_today(o) for o in row["overrides"] if o.startswith("objective")],
        )
        for _sweep, row in twins
    ]
    bundles += [(["experiment=cpu_hard"], EQUIVALENT[variant])] if variant in EQUIVALENT else []
    for rest, bundle in bundles:
        keys = {o.split("=", 1)[0] for o in bundle}
        if "objective.epochs" in keys and "objective.steps" not in keys:
            bundle = [*bundle, "objective.steps=null"]  # a recorded epochs budget: steps off
        new = compose_cfg([*rest, f"objective={variant}", f"paths.root={ROOT}"])
        old = compose_cfg([*rest, *bundle, f"paths.root={ROOT}"])
        assert OmegaConf.to_container(new, resolve=True) == OmegaConf.to_container(
            old, resolve=True
        ), (variant, bundle)
        assert config_hash(new) == config_hash(old)


# --- typed objective configs ----------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_choice_members_are_their_plain_strings(key):
    enum = CHOICES[key]
    for member in enum:
        value = member.value
        assert member.name == value and enum[value] is member
        assert member == value and hash(member) == hash(value) and {value: 1}[member] == 1
        assert str(member) == f"{member}" == value
        assert json.dumps(member) == json.dumps(value)
        assert json.dumps({"k": member}, default=str) == json.dumps({"k": value})
        assert pickle.loads(pickle.dumps(member)) is member


def test_choices_write_plain_yaml_and_pickle_in_a_composed_config(tmp_path):
    cfg = compose_cfg(["objective=rft", "objective.init=base", f"paths.root={tmp_path}"])
    assert cfg.objective.positives is Positives["teacher+self"]
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "positives: teacher+self" in text and "init: base" in text
    assert "Positives" not in text and "!!" not in text
    plain = yaml.safe_load(text)["objective"]
    assert type(plain["positives"]) is str and plain["init"] == "base"
    again = pickle.loads(pickle.dumps(cfg))  # submitit pickles the config of every job
    assert again == cfg and config_hash(again) == config_hash(cfg)


def _fields(schema: type, prefix: str = ""):
    """(dotted key, field, type) of every field of a schema, nested blocks included."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        yield prefix + f.name, f, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")


@pytest.mark.parametrize("name", BASE_OBJECTIVES)
def test_every_schema_field_has_help_and_no_value(name):
    for key, f, type_ in _fields(SCHEMAS[name]):
        assert f.metadata.get("help"), f"{SCHEMAS[name].__name__}.{key} has no help"
        if not dataclasses.is_dataclass(type_):  # values live in conf/objective/*.yaml only
            assert f.default == MISSING, f"{SCHEMAS[name].__name__}.{key} has a value"


def _unwrap_optional(type_):
    """``X | None`` -> ``X`` (an optional choice such as objective.negatives_where)."""
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(type_) else type_


def test_choices_name_every_enum_typed_field():
    typed = {
        (key, _unwrap_optional(type_))
        for schema in SCHEMAS.values()
        for key, _, type_ in _fields(schema)
        if isinstance(_unwrap_optional(type_), type) and issubclass(_unwrap_optional(type_), Enum)
    }
    assert typed == set(CHOICES.items())


def test_register_configs_is_idempotent(tmp_path):
    register_configs()
    register_configs()
    cfg = compose_cfg(["objective=step_dpo_pool_long", f"paths.root={tmp_path}"])
    assert cfg.objective.rejected == "pit" and cfg.objective.max_negatives is None


def test_config_error_lives_in_config_and_is_reexported():
    assert ValidateConfigError is ConfigError and issubclass(ConfigError, ValueError)


TYPOS = [
    (
        ["objective=step_dpo", "objective.rejected=foo"],
        "objective.rejected='foo' is not valid: expected one of [pit, rest]",
    ),
    (
        ["objective=step_dpo", "objective.pit_rule=nope"],
        "objective.pit_rule='nope' is not valid: expected one of"
        " [first_zero, argmin_advantage, first_drop]",
    ),
    (
        ["objective=rft", "objective.positives=both"],
        "objective.positives='both' is not valid: expected one of [teacher+self, self, teacher]",
    ),
    (
        ["objective=dpo", "objective.module.loss_type=xx"],
        "objective.module.loss_type='xx' is not valid: expected one of"
        " [sigmoid, ipo, hinge, robust, sigmoid_norm]",
    ),
    (
        ["objective=awr_pool", "objective.value=bokk"],
        "objective.value='bokk' is not valid: expected one of [bok, bok_any, mean]",
    ),
    (
        ["objective=rft_pool", "objective.sample_prompts=test"],
        "objective.sample_prompts='test' is not valid: expected one of [train, pool]",
    ),
    (
        ["objective=dpo", "objective.steps=two"],
        "objective.steps='two' is not valid:",
    ),
]


@pytest.mark.parametrize("overrides, message", TYPOS, ids=[ov[-1] for ov, _ in TYPOS])
def test_value_typo_fails_at_compose_time(overrides, message, tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([*overrides, f"paths.root={tmp_path}"])
    assert compose_error_message(info.value).startswith(message)


def test_objective_key_left_unset_is_a_config_error(tmp_path):
    cfg = compose_cfg(["experiment=smoke", "objective=rft", f"paths.root={tmp_path}"])
    cfg.objective.k = "???"
    with pytest.raises(ConfigError, match=r"objective=rft leaves objective\.k unset"):
        validate_config(cfg)


def test_value_typo_stops_the_cli_before_any_work(tmp_path: Path):
    proc = run_cli(
        [
            "eightfold.train",
            "experiment=smoke",
            "objective=step_dpo",
            "objective.rejected=foo",
            f"paths.root={tmp_path}",
        ],
        cwd=REPO,
    )
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "objective.rejected" in out and "expected one of [pit, rest]" in out
    assert "Traceback" not in out
    assert not (tmp_path / "runs").exists()


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
