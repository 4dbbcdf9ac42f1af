"""The examples of a run: a prompt, a reference solution and its final answer.

The procedural source draws the first ``size`` problems of a seeded stream (so size n is a
prefix of size 2n) and a fixed held-out test set that never appears in training. Every other
source builds its examples in :mod:`eightfold.data.synthetic`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from eightfold.data.arithmetic import Problem, generate_problems


@dataclass
class Example:
    prompt: str
    solution: str
    answer: str
    problem: Problem | None = None  # procedural only: gives exact step checks
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
