"""The examples of a run: a prompt, a reference solution and its final answer.

The procedural source draws the first ``size`` problems of a seeded stream (so size n is a
prefix of size 2n) and a fixed held-out test set that never appears in training. The star graph
builds its examples in :mod:`eightfold.data.star_graph`, every other source in
:mod:`eightfold.data.synthetic`. ``procedural_pool``: the fresh problems of
``objective.sample_prompts=pool`` (``MathDataModule.pool_examples``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eightfold.data.arithmetic import Problem, generate_problems

if TYPE_CHECKING:  # star_graph builds Examples: importing it at run time would be a cycle
    from eightfold.data.star_graph import StarGraph

# objective.sample_prompts=pool draws its problems from this stream offset of data.seed (apart
# from the training stream, the same for every objective of a run)
POOL_SEED_OFFSET = 1_000_003


@dataclass
class Example:
    prompt: str
    solution: str
    answer: str
    # the generator's problem (procedural sources, star graph): exact step checks through
    # arithmetic.first_wrong_step; None for data with only a reference answer
    problem: Problem | StarGraph | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def procedural_split(
    size: int,
    seed: int,
    test_size: int,
    test_seed: int,
    chains: int,
    steps: int,
    modulus: int,
    **variant: Any,
) -> tuple[list[Example], list[Example]]:
    """(train, test). Test problems come from their own stream; training skips their prompts.
    ``variant``: the choice-variant keys of ``data.task`` (``arithmetic.generate_problems``)."""
    test = generate_problems(test_size, test_seed, chains, steps, modulus, **variant)
    exclude = {p.prompt for p in test}
    train = generate_problems(size, seed, chains, steps, modulus, exclude=exclude, **variant)

    # The teacher writes one uniformly random valid order per problem, seeded per problem index
    # so that the first n solutions do not depend on the total size.
    def to_example(p: Problem, i: int, stream: int) -> Example:
        sol = p.solution(random.Random(f"teacher-{stream}-{i}"))
        return Example(p.prompt, sol, str(p.answer), p)

    return [to_example(p, i, seed) for i, p in enumerate(train)], [
        to_example(p, i, test_seed) for i, p in enumerate(test)
    ]


def procedural_pool(
    size: int,
    seed: int,
    avoid: Iterable[Example],
    chains: int,
    steps: int,
    modulus: int,
    **variant: Any,
) -> list[Example]:
    """``objective.sample_prompts=pool`` for the arithmetic task (procedural and
    procedural_teacher): ``size`` generator problems from the stream ``seed`` whose prompts are
    not in ``avoid`` (train and test), each with a generator solution and the true answer."""
    exclude = {e.prompt for e in avoid}
    problems = generate_problems(size, seed, chains, steps, modulus, exclude=exclude, **variant)
    return [
        Example(p.prompt, p.solution(random.Random(f"pool-{seed}-{i}")), str(p.answer), p)
        for i, p in enumerate(problems)
    ]
