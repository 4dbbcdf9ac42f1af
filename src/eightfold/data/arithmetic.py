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

Choice variant (``data.task.distractors``, ``data.task.siblings``; off by default, docs/testbed.md):
``distractors=k`` inserts k dead-end definitions the target does not depend on among the real
ones (every variable then renamed in prompt order, so a name says nothing), so each step is a
choice of which definition to evaluate next; computing one is wasted but not wrong (spurious:
``unneeded_steps``). ``siblings`` makes each distractor read the operand of a needed step with
another op or digit (a plausible wrong operation): confusing the two gives a wrong value.
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
    distractors: tuple[str, ...] = field(default=())  # defined in the prompt, never needed

    @property
    def target(self) -> str:
        return self.steps[-1].var  # distractors are inserted before it: the target stays last

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

    def needed(self) -> set[str]:
        """The variables the target depends on, itself included: what a solution must compute."""
        by_var = {s.var: s for s in self.steps}
        out: set[str] = set()
        todo = [self.target]
        while todo:
            v = todo.pop()
            if v not in out:
                out.add(v)
                todo.extend(self.dependencies(by_var[v]))
        return out

    def solution(self, rng: random.Random | None = None) -> str:
        """A correct step-by-step solution.

        With ``rng`` it is one of the valid traces drawn at random: a uniform interleaving of the
        chains, and each commutative step (``+``, ``*``) written in either operand order.
        """
        order = (
            self._interleave(rng)
            if rng is not None
            else [s.var for s in self.steps if s.var not in self.distractors]
        )
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
        skip = {v for chain in self.chains for v in chain} | set(self.distractors)
        order += [s.var for s in self.steps if s.var not in skip]
        return order

    def num_valid_orders(self) -> int:
        """Number of distinct correct traces: chain interleavings x operand orders of + and *."""
        lengths = [len(c) for c in self.chains]
        interleavings = math.factorial(sum(lengths)) // math.prod(
            math.factorial(n) for n in lengths
        )
        swaps = sum(
            1
            for s in self.steps
            if s.op in COMMUTATIVE and s.left != s.right and s.var not in self.distractors
        )
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


def check_variant(chains: int, steps: int, distractors: int, siblings: bool) -> None:
    """One clear error for a bad choice-variant key (``data.task.distractors`` / ``siblings``)."""
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise ValueError(
            f"data.task.distractors={distractors!r} is not valid: expected an integer >= 0"
        )
    if not isinstance(siblings, bool):
        raise ValueError(f"data.task.siblings={siblings!r} is not valid: expected true or false")
    room = len(_var_names()) - max_variables(chains, steps)
    if distractors > room:
        raise ValueError(
            f"data.task.distractors={distractors} is not valid: chains={chains}, steps={steps}"
            f" leave {max(room, 0)} of the 26 variable names (a-z), so use at most {max(room, 0)}"
        )


def random_problem(
    rng: random.Random,
    chains: int,
    steps: int,
    modulus: int,
    *,
    distractors: int = 0,
    siblings: bool = False,
) -> Problem:
    names = _var_names()
    if max_variables(chains, steps) > len(names):
        raise ValueError(
            f"chains={chains}, steps={steps} needs {max_variables(chains, steps)} variables; "
            f"at most {len(names)} are available"
        )
    check_variant(chains, steps, distractors, siblings)
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
    problem = Problem(givens, tuple(step_list), modulus, tuple(chain_vars))
    # The variant draws after the base problem: without distractors no draw changes.
    return add_distractors(problem, rng, distractors, siblings) if distractors else problem


def _digits(op: str, modulus: int) -> range:
    return range(1, modulus) if op == "*" else range(modulus)


def add_distractors(problem: Problem, rng: random.Random, k: int, siblings: bool) -> Problem:
    """``problem`` with ``k`` dead-end definitions inserted among its own (never after the target).

    1. Each distractor reads one earlier variable: with ``siblings`` the operand of a random
       chain step, with another op or digit and a different value (a plausible wrong operation);
       otherwise any given or earlier definition but the target (so dead-end branches can be deep).
    2. It goes at a random position after its operand's definition and before the target.
    3. Every variable is renamed in prompt order (a, b, ...), as in the base task.
    """
    m = problem.modulus
    env = problem.values()
    defs = list(problem.steps)
    givens = [v for v, _ in problem.givens]
    chain_steps = [s for s in problem.steps if any(s.var in c for c in problem.chains)]
    temps = []
    for j in range(k):
        temp = f"D{j}"  # a placeholder name (upper case: no clash), renamed below
        if siblings:
            twin = rng.choice(chain_steps)
            operand = twin.left
            options = [
                (op, d)
                for op in OPS
                for d in _digits(op, m)
                if apply(op, env[operand], d, m) != env[twin.var]
            ]
            op, digit = rng.choice(options)
        else:
            operand = rng.choice(givens + [s.var for s in defs[:-1]])
            op = rng.choice(OPS)
            digit = rng.choice(_digits(op, m))
        env[temp] = apply(op, env[operand], digit, m)
        lo = next((i + 1 for i, s in enumerate(defs) if s.var == operand), 0)
        defs.insert(rng.randint(lo, len(defs) - 1), Step(temp, operand, op, str(digit)))
        temps.append(temp)
    names = iter(_var_names())
    rename = {v: next(names) for v in givens}  # the givens keep their names
    rename.update({s.var: next(names) for s in defs})

    def r(token: str) -> str:
        return rename.get(token, token)  # digits stay

    steps = tuple(Step(r(s.var), r(s.left), s.op, r(s.right)) for s in defs)
    chains = tuple(tuple(r(v) for v in c) for c in problem.chains)
    dead = {r(t) for t in temps}
    return Problem(problem.givens, steps, m, chains, tuple(s.var for s in steps if s.var in dead))


def parse_prompt(prompt: str, modulus: int) -> Problem:
    """The problem a prompt states (``a=3,...,c=a*4,...?g|``): givens, definitions, distractors.

    Chains are not recovered (they only set the teacher's interleavings). Raises ValueError
    naming the prompt if it is not in the task's format."""
    m = re.fullmatch(r"((?:[a-z]=[^,?]+,)*[a-z]=[^,?]+)\?([a-z])\|", prompt)
    if m is None:
        raise ValueError(f"prompt {prompt!r} is not a procedural prompt: expected 'a=3,...?x|'")
    givens, steps = [], []
    for item in m.group(1).split(","):
        given = re.fullmatch(r"([a-z])=(\d+)", item)
        step = re.fullmatch(r"([a-z])=([a-z])([+\-*])([a-z]|\d+)", item)
        if given and not steps:
            givens.append((given.group(1), int(given.group(2))))
        elif step:
            steps.append(Step(*step.groups()))
        else:
            raise ValueError(f"prompt {prompt!r}: {item!r} is not a given or a definition")
    problem = Problem(tuple(givens), tuple(steps), modulus)
    if problem.target != m.group(2):
        raise ValueError(f"prompt {prompt!r}: the target {m.group(2)!r} is not the last definition")
    needed = problem.needed()
    dead = tuple(s.var for s in steps if s.var not in needed)
    return Problem(problem.givens, problem.steps, modulus, distractors=dead)


def generate_problems(
    n: int,
    seed: int,
    chains: int = 2,
    steps: int = 2,
    modulus: int = 7,
    exclude: set[str] | frozenset[str] = frozenset(),
    *,
    distractors: int = 0,
    siblings: bool = False,
) -> list[Problem]:
    """The first ``n`` distinct problems of the stream ``seed``, skipping prompts in ``exclude``.

    Nested by construction: the first n problems of a size-2n call are the size-n problems.
    ``distractors`` / ``siblings``: the choice variant (``add_distractors``); its pool is larger
    than ``pool_size`` counts, so the check below is conservative for it.
    """
    check_variant(chains, steps, distractors, siblings)
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
        p = random_problem(rng, chains, steps, modulus, distractors=distractors, siblings=siblings)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def first_wrong_step(problem: Problem, solution: str) -> int | None:
    """Index (into ``split_steps(solution)``) of the first wrong step; ``None`` if the trace is right.

    A step is wrong if it is malformed, defines an unknown or already computed variable, comes
    before its dependencies, or has a wrong operand value, op or result. If every step is right
    but a needed step is missing or the answer line is wrong, the answer line (or the position
    where it should be) is the first wrong step. A right step that computes a variable the target
    does not need (a distractor) is not wrong: it is spurious (``unneeded_steps``).

    Another task's problem (``data/star_graph.py``) answers with its own ``first_wrong_step``.
    """
    if not isinstance(problem, Problem):
        return problem.first_wrong_step(solution)
    lines = split_steps(solution)
    truth = problem.values()
    by_var = {s.var: s for s in problem.steps}
    needed = problem.needed()
    done: set[str] = set()
    for i, line in enumerate(lines):
        answer = ANSWER_RE.match(line)
        if answer is not None and needed <= done:
            ok = int(answer.group(1)) == truth[problem.target] and i == len(lines) - 1
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


def unneeded_steps(problem: Problem, solution: str) -> list[int]:
    """Indices (into ``split_steps(solution)``) of the spurious steps: step lines whose variable
    the target does not depend on (a distractor, an invented variable) or that compute a variable
    again. Right or wrong does not matter here (``first_wrong_step`` says that); on the base task
    a solution ``first_wrong_step`` accepts has none."""
    needed = problem.needed()
    seen: set[str] = set()
    out = []
    for i, line in enumerate(split_steps(solution)):
        m = STEP_RE.match(line)
        if m is None:
            continue
        var = m.group(1)
        if var not in needed or var in seen:
            out.append(i)
        seen.add(var)
    return out


def insert_distractor(
    problem: Problem, solution: str, rng: random.Random
) -> tuple[str, int] | None:
    """The teacher's ``distractor`` spurious kind: one of the prompt's distractor definitions,
    computed right, inserted after its operand's line and before the answer line. Returns
    (solution, index of the inserted step), or ``None`` if the problem has no distractor that
    reads only needed variables (then the caller picks another kind)."""
    dead = set(problem.distractors)
    ready = [s for s in problem.steps if s.var in dead and not dead & set(problem.dependencies(s))]
    if not ready:
        return None
    s = rng.choice(ready)
    lines = split_steps(solution)
    deps = set(problem.dependencies(s))
    lo = max((i + 1 for i, x in enumerate(lines) if x.split("=", 1)[0] in deps), default=0)
    step = rng.randint(lo, len(lines) - 1)  # up to just before the answer line
    env = problem.values()
    left, right = env[s.left], _operand(s.right, env)
    lines.insert(step, f"{s.var}={s.left}{s.op}{s.right}={left}{s.op}{right}={env[s.var]}")
    return join_steps(lines), step


def is_strictly_correct(problem: Problem, solution: str) -> bool:
    return first_wrong_step(problem, solution) is None
