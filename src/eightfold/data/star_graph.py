"""The paper's didactic task: path-star graphs (Bachmann & Nagarajan 2024, arXiv 2403.06963).

A graph G(d, l) has a source with ``degree`` d arms of ``path_length - 1`` nodes each, edges
pointing outward, listed in a shuffled order; the goal is the last node of one arm. The answer is
the unique path from the source to the goal (``path_length`` nodes, source and goal included).
B&N's serialised line with one character per node (the char-level models' vocabulary), e.g.
d=2, l=4 on the first 20 letters:

    prompt:    k,d|d,q|k,t|q,z|t,b|b,m/k,z=
    solution:  k
               d
               q
               z

One node per line, so ``verify.split_steps`` gives one step per node and the verifier (kind
``star_graph``) asks for exactly this path. Why the task is hard for next-token training (the
"Clever Hans" shortcut): every node after the first one is the unique child of the previous
node, a lookup teacher forcing hands the model; the first node after the source must be found
by walking back from the goal, and gets almost no gradient of its own. docs/testbed.md#the-star-graph.

The closed-form first pit: a prefix that leaves the path can never end correct, so the first
wrong step of a solution is the first node that differs from the path (the first node after the
source for a model that picks a wrong arm), and Monte Carlo step values have their pit there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from eightfold.data.examples import Example
from eightfold.verify import join_steps, split_steps

LABELS = "abcdefghijklmnopqrstuvwxyz"  # one character per node: num_nodes <= 26


@dataclass(frozen=True)
class StarGraph:
    edges: tuple[tuple[str, str], ...]  # (parent, child), in the shuffled prompt order
    source: str
    goal: str
    path: tuple[str, ...]  # source .. goal

    @property
    def prompt(self) -> str:
        edges = "|".join(f"{a},{b}" for a, b in self.edges)
        return f"{edges}/{self.source},{self.goal}="

    @property
    def answer(self) -> str:
        """The reference the verifier compares with: the path, comma-separated."""
        return ",".join(self.path)

    @property
    def key(self) -> str:
        """The graph, not its edge order: two shuffles of one graph are one problem."""
        return "|".join(sorted(a + b for a, b in self.edges)) + f"/{self.source}{self.goal}"

    def solution(self) -> str:
        return join_steps(list(self.path))

    def first_wrong_step(self, solution: str) -> int | None:
        """Index (into ``split_steps(solution)``) of the first node off the path; ``None`` if the
        solution is the path. A missing node counts at the line where it should be, an extra one
        at the first line past the goal."""
        lines = split_steps(solution)
        for i, (got, want) in enumerate(zip(lines, self.path)):
            if got != want:
                return i
        return None if len(lines) == len(self.path) else min(len(lines), len(self.path))


def check_task(
    degree: int,
    path_length: int,
    num_nodes: int,
    size: int = 0,
    test_size: int = 0,
    cue: float | None = None,
) -> None:
    """Raise ValueError (one line: the bad value and what would be valid) for a graph that cannot
    be built, or a data or test size larger than the number of distinct graphs."""
    if cue is not None and (
        isinstance(cue, bool) or not isinstance(cue, (int, float)) or not 0.0 <= cue <= 1.0
    ):
        raise ValueError(
            f"data.task.cue={cue!r} is not valid: expected null (no cue) or a probability in [0, 1]"
        )
    for key, value, low in (("degree", degree, 1), ("path_length", path_length, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"data.task.{key}={value!r} is not valid: expected an integer >= {low}"
            )
    need = 1 + degree * (path_length - 1)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes > len(LABELS):
        raise ValueError(
            f"data.task.num_nodes={num_nodes!r} is not valid: node labels are single letters,"
            f" so at most {len(LABELS)}"
        )
    if num_nodes < need:
        raise ValueError(
            f"data.task.num_nodes={num_nodes} is too small: degree={degree},"
            f" path_length={path_length} use 1 + degree*(path_length-1) = {need} distinct nodes;"
            f" use {need} <= num_nodes <= {len(LABELS)}"
        )
    pool = pool_size(degree, path_length, num_nodes)
    if test_size >= pool or size > pool - test_size:
        raise ValueError(
            f"data.size={size} + data.test_size={test_size} is larger than the problem pool:"
            f" degree={degree}, path_length={path_length}, num_nodes={num_nodes} give {pool}"
            " distinct graphs; lower the sizes or raise data.task.num_nodes"
        )


def pool_size(degree: int, path_length: int, num_nodes: int) -> int:
    """Distinct graphs: a source, an ordered goal arm, and an unordered set of d-1 ordered arms."""
    arm = path_length - 1
    return num_nodes * math.perm(num_nodes - 1, degree * arm) // math.factorial(degree - 1)


def random_graph(
    rng: random.Random, degree: int, path_length: int, num_nodes: int, cue: float | None = None
) -> StarGraph:
    """B&N's generator (``data/graphs.py: star_graph``) with letters for node numbers.

    ``cue``: the probability that the source's edge into the goal arm is the first source edge
    of the listing (a shortcut that predicts the first node; 1/d without it). ``None`` draws
    nothing more from ``rng``, so graphs without a cue are B&N's stream unchanged.
    """
    arm = path_length - 1
    # 1. the source and d arms of l-1 distinct nodes; the first arm leads to the goal
    nodes = rng.sample(LABELS[:num_nodes], 1 + degree * arm)
    source, arms = nodes[0], [nodes[1 + i * arm : 1 + (i + 1) * arm] for i in range(degree)]
    # 2. edges point outward from the source along each arm, listed in a shuffled order
    edges = [(a, b) for nodes_ in arms for a, b in zip([source, *nodes_], nodes_)]
    rng.shuffle(edges)
    # 3. the spurious cue: put the goal arm's source edge in the first source-edge slot with
    # probability cue, else in one of the other source-edge slots (uniformly)
    if cue is not None and degree > 1:
        slots = [i for i, (a, _) in enumerate(edges) if a == source]
        goal_edge = (source, arms[0][0])
        rest = [edges[i] for i in slots if edges[i] != goal_edge]
        where = 0 if rng.random() < cue else rng.randrange(1, degree)
        ordered = rest[:where] + [goal_edge] + rest[where:]
        for i, e in zip(slots, ordered):
            edges[i] = e
    return StarGraph(tuple(edges), source, arms[0][-1], (source, *arms[0]))


def generate_graphs(
    n: int,
    seed: int,
    degree: int = 2,
    path_length: int = 4,
    num_nodes: int = 20,
    exclude: set[str] | frozenset[str] = frozenset(),
    cue: float | None = None,
) -> list[StarGraph]:
    """The first ``n`` distinct graphs (by ``key``) of the stream ``seed``, skipping ``exclude``.

    Nested by construction: the first n graphs of a size-2n call are the size-n graphs.
    """
    check_task(degree, path_length, num_nodes, n, len(exclude), cue)
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[StarGraph] = []
    while len(out) < n:
        g = random_graph(rng, degree, path_length, num_nodes, cue)
        if g.key not in seen:
            seen.add(g.key)
            out.append(g)
    return out


def to_example(g: StarGraph) -> Example:
    """An Example whose ``meta["positions"]`` are the character offsets of the path's nodes in
    the solution: the targets of the teacher-forced per-position accuracy (evaluate.py)."""
    return Example(
        g.prompt, g.solution(), g.answer, g, {"positions": [2 * i for i in range(len(g.path))]}
    )


def star_graph_split(
    size: int,
    seed: int,
    test_size: int,
    test_seed: int,
    degree: int,
    path_length: int,
    num_nodes: int,
    cue: float | None = None,
) -> tuple[list[Example], list[Example]]:
    """(train, test), as the arithmetic task: the test graphs come from their own stream
    (``test_seed``), the training graphs from ``seed`` skipping every test graph. A ``cue``
    shapes the training graphs only: on the test graphs the listing order says nothing."""
    task = dict(degree=degree, path_length=path_length, num_nodes=num_nodes)
    check_task(**task, size=size, test_size=test_size, cue=cue)
    test = generate_graphs(test_size, test_seed, **task)
    train = generate_graphs(size, seed, exclude={g.key for g in test}, cue=cue, **task)
    return [to_example(g) for g in train], [to_example(g) for g in test]


def pool_examples(
    size: int,
    seed: int,
    avoid: Iterable[Example],
    degree: int,
    path_length: int,
    num_nodes: int,
    cue: float | None = None,
) -> list[Example]:
    """``objective.sample_prompts=pool`` for the star graph: ``size`` fresh graphs from the
    stream ``seed`` (the training distribution, ``cue`` included), none of them a graph of
    ``avoid`` (train and test) in any edge order."""
    exclude = {e.problem.key for e in avoid}
    graphs = generate_graphs(size, seed, degree, path_length, num_nodes, exclude=exclude, cue=cue)
    return [to_example(g) for g in graphs]
