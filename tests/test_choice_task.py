"""The choice variant of the procedural task (data.task.distractors / siblings): prompts, the
reference solution, first_wrong_step on wrong choices, unneeded_steps, the teacher's distractor
kind, and defaults that leave today's task byte for byte where it was."""

from __future__ import annotations

import hashlib
import random

import pytest

from eightfold.data.arithmetic import (
    STEP_RE,
    first_wrong_step,
    generate_problems,
    parse_prompt,
    unneeded_steps,
)
from eightfold.data.examples import procedural_split
from eightfold.data.synthetic import build_split
from eightfold.data.teachers import ProceduralTeacher, Task
from eightfold.verify import is_correct, join_steps, split_steps
from tests.helpers import compose_cfg

CHOICE = dict(chains=1, steps=4, modulus=11, distractors=2, siblings=True)  # cpu_choice
VARIANTS = [
    CHOICE,
    dict(chains=1, steps=4, modulus=11, distractors=3, siblings=False),
    dict(chains=2, steps=2, modulus=7, distractors=3, siblings=True),
    dict(chains=2, steps=3, modulus=7, distractors=5, siblings=False),
]


def _line(problem, var: str) -> str:
    """The right step line of ``var``, operands in definition order."""
    s = next(s for s in problem.steps if s.var == var)
    env = problem.values()
    right = env[s.right] if s.right.isalpha() else int(s.right)
    return f"{var}={s.left}{s.op}{s.right}={env[s.left]}{s.op}{right}={env[var]}"


@pytest.mark.parametrize(
    "task, digest",
    [
        (dict(chains=2, steps=2, modulus=7), "264a0536cd64da25"),
        (dict(chains=1, steps=4, modulus=11), "b3cf15d6bdf17749"),
    ],
)
def test_defaults_leave_todays_problems_byte_identical(task, digest):
    # digests recorded with the code before the variant existed (commit b46a2ab)
    train, test = procedural_split(200, 0, 100, 12345, **task)
    text = "".join(e.prompt + e.solution for e in train + test)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest
    off = procedural_split(200, 0, 100, 12345, **task, distractors=0, siblings=False)
    assert [(e.prompt, e.solution) for e in off[0]] == [(e.prompt, e.solution) for e in train]
    assert all(e.problem.distractors == () for e in train)


def test_the_default_config_has_no_variant_keys_and_the_preset_turns_them_on():
    assert set(compose_cfg(["paths.root=/tmp/x"]).data.task) == {"chains", "steps", "modulus"}
    cfg = compose_cfg(["experiment=cpu_choice", "paths.root=/tmp/x"])
    assert dict(cfg.data.task) == CHOICE
    assert cfg.trainer.max_steps == 2000  # the rest is cpu_hard
    train, test = procedural_split(50, 0, 20, 12345, **cfg.data.task)
    longest = max(len(e.prompt) + len(e.solution) + 2 for e in train + test)
    assert longest <= cfg.model.n_positions  # char-level tokens, plus BOS/EOS


def test_the_teacher_source_serves_the_same_variant(tmp_path):
    train, test, _ = build_split(
        source="procedural_teacher",
        kind="procedural",
        size=30,
        seed=3,
        test_size=20,
        test_seed=99,
        task=CHOICE,
        teacher={"name": "procedural"},
        cache_dir=str(tmp_path),
    )
    ref_train, ref_test = procedural_split(30, 3, 20, 99, **CHOICE)
    assert [(e.prompt, e.solution) for e in train] == [(e.prompt, e.solution) for e in ref_train]
    assert [e.prompt for e in test] == [e.prompt for e in ref_test]
    assert all(len(e.problem.distractors) == 2 for e in train + test)


@pytest.mark.parametrize("task", VARIANTS, ids=lambda t: "-".join(map(str, t.values())))
def test_prompts_parse_and_distractors_are_never_needed(task):
    for p in generate_problems(200, 3, **task):
        q = parse_prompt(p.prompt, p.modulus)
        assert q.prompt == p.prompt and q.steps == p.steps and q.distractors == p.distractors
        assert len(p.distractors) == task["distractors"]
        # names in prompt order, every operand defined before it is read, the target last
        names = [v for v, _ in p.givens] + [s.var for s in p.steps]
        assert names == list("abcdefghijklmnopqrstuvwxyz"[: len(names)])
        for i, s in enumerate(p.steps):
            assert all(names.index(d) < len(p.givens) + i for d in (s.left, s.right) if d.isalpha())
        needed = p.needed()
        assert p.target in needed and p.target not in p.distractors
        assert needed.isdisjoint(p.distractors)
        assert needed | set(p.distractors) == {s.var for s in p.steps}
        if task["siblings"]:  # each distractor reads a needed step's operand, to another value
            env = p.values()
            for d in (s for s in p.steps if s.var in p.distractors):
                twins = [s for s in p.steps if s.var in needed and s.left == d.left and s is not d]
                assert any(env[t.var] != env[d.var] for t in twins)


@pytest.mark.parametrize("task", VARIANTS, ids=lambda t: "-".join(map(str, t.values())))
def test_the_reference_solution_verifies_and_skips_every_distractor(task):
    for i, p in enumerate(generate_problems(100, 4, **task)):
        for sol in (p.solution(), p.solution(random.Random(i))):
            assert first_wrong_step(p, sol) is None
            assert is_correct(sol, str(p.answer), "procedural")
            assert unneeded_steps(p, sol) == []
            computed = {STEP_RE.match(x).group(1) for x in split_steps(sol)[:-1]}
            assert computed == p.needed()


def test_a_computed_distractor_is_spurious_not_wrong():
    for p in generate_problems(50, 5, **CHOICE):
        # every definition in prompt order: right answer, each distractor line wasted
        lines = [_line(p, s.var) for s in p.steps] + [f"#{p.answer}"]
        everything = join_steps(lines)
        assert first_wrong_step(p, everything) is None
        assert unneeded_steps(p, everything) == [
            i for i, s in enumerate(p.steps) if s.var in p.distractors
        ]
        # a distractor after the last needed step, just before the answer: still fine
        ref = split_steps(p.solution())
        late = join_steps(ref[:-1] + [_line(p, p.distractors[0])] + ref[-1:])
        assert first_wrong_step(p, late) is None and unneeded_steps(p, late) == [len(ref) - 1]
        # computed twice: the repeat is both wrong and unneeded
        twice = join_steps(ref[:1] + ref[:1] + ref[1:])
        assert first_wrong_step(p, twice) == 1 and unneeded_steps(p, twice) == [1]


def test_first_wrong_step_finds_the_wrong_choice():
    reads = early_ones = 0
    for p in generate_problems(50, 6, **CHOICE):
        env, needed = p.values(), p.needed()
        ref = split_steps(p.solution())
        d = next(s for s in p.steps if s.var == p.distractors[0])
        # the needed step that reads the distractor's operand (its twin: siblings)
        i, twin = next(
            (i, s)
            for i, s in enumerate(s for s in p.steps if s.var in needed)
            if s.left == d.left and env[s.var] != env[d.var]
        )
        # 1. the twin computed with the sibling's op and digit (a plausible wrong operation)
        wrong_op = list(ref)
        wrong_op[i] = (
            f"{twin.var}={d.left}{d.op}{d.right}={env[d.left]}{d.op}{d.right}={env[d.var]}"
        )
        assert first_wrong_step(p, join_steps(wrong_op)) == i
        # 2. the sibling computed instead of the twin, and its value read where the twin's belongs
        if i + 1 < len(ref) - 1:
            nxt = next(s for s in p.steps if s.var == STEP_RE.match(ref[i + 1]).group(1))
            assert nxt.left == twin.var  # one chain: the next step reads the twin
            value, right = env[d.var], int(nxt.right)
            result = {"+": value + right, "-": value - right, "*": value * right}[nxt.op] % 11
            read = f"{nxt.var}={nxt.left}{nxt.op}{nxt.right}={value}{nxt.op}{right}={result}"
            chose = ref[:i] + [_line(p, d.var), read] + ref[i + 2 :]
            assert unneeded_steps(p, join_steps(chose)) == [i]
            assert first_wrong_step(p, join_steps(chose)) == i + 1  # the read, not the choice
            # the same read under the sibling's name
            by_name = read.replace(f"={nxt.left}{nxt.op}", f"={d.var}{nxt.op}", 1)
            chose = ref[:i] + [_line(p, d.var), by_name] + ref[i + 2 :]
            assert first_wrong_step(p, join_steps(chose)) == i + 1
            reads += 1
        # 3. a distractor computed before the value it reads
        if d.left in needed:
            k = next(k for k, x in enumerate(ref) if x.startswith(f"{d.left}="))
            early = join_steps(ref[:k] + [_line(p, d.var)] + ref[k:])
            assert first_wrong_step(p, early) == k
            early_ones += 1
        # 4. a distractor computed wrong is a wrong step (and still an unneeded one)
        k = next((k + 1 for k, x in enumerate(ref) if x.startswith(f"{d.left}=")), 0)
        bad = _line(p, d.var).rsplit("=", 1)[0] + f"={(env[d.var] + 1) % 11}"
        slip = join_steps(ref[:k] + [bad] + ref[k:])
        assert first_wrong_step(p, slip) == k and unneeded_steps(p, slip) == [k]
    assert reads > 20 and early_ones > 20  # both constructions were checked on many problems


def test_the_teacher_inserts_a_distractor_labelled_by_unneeded_steps(tmp_path):
    teacher = ProceduralTeacher(spurious_rate=1.0, spurious_kinds=["distractor"])
    for task, fallback in [(CHOICE, False), (dict(chains=1, steps=4, modulus=11), True)]:
        problems = generate_problems(100, 7, **task)
        tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
        for p, (s,) in zip(problems, teacher.generate(tasks, seed=7), strict=True):
            assert s["injected"] == "spurious:distractor"
            assert is_correct(s["text"], str(p.answer), "procedural")
            assert unneeded_steps(p, s["text"]) == [s["injected_step"]]
            # on the base task there is no distractor: an invented extra step (a wrong step)
            expected = s["injected_step"] if fallback else None
            assert first_wrong_step(p, s["text"]) == expected
    with pytest.raises(ValueError, match="spurious_kinds=\\['typo'\\] is not valid"):
        ProceduralTeacher(spurious_kinds=["typo"])
    # D_syn's verdict counts the wasted step: spurious, not clean
    _, _, info = build_split(
        source="procedural_teacher",
        kind="procedural",
        size=20,
        seed=7,
        test_size=10,
        test_seed=99,
        task=CHOICE,
        teacher={"name": "procedural", "spurious_rate": 1.0, "spurious_kinds": ["distractor"]},
        cache_dir=str(tmp_path),
    )
    assert info["example_verdicts"] == {"spurious": 20}


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(distractors=-1), "data.task.distractors=-1 is not valid: expected an integer >= 0"),
        (dict(distractors=True), "data.task.distractors=True is not valid"),
        (dict(distractors=20), "data.task.distractors=20 is not valid: .* use at most 19"),
        (dict(distractors=1, siblings="yes"), "data.task.siblings='yes' is not valid"),
    ],
)
def test_bad_variant_values_name_the_value(kw, message):
    with pytest.raises(ValueError, match=message):
        generate_problems(5, 0, chains=2, steps=2, modulus=7, **kw)


def test_parse_prompt_refuses_other_text():
    with pytest.raises(ValueError, match="is not a procedural prompt"):
        parse_prompt("a=3,b=a+1", 7)
    with pytest.raises(ValueError, match="the target 'b' is not the last definition"):
        parse_prompt("a=3,b=a+1,c=b*2?b|", 7)
