"""The procedural testbed: determinism, nesting, held-out test set, solution orders, exact checks."""

from __future__ import annotations

import random

import pytest

from eightfold.data.arithmetic import (
    first_wrong_step,
    generate_problems,
    is_strictly_correct,
    pool_size,
)
from eightfold.data.examples import procedural_split
from eightfold.verify import is_correct, split_steps

TASK = dict(chains=2, steps=2, modulus=7)


def test_same_seed_same_problems_and_nested_sizes():
    a = generate_problems(200, seed=3, **TASK)
    b = generate_problems(400, seed=3, **TASK)
    assert [p.prompt for p in a] == [p.prompt for p in b[:200]]
    assert [p.prompt for p in generate_problems(50, seed=4, **TASK)] != [p.prompt for p in a[:50]]


def test_train_is_prefix_and_disjoint_from_test():
    train_small, test = procedural_split(100, 0, 200, 12345, **TASK)
    train_big, test2 = procedural_split(300, 0, 200, 12345, **TASK)
    assert [e.solution for e in train_small] == [e.solution for e in train_big[:100]]
    assert [e.prompt for e in test] == [e.prompt for e in test2]
    assert not {e.prompt for e in train_big} & {e.prompt for e in test}
    assert len({e.prompt for e in train_big}) == 300


def test_teacher_solutions_are_correct_and_use_several_orders():
    train, _ = procedural_split(300, 0, 10, 12345, **TASK)
    for e in train:
        assert is_strictly_correct(e.problem, e.solution), e.solution
        assert is_correct(e.solution, e.answer, "procedural")
    first_vars = {split_steps(e.solution)[0][0] for e in train}
    assert len(first_vars) >= 2  # chains are interleaved, not always solved in one order
    single, _ = procedural_split(50, 0, 10, 12345, chains=1, steps=4, modulus=7)
    assert any(e.solution != e.problem.solution() for e in single)  # operand order varies too
    p = max((e.problem for e in train), key=lambda q: q.num_valid_orders())
    traces = {p.solution(random.Random(i)) for i in range(3000)}
    assert len(traces) == p.num_valid_orders() > 6  # 6 interleavings x operand orders of + and *
    assert all(is_strictly_correct(p, t) for t in traces)


def test_values_mod_prime_and_no_multiplication_by_zero():
    for p in generate_problems(300, seed=1, **TASK):
        assert all(0 <= v < 7 for v in p.values().values())
        assert all(not (s.op == "*" and s.right == "0") for s in p.steps)


def test_first_wrong_step_finds_the_exact_step():
    p = generate_problems(1, seed=5, **TASK)[0]
    lines = split_steps(p.solution())
    assert first_wrong_step(p, p.solution()) is None
    for i in range(len(lines) - 1):
        bad = list(lines)
        var, rhs = bad[i].split("=", 1)
        result = int(rhs.rsplit("=", 1)[1])
        bad[i] = f"{var}={rhs.rsplit('=', 1)[0]}={(result + 1) % 7}"
        assert first_wrong_step(p, "\n".join(bad)) == i
    # a missing step: the answer line comes too early
    assert first_wrong_step(p, "\n".join(lines[:2] + lines[-1:])) == 2
    # a wrong final answer line
    wrong = lines[:-1] + [f"#{(p.answer + 1) % 7}"]
    assert first_wrong_step(p, "\n".join(wrong)) == len(lines) - 1
    # a step before its dependency (the join first)
    assert first_wrong_step(p, "\n".join([lines[-2]] + lines[:-2] + lines[-1:])) == 0
    assert first_wrong_step(p, "garbage") == 0


def test_pool_size_is_enforced():
    n = pool_size(1, 1, 3)  # 3 givens x (3 + 3 + 2) step choices = 24 problems
    assert n == 24
    assert len(generate_problems(n, seed=0, chains=1, steps=1, modulus=3)) == n
    with pytest.raises(ValueError, match="larger than the problem pool"):
        generate_problems(n + 1, seed=0, chains=1, steps=1, modulus=3)
