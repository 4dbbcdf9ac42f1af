"""The embedded testbed: procedurally generated multi-step modular arithmetic problems.

A problem gives one digit per chain, then defines each chain as a sequence of steps
``v = previous op digit`` and joins the chain ends with ``-``. Example (2 chains of 2 steps):

    prompt:    a=3,b=5,c=a*4,d=c+1,e=b-2,f=e*3,g=d-f?g|
    solution:  e=b-2=5-2=3
               c=a*4=3*4=5
               f=e*3=3*3=2
               d=c+1=5+1=6
               g=d-f=6-2=4
               #4

Design choices, measured (docs/testbed.md#why-it-looks-like-this):
- values modulo a prime and every step injective in its operand (no ``*0``, no ``x*x``): a
  wrong step really changes the answer, so "correct answer" nearly always means "correct trace";
- independent chains can be solved in any interleaving: self-generated correct solutions can
  differ from the teacher's, which RFT needs;
- the join is ``-`` (not commutative) so swapping the two chains' values gives a wrong answer;
- the generator knows the exact first wrong step of any solution (``first_wrong_step``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from eightfold.verify import join_steps, split_steps

OPS = "+-*"
COMMUTATIVE = "+*"
# A step restates its definition, substitutes the operand values, then gives the result:
# "c=a*4=3*4=5". Each token then needs one look-up (the definition in the prompt, or a value in
# an earlier line), which a 2-layer model learns far faster than the fused "c=3*4=5".
STEP_RE = re.compile(r"^([a-z])=([a-z]|\d+)([+\-*])([a-z]|\d+)=(\d+)([+\-*])(\d+)=(\d+)$")
ANSWER_RE = re.compile(r"^#(\d+)$")


@dataclass(frozen=True)
class Step:
    """One definition ``var = left op right``; ``left`` is a variable, ``right`` a variable or digit."""

    var: str
    left: str
    op: str
    right: str  # a variable name or a digit


@dataclass(frozen=True)
class Problem:
    givens: tuple[tuple[str, int], ...]
    steps: tuple[Step, ...]
    modulus: int
    chains: tuple[tuple[str, ...], ...] = field(default=())  # variable names per chain

    @property
    def target(self) -> str:
        return self.steps[-1].var

    @property
    def prompt(self) -> str:
        given = ",".join(f"{v}={x}" for v, x in self.givens)
        defs = ",".join(f"{s.var}={s.left}{s.op}{s.right}" for s in self.steps)
        return f"{given},{defs}?{self.target}|"

    def values(self) -> dict[str, int]:
        env = dict(self.givens)
        for s in self.steps:
            env[s.var] = apply(s.op, env[s.left], _operand(s.right, env), self.modulus)
        return env

    @property
    def answer(self) -> int:
        return self.values()[self.target]

    def dependencies(self, step: Step) -> tuple[str, ...]:
        defined = {s.var for s in self.steps}
        return tuple(v for v in (step.left, step.right) if v in defined)

    def solution(self, rng: random.Random | None = None) -> str:
        """A correct step-by-step solution.

        With ``rng`` it is one of the valid traces drawn at random: a uniform interleaving of the
        chains, and each commutative step (``+``, ``*``) written in either operand order.
        """
        order = self._interleave(rng) if rng is not None else [s.var for s in self.steps]
        env = self.values()
        by_var = {s.var: s for s in self.steps}
        lines = []
        for v in order:
            s = by_var[v]
            left, right = s.left, s.right
            if rng is not None and s.op in COMMUTATIVE and rng.random() < 0.5:
                left, right = right, left
            lines.append(
                f"{v}={left}{s.op}{right}={_operand(left, env)}{s.op}{_operand(right, env)}={env[v]}"
            )
        lines.append(f"#{env[self.target]}")
        return join_steps(lines)

    def _interleave(self, rng: random.Random) -> list[str]:
        # A uniform random interleaving of the chains: draw the chain of each slot from a shuffled
        # multiset of chain labels; the joins come last in their fixed order.
        labels = [i for i, chain in enumerate(self.chains) for _ in chain]
        rng.shuffle(labels)
        cursors = [0] * len(self.chains)
        order = []
        for i in labels:
            order.append(self.chains[i][cursors[i]])
            cursors[i] += 1
        chain_vars = {v for chain in self.chains for v in chain}
        order += [s.var for s in self.steps if s.var not in chain_vars]
        return order

    def num_valid_orders(self) -> int:
        """Number of distinct correct traces: chain interleavings x operand orders of + and *."""
        lengths = [len(c) for c in self.chains]
        interleavings = math.factorial(sum(lengths)) // math.prod(
            math.factorial(n) for n in lengths
        )
        swaps = sum(1 for s in self.steps if s.op in COMMUTATIVE and s.left != s.right)
        return interleavings * 2**swaps


def apply(op: str, x: int, y: int, modulus: int) -> int:
    if op == "+":
        return (x + y) % modulus
    if op == "-":
        return (x - y) % modulus
    return (x * y) % modulus


def _operand(token: str, env: dict[str, int]) -> int:
    return env[token] if token.isalpha() else int(token)


def _var_names() -> list[str]:
    return list("abcdefghijklmnopqrstuvwxyz")


def max_variables(chains: int, steps: int) -> int:
    return chains + chains * steps + (chains - 1)


def pool_size(chains: int, steps: int, modulus: int) -> int:
    """Number of distinct problems the generator can produce (prompts are distinct by construction)."""
    step_choices = 2 * modulus + (modulus - 1)  # + or - any digit, * any non-zero digit
    return modulus**chains * step_choices ** (chains * steps)


def random_problem(rng: random.Random, chains: int, steps: int, modulus: int) -> Problem:
    names = _var_names()
    if max_variables(chains, steps) > len(names):
        raise ValueError(
            f"chains={chains}, steps={steps} needs {max_variables(chains, steps)} variables; "
            f"at most {len(names)} are available"
        )
    givens = tuple((names[i], rng.randrange(modulus)) for i in range(chains))
    nxt = chains
    step_list: list[Step] = []
    chain_vars: list[tuple[str, ...]] = []
    for c in range(chains):
        prev, vars_c = names[c], []
        for _ in range(steps):
            op = rng.choice(OPS)
            digit = rng.randrange(1, modulus) if op == "*" else rng.randrange(modulus)
            var = names[nxt]
            nxt += 1
            step_list.append(Step(var, prev, op, str(digit)))
            vars_c.append(var)
            prev = var
        chain_vars.append(tuple(vars_c))
    # Join chain ends left to right with "-" (non-commutative, injective in both operands).
    acc = chain_vars[0][-1] if steps else names[0]
    for c in range(1, chains):
        right = chain_vars[c][-1] if steps else names[c]
        var = names[nxt]
        nxt += 1
        step_list.append(Step(var, acc, "-", right))
        acc = var
    return Problem(givens, tuple(step_list), modulus, tuple(chain_vars))


def generate_problems(
    n: int,
    seed: int,
    chains: int = 2,
    steps: int = 2,
    modulus: int = 7,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[Problem]:
    """The first ``n`` distinct problems of the stream ``seed``, skipping prompts in ``exclude``.

    Nested by construction: the first n problems of a size-2n call are the size-n problems.
    """
    available = pool_size(chains, steps, modulus) - len(exclude)
    if n > available:
        raise ValueError(
            f"data size {n} is larger than the problem pool: chains={chains}, steps={steps}, "
            f"modulus={modulus} give {available} distinct problems outside the test set; "
            f"use a size <= {available} or raise data.steps / data.chains"
        )
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Problem] = []
    while len(out) < n:
        p = random_problem(rng, chains, steps, modulus)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def first_wrong_step(problem: Problem, solution: str) -> int | None:
    """Index (into ``split_steps(solution)``) of the first wrong step; ``None`` if the trace is right.

    A step is wrong if it is malformed, defines an unknown or already computed variable, comes
    before its dependencies, or has a wrong operand value, op or result. If every step is right
    but a step is missing or the answer line is wrong, the answer line (or the position where it
    should be) is the first wrong step.
    """
    lines = split_steps(solution)
    truth = problem.values()
    by_var = {s.var: s for s in problem.steps}
    done: set[str] = set()
    for i, line in enumerate(lines):
        if len(done) == len(problem.steps):
            m = ANSWER_RE.match(line)
            ok = m is not None and int(m.group(1)) == truth[problem.target] and i == len(lines) - 1
            return None if ok else i
        m = STEP_RE.match(line)
        if m is None:
            return i
        var, left_name, op_name, right_name, left, op, right, result = m.groups()
        s = by_var.get(var)
        if s is None or var in done or any(d not in done for d in problem.dependencies(s)):
            return i
        if op_name in COMMUTATIVE and (left_name, right_name) == (s.right, s.left):
            left, right = right, left  # the operands of + and * may be written in either order
        elif (left_name, right_name) != (s.left, s.right):
            return i
        if (
            op_name != s.op
            or op != s.op
            or int(left) != truth[s.left]
            or int(right) != _operand(s.right, truth)
            or int(result) != truth[var]
        ):
            return i
        done.add(var)
    return len(lines)


def is_strictly_correct(problem: Problem, solution: str) -> bool:
    return first_wrong_step(problem, solution) is None
