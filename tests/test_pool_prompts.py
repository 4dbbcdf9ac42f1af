"""objective.sample_prompts=pool on every source with a generator (procedural, procedural_teacher,
star_graph): fresh problems outside train and test, with the generator's right answers, through
the real config and datamodule; a source without a generator is refused in one line."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from eightfold.data.arithmetic import first_wrong_step
from eightfold.data.datamodule import MathDataModule
from eightfold.objectives.pi_sft import sampling_examples
from eightfold.validate import validate_config
from eightfold.verify import is_correct
from tests.helpers import compose_cfg


def problem_id(e) -> str:
    """What makes two problems one: the graph for the star graph (any edge order), else the prompt."""
    return getattr(e.problem, "key", e.prompt)


def datamodule(cfg) -> MathDataModule:
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_examples()
    return dm


@pytest.mark.parametrize(
    "data,extra",
    [
        ("procedural", []),
        # a teacher that makes mistakes: its D_syn differs from the generator's, its pool does not
        (
            "teacher",
            ["data.teacher.spurious_rate=0.5", "data.teacher.spurious_kinds=[wrong_value]"],
        ),
        ("star_graph", []),
    ],
)
def test_pool_is_fresh_generator_problems_with_right_answers(data, extra, tmp_path):
    overrides = [
        f"data={data}",
        "objective=rft_pool",
        f"paths.root={tmp_path}",
        "data.size=60",
        "data.test_size=40",
        *extra,
    ]
    cfg = compose_cfg(overrides)
    validate_config(cfg)
    dm = datamodule(cfg)
    pool = sampling_examples(cfg, dm)

    # 1. as many as the training examples, none of them a training or test problem
    assert len(pool) == len(dm.train_examples) == 60
    seen = {problem_id(e) for e in [*dm.train_examples, *dm.test_examples]}
    assert len({problem_id(e) for e in pool}) == 60 and not {problem_id(e) for e in pool} & seen
    # 2. the generator's solutions: every step right and the verifier accepts the answer
    for e in pool:
        assert e.problem is not None and first_wrong_step(e.problem, e.solution) is None
        assert is_correct(e.solution, e.answer, dm.kind)
    if data == "teacher":  # the teacher's spurious steps reached training, not the pool
        assert any(first_wrong_step(e.problem, e.solution) is not None for e in dm.train_examples)
    # 3. one pool per (data, seed): the same for every objective of the run, another seed's differs
    assert [e.prompt for e in sampling_examples(cfg, datamodule(cfg))] == [e.prompt for e in pool]
    other = datamodule(compose_cfg([*overrides, "seed=1"]))
    assert [e.prompt for e in other.pool_examples()] != [e.prompt for e in pool]
    # 4. sample_prompts=train is the training examples themselves
    train_cfg = compose_cfg([*overrides, "objective.sample_prompts=train"])
    assert sampling_examples(train_cfg, dm) == dm.train_examples


def test_pool_refuses_a_source_without_a_generator():
    dm = MathDataModule(source="gsm8k", kind="gsm8k", train_file="x.jsonl", test_file="y.jsonl")
    with pytest.raises(ValueError) as err:
        dm.pool_examples()
    message = str(err.value)
    assert message.startswith("objective.sample_prompts=pool is not valid with data.source='gsm8k'")
    assert "procedural, procedural_teacher, star_graph" in message and "\n" not in message


def test_validate_knows_every_pool_source():
    from eightfold import validate
    from eightfold.data.datamodule import POOLS

    assert set(validate.POOL_SOURCES) == set(POOLS)


def test_pool_prompts_on_a_source_without_a_generator_fail_before_any_work():
    from eightfold.config import ConfigError
    from eightfold.validate import validate_config

    cfg = compose_cfg(
        ["experiment=smoke", "objective=rft_pool", "data=teacher", "data.source=gsm8k_teacher",
         "data.kind=gsm8k", "data.train_file=/nonexistent.jsonl"]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="sample_prompts=pool .*data.source='gsm8k_teacher'"):
        validate_config(cfg)
