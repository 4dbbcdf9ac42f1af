"""The package's shape, read from its source: imports flow one way and form no cycle.

The layers, bottom to top (a module may import its own layer or any below it, never above):

    0  runfiles (stdlib only), config (enums, schemas), verify, the package itself
    1  rundir, models, generation, rollouts, checkpointing      the engine: decoding, no data
    2  data.*                                                   tasks, teachers, D_syn, datamodule
    3  evaluate, validate
    4  objectives.*                                             pi_sft, losses, the objectives
    5  train                                                    the Hydra app
    6  sweep, hydra_plugins.*                                   the sweep tool

The decoding engine sits below data/ because a model teacher (``data/teachers.py``) decodes with
it; it imports nothing of data/. ``analysis/`` (installed as ``eightfold_analysis``) imports
``eightfold.runfiles`` and nothing else of the package, so it runs without torch or omegaconf.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

LAYERS = {
    "eightfold": 0,
    "eightfold.runfiles": 0,
    "eightfold.config": 0,
    "eightfold.verify": 0,
    "eightfold.rundir": 1,
    "eightfold.memory": 1,
    "eightfold.models": 1,
    "eightfold.generation": 1,
    "eightfold.rollouts": 1,
    "eightfold.checkpointing": 1,
    "eightfold.sharding": 1,
    "eightfold.data": 2,
    "eightfold.evaluate": 3,
    "eightfold.validate": 3,
    "eightfold.objectives": 4,
    "eightfold.train": 5,
    "eightfold.sweep": 6,
    "hydra_plugins": 6,
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path, SRC)
        if name.split(".")[0] in ("eightfold", "hydra_plugins"):
            found[name] = path
    return found


def layer(name: str) -> int:
    """The layer of the longest LAYERS prefix of ``name``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise KeyError(name)


def runtime_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports when it runs: module level and inside
    functions alike; ``if TYPE_CHECKING:`` blocks (annotations only) are skipped."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            # the deepest module of the package this names (a name may be a function in it)
            parts = t.split(".")
            for i in range(len(parts), 0, -1):
                cand = ".".join(parts[:i])
                if cand in known:
                    if cand != name:
                        out.add(cand)
                    break
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: runtime_imports(path, name, known) for name, path in mods.items()}


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"place these modules in LAYERS (and say why in the docstring): {unplaced}"


def test_imports_flow_one_way():
    upward = [
        f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
        for src, deps in import_graph().items()
        for dst in deps
        if layer(dst) > layer(src)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_graph_sees_real_edges():
    # guards the test itself: an AST walk that found nothing would pass the two tests above
    graph = import_graph()
    assert "eightfold.objectives.pi_sft" in graph["eightfold.objectives.dpo"] or any(
        d == "eightfold.objectives.preference" for d in graph["eightfold.objectives.dpo"]
    )
    assert "eightfold.data.examples" in graph["eightfold.data.datamodule"]
    assert "eightfold.runfiles" in graph["eightfold.train"]


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return set(proc.stdout.split())


DATA_MODULES = sorted(m for m in modules() if m.startswith("eightfold.data"))


@pytest.mark.parametrize("module", DATA_MODULES)
def test_data_never_imports_objectives_or_train(module):
    loaded = _imported_after(f"import {module}")
    above = sorted(m for m in loaded if m.startswith(("eightfold.objectives", "eightfold.train")))
    assert not above, f"importing {module} imported {above}"


def test_analysis_needs_only_runfiles():
    loaded = _imported_after("import eightfold_analysis.cli, eightfold_analysis.collect")
    ours = sorted(m for m in loaded if m.startswith("eightfold.") or m == "eightfold")
    assert ours == ["eightfold", "eightfold.runfiles"], ours
    assert "torch" not in loaded and "omegaconf" not in loaded
