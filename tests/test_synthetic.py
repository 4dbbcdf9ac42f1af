"""D_syn and the data sources: prefixes, labels, the shared test set, the configs that select them."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
from hydra.utils import instantiate

from eightfold import validate
from eightfold.data import synthetic
from eightfold.data.arithmetic import generate_problems
from eightfold.data.examples import procedural_split
from eightfold.data.seeds import Seed, procedural_stream
from eightfold.data.synthetic import SOURCES, build_split, parse_rewrite, synthetic_dataset
from eightfold.data.teachers import ProceduralTeacher
from tests.helpers import compose_cfg

DATA = Path(__file__).parent / "data"
TASK = {"chains": 2, "steps": 2, "modulus": 7}
NOISY = {"name": "procedural", "error_rate": 0.2, "spurious_rate": 0.2}


def _split(source="procedural_teacher", **kw):
    args = dict(
        source=source, kind="procedural", size=40, seed=3, test_size=30, test_seed=99, task=TASK
    )
    return build_split(**{**args, **kw})


def test_procedural_stream_is_generate_problems():
    exclude = {p.prompt for p in generate_problems(30, 99, **TASK)}
    lazy = [p.prompt for p in islice(procedural_stream(3, exclude=exclude, **TASK), 200)]
    assert lazy == [p.prompt for p in generate_problems(200, 3, exclude=exclude, **TASK)]
    assert (
        len(list(procedural_stream(0, chains=1, steps=1, modulus=2))) == 2 * 5
    )  # a finite pool ends


def test_clean_procedural_teacher_is_the_procedural_source(tmp_path):
    train, test, info = _split(teacher={"name": "procedural"}, cache_dir=str(tmp_path))
    ref_train, ref_test = procedural_split(40, 3, 30, 99, **TASK)
    assert [(e.prompt, e.solution, e.answer) for e in train] == [
        (e.prompt, e.solution, e.answer) for e in ref_train
    ]
    assert [(e.prompt, e.answer) for e in test] == [
        (e.prompt, e.answer) for e in ref_test
    ]  # same test set
    assert all(e.problem is not None and e.meta["verdict"] == "clean" for e in train)
    assert info["example_verdicts"] == {"clean": 40}


def test_size_n_is_a_prefix_of_2n_and_generated_once(tmp_path):
    calls = []

    class Counting(ProceduralTeacher):
        def generate(self, tasks, seed):
            for task, samples in zip(tasks, super().generate(tasks, seed)):
                calls.append(task.index)  # counted when solved, not when handed over
                yield samples

    def make():
        return Counting(error_rate=0.2, spurious_rate=0.2, batch_size=16)

    common = dict(
        kind="procedural",
        seed=1,
        teacher=NOISY,
        task=TASK,
        cache_dir=str(tmp_path),
        teacher_factory=make,
    )
    small, _ = synthetic_dataset(size=30, **common)
    big, info = synthetic_dataset(size=60, **common)
    assert big[:30] == small
    assert sorted(calls) == list(
        range(len(calls))
    )  # every problem solved once: 60 extended 30's stream
    drawn = len(calls)
    again, _ = synthetic_dataset(size=45, **common)  # inside what is stored: no generation at all
    assert again == big[:45] and len(calls) == drawn
    stream = json.loads(next((tmp_path / synthetic.STREAM_NS).glob("*.meta.json")).read_text())
    assert stream["count"] == drawn >= info["problems_read"] and "size" not in stream["key"]


def test_labels_reference_filters_and_teacher_reports_noise():
    common = dict(kind="procedural", size=200, seed=0, teacher=NOISY, task=TASK)
    verified, info = synthetic_dataset(label="reference", **common)
    assert {r["verdict"] for r in verified} == {"clean", "spurious"}  # no wrong answer survives
    assert info["label_noise"] == 0 and 0.15 < info["spurious_fraction"] < 0.4
    assert all(r["first_wrong_step"] is not None for r in verified if r["verdict"] == "spurious")
    labelled, info = synthetic_dataset(label="teacher", **common)
    assert (
        info["problems_read"] == 200 and 0.1 < info["label_noise"] < 0.3
    )  # ~error_rate, now in the data
    wrong = [r for r in labelled if r["verdict"] == "wrong"]
    assert wrong and all(
        r["answer"] != r["reference"] for r in wrong
    )  # the teacher's answer is the label


def test_real_sources_read_local_files():
    files = dict(
        train_file=str(DATA / "gsm8k_train.jsonl"), test_file=str(DATA / "gsm8k_test.jsonl")
    )
    train, test, _ = build_split(
        source="gsm8k", kind="gsm8k", size=4, seed=0, test_size=3, test_seed=0, **files
    )
    more, _, _ = build_split(
        source="gsm8k", kind="gsm8k", size=6, seed=0, test_size=3, test_seed=0, **files
    )
    assert [e.prompt for e in more[:4]] == [e.prompt for e in train]  # n is a prefix of 2n
    assert "<<" not in "".join(e.solution for e in more) and train[0].solution.endswith(
        "#### " + train[0].answer
    )
    assert [e.answer for e in test] == ["7", "6", "16"] and test[0].prompt.endswith("?\n")
    with pytest.raises(
        ValueError, match=r"data.size=7 is larger than data.train_file=.*\(6 problems\)"
    ):
        build_split(source="gsm8k", kind="gsm8k", size=7, seed=0, test_size=3, test_seed=0, **files)
    m_train, m_test, _ = build_split(
        source="math",
        kind="math",
        size=4,
        seed=0,
        test_size=2,
        test_seed=0,
        train_file=str(DATA / "math_train.jsonl"),
        test_file=str(DATA / "math_test.jsonl"),
    )
    assert (
        sorted(e.answer for e in m_train) == ["14", "3", "6", "\\frac{3}{4}"]
        and m_test[1].answer == "7"
    )


def test_math_teacher_verifies_against_the_seed_answer(tmp_path):
    class Echo:  # a teacher that returns the seed's own solution, or a wrong one for one seed
        name, batch_size, aligned, mode, prompt_template = "echo", 2, False, "solve", "{question}"

        def key(self):
            return {"name": "echo"}

        def generate(self, tasks, seed):
            for t in tasks:
                yield [
                    {
                        "text": "So the answer is $\\boxed{99}$."
                        if "divisors" in t.question
                        else SOLUTIONS[t.question]
                    }
                ]

    from eightfold.data.seeds import load_seed_file

    SOLUTIONS = {s.question: s.solution for s in load_seed_file(DATA / "math_train.jsonl", "math")}
    records, info = synthetic_dataset(
        kind="math",
        size=3,
        seed=0,
        teacher={"name": "openai", "model": "m"},
        teacher_factory=Echo,
        train_file=str(DATA / "math_train.jsonl"),
        cache_dir=str(tmp_path),
    )
    assert len(records) == 3 and info["sample_verdicts"] == {"correct": 3, "wrong": 1}
    with pytest.raises(
        ValueError, match="the seed stream ends after 4 problems, giving 3 D_syn examples"
    ):
        synthetic_dataset(
            kind="math",
            size=4,
            seed=0,
            teacher={"name": "openai", "model": "m"},
            teacher_factory=Echo,
            train_file=str(DATA / "math_train.jsonl"),
            cache_dir=str(tmp_path),
        )


def test_parse_rewrite_is_strict_and_bounded():
    assert parse_rewrite("**Problem:** Ann has 2.\n**Solution:** 2 + 0 = 2\n#### 2") == (
        "Ann has 2.",
        "2 + 0 = 2\n#### 2",
    )
    assert (
        parse_rewrite("Solution: 4") is None and parse_rewrite("Problem: x\nSolution:   ") is None
    )
    assert (
        parse_rewrite("problem: " + "a" * 50_000) is None
    )  # no solution marker: no match, no hang


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            {"source": "teachers"},
            "data.source='teachers' is not valid: expected one of procedural, procedural_teacher",
        ),
        (
            {"source": "gsm8k_teacher"},
            "data.kind='procedural' does not fit data.source='gsm8k_teacher'",
        ),
        ({"label": "gold", "teacher": NOISY}, "data.label='gold' is not valid"),
        ({"source": "self"}, "data.source='self' is not valid"),
    ],
)
def test_bad_sources_name_the_value(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _split(**{"teacher": {"name": "procedural"}, **kw})


def test_validate_knows_every_source():
    assert set(validate.SOURCES) == set(SOURCES)


def test_data_configs_compose_into_a_source_sweep(tmp_path):
    """data=teacher and data=procedural share the test set; data.source is a sweep axis."""
    base = ["experiment=smoke", f"paths.root={tmp_path}"]
    modules = {}
    for name, overrides in {
        "procedural": ["data=procedural"],
        "same_in_teacher_cfg": ["data=teacher", "data.source=procedural"],
        "teacher": [
            "data=teacher",
            "data.teacher.error_rate=0.1",
            "data.teacher.spurious_rate=0.1",
        ],
    }.items():
        cfg = compose_cfg(base + overrides)
        validate.validate_config(cfg)
        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare_examples()
        modules[name] = dm
    ref = modules["procedural"]
    pairs = lambda dm: [(e.prompt, e.solution) for e in dm.train_examples]  # noqa: E731
    assert pairs(modules["same_in_teacher_cfg"]) == pairs(ref)
    for dm in modules.values():
        assert [e.prompt for e in dm.test_examples] == [e.prompt for e in ref.test_examples]
    teacher = modules["teacher"]
    assert len(teacher.train_examples) == ref.size and teacher.data_info["teacher"] == "procedural"
    assert list((tmp_path / "cache").glob("*/*.jsonl"))  # cached under paths.root/cache

    hf = compose_cfg(
        base + ["data=teacher", "teacher@data.teacher=hf", "data.teacher.model_path=/m"]
    )
    assert hf.data.teacher.name == "hf" and hf.data.teacher.samples == 1
    oa = compose_cfg(base + ["data=teacher", "teacher@data.teacher=openai"])
    assert oa.data.teacher.api_key_env == "OPENAI_API_KEY" and "api_key" not in oa.data.teacher
    gsm = compose_cfg(
        base
        + [
            "data=gsm8k",
            f"data.train_file={DATA / 'gsm8k_train.jsonl'}",
            f"data.test_file={DATA / 'gsm8k_test.jsonl'}",
            "data.size=5",
            "data.test_size=3",
            "data.source=gsm8k_teacher",
            "+teacher@data.teacher=openai",
        ]
    )
    validate.validate_config(gsm)
    assert (
        gsm.data.teacher.name == "openai" and instantiate(gsm.data, _convert_="all").kind == "gsm8k"
    )
    math_cfg = compose_cfg(
        base
        + [
            "data=math",
            f"data.train_file={DATA / 'math_train.jsonl'}",
            f"data.test_file={DATA / 'math_test.jsonl'}",
            "data.size=4",
            "data.test_size=2",
        ]
    )
    dm = instantiate(math_cfg.data, _convert_="all")
    dm.prepare_examples()
    assert len(dm.train_examples) == 4 and len(dm.test_examples) == 2


def test_seed_dataclass_defaults():
    s = Seed("x", "q?", None, "1", "gsm8k")
    assert s.problem is None
