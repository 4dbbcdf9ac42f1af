"""Seed problems: what a teacher is asked to solve (or to imitate), from a file or the generator.

Two local JSONL formats are read (no hub):

* GSM8K  ``{"question": ..., "answer": "... reasoning ...\\n#### 72"}``
  (``openai/grade-school-math`` train/test files). ``<<48/2=24>>`` calculator annotations are
  dropped from the solution: they are a tool-use trace, not reasoning a student should copy.
* MATH   ``{"problem": ..., "solution": "... \\boxed{5} ..."}`` (Hendrycks MATH, MATH500); the
  answer is the last ``\\boxed{}`` of the solution, or the ``answer`` field when there is none.

The procedural generator is a third source: ``procedural_stream`` yields exactly the problems of
``arithmetic.generate_problems`` in the same order, but lazily, so a teacher stream can be
extended without knowing its final size.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eightfold.data.arithmetic import Problem, pool_size, random_problem
from eightfold.verify import extract_answer

FILE_KINDS = ("gsm8k", "math")
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")


@dataclass(frozen=True)
class Seed:
    id: str
    question: str
    solution: str | None  # the reference solution (real data); None when unknown
    answer: str | None  # the reference final answer; None when unknown (a teacher's new problem)
    kind: str  # verifier kind: procedural / gsm8k / math
    problem: Problem | None = None  # procedural only: exact step checks


def student_prompt(seed: Seed) -> str:
    """The prompt a student is trained on. Procedural prompts end in ``|`` and are used as is;
    natural-language questions get one newline so the solution starts on its own line."""
    return seed.question if seed.kind == "procedural" else seed.question.strip() + "\n"


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            out.append(rec)
    return out


def _field(rec: dict, name: str, where: str, fmt: str) -> str:
    value = rec.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{where}: a {fmt} record needs a non-empty string field {name!r}; fields present: {sorted(rec)}"
        )
    return value


def gsm8k_seed(rec: dict, where: str) -> Seed:
    question = _field(rec, "question", where, "GSM8K")
    solution = _CALCULATOR.sub("", _field(rec, "answer", where, "GSM8K")).strip()
    answer = extract_answer(solution, "gsm8k")
    if answer is None:
        raise ValueError(
            f"{where}: GSM8K 'answer' must end with one '#### <number>' line: {solution[-80:]!r}"
        )
    return Seed(str(rec.get("id", where)), question.strip(), solution, answer, "gsm8k")


def math_seed(rec: dict, where: str) -> Seed:
    question = _field(rec, "problem", where, "MATH")
    solution = _field(rec, "solution", where, "MATH").strip()
    answer = extract_answer(solution, "math") or (rec.get("answer") or "").strip() or None
    if answer is None:
        raise ValueError(
            f"{where}: MATH 'solution' has no \\boxed{{}} answer and there is no 'answer' field"
        )
    return Seed(
        str(rec.get("unique_id", rec.get("id", where))), question.strip(), solution, answer, "math"
    )


def load_seed_file(path: Path, kind: str) -> list[Seed]:
    """All problems of a local GSM8K- or MATH-format JSONL file, in file order."""
    if kind not in FILE_KINDS:
        raise ValueError(
            f"seed file kind {kind!r} is not valid: expected one of {', '.join(FILE_KINDS)}"
        )
    parse = gsm8k_seed if kind == "gsm8k" else math_seed
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"JSONL file {str(path)!r} holds no records")
    return [parse(rec, f"{Path(path).name}:{i + 1}") for i, rec in enumerate(records)]


def permuted(items: list, seed: int, salt: str = "") -> list:
    """A seeded shuffle (string-seeded, so it does not depend on hash randomisation)."""
    out = list(items)
    random.Random(f"permute-{salt}-{seed}").shuffle(out)
    return out


def procedural_stream(
    seed: int,
    chains: int,
    steps: int,
    modulus: int,
    exclude: set[str] | frozenset[str] = frozenset(),
    **variant: Any,
) -> Iterator[Problem]:
    """The problems of ``generate_problems(n, seed, ...)`` for every n, lazily, in the same order.
    ``variant``: the choice-variant keys of ``data.task`` (distractors, siblings).

    Must stay in step with ``arithmetic.generate_problems`` (tests/test_synthetic.py checks it).
    """
    rng = random.Random(seed)
    seen = set(exclude)
    limit = pool_size(chains, steps, modulus)
    while len(seen) < limit:  # the pool is finite: the stream ends instead of looping forever
        p = random_problem(rng, chains, steps, modulus, **variant)
        if p.prompt not in seen:
            seen.add(p.prompt)
            yield p


def procedural_seed(p: Problem, index: int) -> Seed:
    return Seed(f"proc-{index}", p.prompt, None, str(p.answer), "procedural", p)
