"""``eightfold-sweep``: expand a declarative sweep file into Hydra multiruns, locally or on SLURM.

    eightfold-sweep sweeps/cpu_default.yaml --root results/cpu_default
    eightfold-sweep sweeps/data_scaling.yaml --dry-run
    eightfold-sweep sweeps/data_scaling.yaml --launcher slurm hydra.launcher.partition=gpu
    eightfold-sweep sweeps/data_scaling.yaml --only 'sft-procedural-n500-s1-*'   # retry one run

A sweep file (``sweeps/*.yaml``)::

    description: what the study measures
    overrides: [experiment=cpu_default]          # every run
    grid:                                         # cartesian product, one run per combination
      objective: [sft]
      data.size: [125, 250, 500, 1000, 2000]
      seed: [0]
    slurm: {timeout_min: 60, cpus_per_task: 2}    # hydra.launcher.* with --launcher slurm

Extra ``KEY=VALUE`` arguments are Hydra overrides: ``KEY=A,B,C`` (or any KEY of the grid)
replaces that grid axis, anything else is added to every run (``hydra.*`` ones only to the
command line).

Nothing lost, nothing done twice: each run's directory comes from the training code's own rule
(:func:`eightfold.rundir.run_dir`), so the tool knows before submitting which runs are finished
(``result.json``), failed (``failed.json``) or interrupted (a checkpoint to resume from). Only the
runs that are not finished are submitted: ``eightfold-train -m`` multiruns (one SLURM job array
each) over cartesian blocks that cover exactly those runs. Afterwards it prints a summary (also
written to ``<root>/sweeps/<sweep>.summary.json``) and exits 1 if any run is not finished; running
the same command again retries only those runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

SPEC_KEYS = {"description", "overrides", "variants", "grid", "slurm", "pack"}
LAUNCHERS = ("local", "slurm")

# statuses of a run, in the order the summary lists them
FINISHED, FAILED, PARTIAL, PENDING, INVALID = "finished", "failed", "partial", "pending", "invalid"


class SweepError(ValueError):
    """A sweep file or command line that cannot work (reported in one line, exit 2)."""


# ----------------------------------------------------------------------------- overrides
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+\-]+")
_NON_STRING = re.compile(
    r"[-+]?(\d[\d_]*)?(\.\d*)?([eE][-+]?\d+)?|true|false|null|[-+]?inf|nan", re.IGNORECASE
)


def hydra_value(value: Any) -> str:
    """A Python/YAML value written in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    s = str(value)
    if s.startswith("${") and s.endswith("}"):  # an interpolation: Hydra resolves it
        return s
    if _PLAIN.fullmatch(s) and not _NON_STRING.fullmatch(s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, braces, parentheses and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i : i + 2])
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``hydra/launcher=slurm`` -> ``hydra/launcher``."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def is_hydra_override(override: str) -> bool:
    key = override_key(override)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


# ----------------------------------------------------------------------------- sweep spec
@dataclass
class SweepSpec:
    name: str
    path: Path
    description: str = ""
    overrides: list[str] = field(default_factory=list)  # fixed, Hydra syntax
    variants: dict[str, list[str]] = field(
        default_factory=dict
    )  # name -> overrides, crossed with the grid
    grid: dict[str, list[str]] = field(default_factory=dict)  # key -> values, Hydra syntax
    slurm: dict[str, Any] = field(default_factory=dict)  # hydra.launcher.<key> -> value
    pack: int = 0  # > 0: on SLURM, ONE job runs the whole sweep with this many runs at once

    def apply_cli(self, args: list[str]) -> None:
        """``K=A,B`` or a grid key replaces that axis; other overrides are added to every run."""
        for arg in args:
            if "=" not in arg:
                raise SweepError(f"{arg!r} is not an override: expected KEY=VALUE (or KEY=A,B,C)")
            key, value = arg.split("=", 1)
            values = split_top_level(value)
            if (
                not is_hydra_override(arg)
                and not key.startswith(("+", "~"))
                and (key in self.grid or len(values) > 1)
            ):
                self.grid[key] = values
            else:
                self.overrides = [o for o in self.overrides if override_key(o) != override_key(arg)]
                self.overrides.append(arg)
                for name, variant in self.variants.items():  # the command line wins
                    self.variants[name] = [
                        o for o in variant if override_key(o) != override_key(arg)
                    ]


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping with keys {sorted(SPEC_KEYS)}")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(
        isinstance(o, str) and "=" in o for o in overrides
    ):
        raise SweepError(
            f"{path}: 'overrides' must be a list of KEY=VALUE strings, e.g. [experiment=smoke]"
        )
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise SweepError(f"{path}: 'grid' must map override keys to lists of values")
    grid: dict[str, list[str]] = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list, e.g. {key}: [1, 2]")
        if str(key).startswith("hydra"):
            raise SweepError(f"{path}: grid.{key}: hydra settings cannot vary within a sweep")
        grid[str(key)] = [hydra_value(v) for v in values]
    variants_raw = raw.get("variants") or {}
    if not isinstance(variants_raw, dict):
        raise SweepError(
            f"{path}: 'variants' must map names to override lists, e.g. teacher: [objective=sft]"
        )
    variants: dict[str, list[str]] = {}
    for name, body in variants_raw.items():
        if isinstance(body, dict):
            body = [f"{k}={hydra_value(v)}" for k, v in body.items()]
        if not isinstance(body, list) or not all(isinstance(o, str) and "=" in o for o in body):
            raise SweepError(
                f"{path}: variants.{name} must be a list of KEY=VALUE strings (or a mapping)"
            )
        clash = {override_key(o) for o in body} & set(grid)
        if clash:
            raise SweepError(
                f"{path}: variants.{name} sets {sorted(clash)}, which the grid also sweeps"
            )
        variants[str(name)] = list(body)
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SweepError(
            f"{path}: 'slurm' must map hydra.launcher keys to values, e.g. {{timeout_min: 60}}"
        )
    pack = raw.get("pack") or 0
    if not isinstance(pack, int) or isinstance(pack, bool) or pack < 0:
        raise SweepError(
            f"{path}: pack={pack!r} is not valid: runs at once in one packed job, e.g. pack: 8"
        )
    return SweepSpec(
        pack=pack,
        name=path.stem,
        path=path,
        description=str(raw.get("description") or "").strip(),
        overrides=list(overrides),
        variants=variants,
        grid=grid,
        slurm=dict(slurm),
    )


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    index: int
    values: dict[str, str]  # grid key -> value (Hydra syntax)
    variant: str = ""
    variant_overrides: list[str] = field(default_factory=list)
    status: str = PENDING
    name: str = ""
    run_dir: Path | None = None
    error: str = ""
    accelerator: str = ""
    job_id: str = ""
    log: str = ""

    @property
    def overrides(self) -> list[str]:
        return [*self.variant_overrides, *(f"{k}={v}" for k, v in self.values.items())]


def expand(spec: SweepSpec) -> list[Run]:
    """Every run of the sweep: each variant (if any) crossed with the grid."""
    keys = list(spec.grid)
    variants = list(spec.variants.items()) or [("", [])]
    runs = []
    for name, variant in variants:
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            runs.append(Run(len(runs), dict(zip(keys, combo)), name, list(variant)))
    return runs


def _status_of(directory: Path) -> tuple[str, str]:
    from eightfold.rundir import FAILED as FAILED_FILE
    from eightfold.rundir import last_checkpoint, read_result

    if read_result(directory) is not None:
        return FINISHED, ""
    failed = directory / FAILED_FILE
    if failed.exists():
        try:
            return FAILED, str(json.loads(failed.read_text()).get("error", "")).strip()
        except (OSError, json.JSONDecodeError):
            return FAILED, f"unreadable {failed}"
    if last_checkpoint(directory) is not None:
        return PARTIAL, ""
    return PENDING, ""


def inspect_runs(spec: SweepSpec, runs: list[Run], root: Path) -> None:
    """Compose each run's config exactly as eightfold-train will, validate it, find its directory."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from eightfold.rundir import run_dir
    from eightfold.train import CONF_DIR
    from eightfold.validate import ConfigError, validate_config

    fixed = [o for o in spec.overrides if not is_hydra_override(o)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for run in runs:
            overrides = [*fixed, *run.overrides, f"paths.root={hydra_value(str(root))}"]
            try:
                cfg = compose(config_name="train", overrides=overrides)
                validate_config(cfg)
                run.run_dir = run_dir(cfg)
                run.accelerator = str(cfg.trainer.get("accelerator", ""))
            except (ConfigError, HydraException, OmegaConfBaseException) as err:
                run.status, run.error = INVALID, f"{type(err).__name__}: {err}".splitlines()[0]
                run.name = " ".join(run.overrides) or "(no grid)"
                continue
            run.name = run.run_dir.name
            run.status, run.error = _status_of(run.run_dir)


def cartesian_blocks(
    runs: list[Run], keys: list[str]
) -> list[tuple[dict[str, list[str]], list[Run]]]:
    """Cover exactly ``runs`` with cartesian blocks: one Hydra multirun (job array) each.

    A fresh sweep is one block (the whole grid); after a partial failure the unfinished runs are
    grouped into as few blocks as this greedy split finds.
    """
    if not runs:
        return []
    if not keys:
        return [({}, runs)]
    first, rest = keys[0], keys[1:]
    by_value: dict[str, list[Run]] = {}
    for run in runs:
        by_value.setdefault(run.values[first], []).append(run)
    # values of the first key whose remaining-key combinations are the same set share a block
    groups: dict[frozenset, list[str]] = {}
    for value, group in by_value.items():
        sig = frozenset(tuple(r.values[k] for k in rest) for r in group)
        groups.setdefault(sig, []).append(value)
    blocks = []
    for values in groups.values():
        members = [r for v in values for r in by_value[v]]
        representative = [r for r in members if r.values[first] == values[0]]
        for sub_axes, sub_runs in cartesian_blocks(representative, rest):
            sub_keys = {tuple(r.values[k] for k in rest) for r in sub_runs}
            block_runs = [r for r in members if tuple(r.values[k] for k in rest) in sub_keys]
            # order the runs as Hydra will number them (product order of the axes)
            axes = {first: values, **sub_axes}
            order = {combo: i for i, combo in enumerate(itertools.product(*axes.values()))}
            block_runs.sort(key=lambda r: order[tuple(r.values[k] for k in axes)])
            blocks.append((axes, block_runs))
    return blocks


def split_blocks(
    blocks: list[tuple[dict[str, list[str]], list[Run]]], jobs: int
) -> list[tuple[dict[str, list[str]], list[Run]]]:
    """Split cartesian blocks until there are at least ``jobs`` of them (for parallel multiruns).

    Splits along the longest axis other than ``objective``: the objectives of one (size, seed)
    stay in one multirun, in grid order, so the SFT run they start from is trained once, first,
    by the multirun that needs it. Likely-longest first (more runs, then larger data.size: the
    objectives sample and roll out per problem), so no long block starts last and runs alone.
    """
    blocks = list(blocks)
    while len(blocks) < jobs:
        best = None
        for i, (axes, _) in enumerate(blocks):
            for key, values in axes.items():
                if (
                    key != "objective"
                    and len(values) > 1
                    and (best is None or len(values) > best[2])
                ):
                    best = (i, key, len(values))
        if best is None:
            break
        i, key, _ = best
        axes, block_runs = blocks.pop(i)
        for value in axes[key]:
            sub_axes = {**axes, key: [value]}
            blocks.append((sub_axes, [r for r in block_runs if r.values[key] == value]))

    def size(axes: dict[str, list[str]]) -> float:
        try:
            return max(float(v) for v in axes.get("data.size", ["0"]))
        except ValueError:
            return 0.0

    return sorted(blocks, key=lambda b: (-len(b[1]), -size(b[0])))


# ----------------------------------------------------------------------------- commands
def launcher_overrides(spec: SweepSpec, launcher: str, runs: list[Run]) -> list[str]:
    if launcher != "slurm":
        return []
    out = ["hydra/launcher=slurm"]
    out += [f"hydra.launcher.{k}={hydra_value(v)}" for k, v in spec.slurm.items()]
    return out


def build_command(
    spec: SweepSpec,
    axes: dict[str, list[str]],
    root: Path,
    sweep_dir: Path,
    launcher: str,
    runs: list[Run],
) -> list[str]:
    fixed = [o for o in spec.overrides if not is_hydra_override(o)] + (
        runs[0].variant_overrides if runs else []
    )
    hydra_fixed = [o for o in spec.overrides if is_hydra_override(o)]
    return [
        sys.executable,
        "-m",
        "eightfold.train",
        "-m",
        *fixed,
        *(f"{k}={','.join(v)}" for k, v in axes.items()),
        f"paths.root={hydra_value(str(root))}",
        f"hydra.sweep.dir={hydra_value(str(sweep_dir))}",
        *launcher_overrides(spec, launcher, runs),
        *hydra_fixed,
    ]


def display_command(cmd: list[str]) -> str:
    return shlex.join(["eightfold-train", *cmd[3:]])


# ----------------------------------------------------------------------------- SLURM
# hydra.launcher keys that submitit's AutoExecutor takes as they are; the rest get "slurm_".
_GENERIC_SUBMITIT = {
    "timeout_min",
    "mem_gb",
    "nodes",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "stderr_to_stdout",
    "name",
}


def packed_job_parameters(spec: SweepSpec) -> dict[str, Any]:
    """submitit parameters of a packed job: the sweep's ``slurm`` block and the command line's
    ``hydra.launcher.*`` overrides, in hydra-submitit-launcher's names (one task, many runs)."""
    params = dict(spec.slurm)
    for o in spec.overrides:
        if o.startswith("hydra.launcher."):
            key, value = o[len("hydra.launcher.") :].split("=", 1)
            params[key] = yaml.safe_load(value)
    out: dict[str, Any] = {"tasks_per_node": 1, "nodes": 1}
    for key, value in params.items():
        if value is None or key in (
            "array_parallelism",
            "submitit_folder",
            "tasks_per_node",
            "nodes",
        ):
            continue
        out[key if key in _GENERIC_SUBMITIT else f"slurm_{key}"] = value
    return out


def run_packed(
    spec: SweepSpec, args: argparse.Namespace, root: Path, stamp: str
) -> tuple[str, str]:
    """Submit ONE SLURM job that runs this sweep locally with ``--jobs spec.pack`` (small runs
    sharing one GPU node), wait for it; returns (job id, log path)."""
    import submitit

    folder = root / "multirun" / f"{spec.name}_{stamp}_{os.getpid()}_packed"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(**packed_job_parameters(spec))
    inner = [
        sys.executable,
        "-m",
        "eightfold.sweep",
        str(Path(spec.path).resolve()),
        "--launcher",
        "local",
        "--jobs",
        str(spec.pack),
        "--root",
        str(root),
    ]
    inner += [
        o
        for o in args.overrides
        if not (o.startswith("hydra.launcher.") or o.startswith("hydra/launcher"))
    ]
    inner += [x for p in args.only for x in ("--only", p)]
    job = executor.submit(submitit.helpers.CommandFunction(inner, cwd=os.getcwd()))
    _err(f"packed job {job.job_id}: {shlex.join(['eightfold-sweep', *inner[3:]])}")
    try:
        job.result()
    except Exception as err:  # noqa: BLE001 - the runs' own files say what finished
        _err(
            f"packed job {job.job_id} ended with an error: {str(err).splitlines()[0] if str(err) else err!r}"
        )
    return str(job.job_id), str(job.paths.stderr)


_JOB_DIR = re.compile(r"^(\d+)(?:_(\d+))?$")


def _submitit_jobs(sweep_dir: Path) -> dict[int, str]:
    """Run index in the multirun -> SLURM job id, from the launcher's folders ``.submitit/<id>``.

    submitit submits an array (folders ``<array id>_<task>``, plus ``<array id>`` with the
    script) for two or more runs, and a plain job (folder ``<id>``) for one.
    """
    tasks: dict[int, str] = {}
    plain: list[str] = []
    folder = sweep_dir / ".submitit"
    if folder.is_dir():
        for entry in folder.iterdir():
            m = _JOB_DIR.match(entry.name)
            if not (entry.is_dir() and m):
                continue
            if m.group(2) is not None:
                tasks[int(m.group(2))] = entry.name
            else:
                plain.append(entry.name)
    if not tasks and len(plain) == 1:
        return {0: plain[0]}
    return tasks


def _wait_for_queue(job_ids: list[str], poll_s: float = 2.0) -> None:
    """Wait while any of these jobs is still queued or running (e.g. after the launcher gave up
    early on one failed job, the others of its array still run to completion)."""
    if not job_ids or shutil.which("squeue") is None:
        return
    arrays = sorted({j.split("_")[0] for j in job_ids})
    told = False
    while True:
        proc = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            check=False,
        )
        left = [line for line in proc.stdout.split() if line.strip()]
        if proc.returncode != 0 or not left:
            return
        if not told:
            _err(f"waiting for {len(left)} SLURM job(s) still in the queue: {' '.join(left[:10])}")
            told = True
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- output
def _err(msg: str) -> None:
    print(f"eightfold-sweep: {msg}", file=sys.stderr, flush=True)


def print_table(runs: list[Run], title: str) -> None:
    counts = {
        s: sum(r.status == s for r in runs) for s in (FINISHED, FAILED, PARTIAL, PENDING, INVALID)
    }
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"{title}: {len(runs)} run(s): {summary}")
    for r in runs:
        line = f"  [{r.index:>3}] {r.status:<8} {r.name}"
        extra = (
            " ".join([f"variant={r.variant}"] if r.variant else [])
            + " "
            + " ".join(f"{k}={v}" for k, v in r.values.items())
        )
        extra = extra.strip()
        if extra:
            line += f"   ({extra})"
        print(line)
        if r.error:
            print("        error: " + r.error.strip().replace("\n", "\n               "))
        if r.status in (FAILED, PARTIAL, PENDING) and r.log:
            print(f"        log:   {r.log}")


def write_summary(
    spec: SweepSpec, runs: list[Run], root: Path, launcher: str, commands: list[str]
) -> Path:
    from eightfold.rundir import write_json_atomic

    path = root / "sweeps" / f"{spec.name}.summary.json"
    write_json_atomic(
        path,
        {
            "sweep": str(spec.path),
            "launcher": launcher,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
            "commands": commands,
            "counts": {
                s: sum(r.status == s for r in runs)
                for s in (FINISHED, FAILED, PARTIAL, PENDING, INVALID)
            },
            "runs": [
                {
                    "index": r.index,
                    "name": r.name,
                    "status": r.status,
                    "variant": r.variant or None,
                    "overrides": r.overrides,
                    "run_dir": str(r.run_dir) if r.run_dir else None,
                    "error": r.error or None,
                    "slurm_job_id": r.job_id or None,
                    "log": r.log or None,
                }
                for r in runs
            ],
        },
    )
    return path


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="eightfold-sweep",
        description="Expand a sweep file (sweeps/*.yaml) into Hydra multiruns; skip finished runs.",
        epilog="Exit status: 0 all selected runs finished, 1 some failed or did not finish, 2 bad sweep/config.",
    )
    p.add_argument("sweep", help="sweep file, e.g. sweeps/data_scaling.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides: KEY=A,B replaces a grid axis, KEY=V adds to every run",
    )
    p.add_argument(
        "--root",
        default=os.environ.get("EIGHTFOLD_ROOT", "outputs"),
        help="paths.root: where runs are written (default: $EIGHTFOLD_ROOT or ./outputs)",
    )
    p.add_argument(
        "--launcher", choices=LAUNCHERS, default="local", help="local (default) or slurm"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs, their status and the commands; run nothing",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="local: run N multiruns at once, each with cpus/N torch threads (one GPU or a "
        "many-core box shared by small runs); the runs are split along data.size / seed",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only runs whose name (or index) matches this glob; repeatable (retry one run alone)",
    )
    return p.parse_intermixed_args(argv)


def _select(runs: list[Run], patterns: list[str]) -> list[Run]:
    if not patterns:
        return runs
    return [
        r
        for r in runs
        if any(fnmatch.fnmatchcase(r.name, p) or p == str(r.index) for p in patterns)
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
        spec.apply_cli(args.overrides)
    except SweepError as err:
        _err(f"error: {err}")
        return 2
    root = Path(args.root).expanduser().resolve()

    runs = expand(spec)
    inspect_runs(spec, runs, root)
    # two grid points can be the same run (a key that does not change the result): keep one
    seen: dict[Path, Run] = {}
    for r in runs:
        if r.run_dir is not None and r.run_dir in seen:
            _err(
                f"note: runs {seen[r.run_dir].index} and {r.index} are the same run ({r.name}); keeping {seen[r.run_dir].index}"
            )
        elif r.run_dir is not None:
            seen[r.run_dir] = r
    runs = [r for r in runs if r.run_dir is None or seen.get(r.run_dir) is r]
    selected = _select(runs, args.only)
    if args.only and not selected:
        _err(f"error: no run matches --only {' '.join(args.only)}")
        return 2
    todo = [r for r in selected if r.status in (FAILED, PARTIAL, PENDING)]
    invalid = [r for r in selected if r.status == INVALID]

    if args.jobs < 1:
        _err(f"error: --jobs {args.jobs} is not valid: a positive number of parallel multiruns")
        return 2
    if args.jobs > 1 and args.launcher != "local":
        _err(
            "error: --jobs is for --launcher local (on SLURM every run is its own job, or set "
            "'pack: N' in the sweep file to run N at once in one job)"
        )
        return 2
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    blocks = []
    for name in dict.fromkeys(r.variant for r in todo):  # one set of multiruns per variant
        blocks += cartesian_blocks([r for r in todo if r.variant == name], list(spec.grid))
    if args.jobs > 1:
        blocks = split_blocks(blocks, args.jobs)
    plans = []
    for b, (axes, block_runs) in enumerate(blocks):
        sweep_dir = root / "multirun" / f"{spec.name}_{stamp}_{os.getpid()}_{b}"
        plans.append(
            (
                build_command(spec, axes, root, sweep_dir, args.launcher, block_runs),
                sweep_dir,
                block_runs,
            )
        )

    if args.dry_run:
        print_table(selected, f"sweep {spec.name} ({spec.path})")
        if invalid:
            print(f"{len(invalid)} run(s) have an invalid config (see 'error:' above)")
        if args.launcher == "slurm" and spec.pack:
            print(
                f"would run {len(todo)} of {len(selected)} in ONE packed SLURM job ({spec.pack} at once), "
                f"which runs these multiruns (--launcher local --jobs {spec.pack}):"
            )
            plans = [
                (build_command(spec, axes, root, root, "local", rs), None, rs)
                for axes, rs in split_blocks(blocks, spec.pack)
            ]
        else:
            print(
                f"would run {len(todo)} of {len(selected)} (finished runs are skipped) in {len(plans)} multirun(s):"
            )
        for cmd, _, _ in plans:
            print("  " + display_command(cmd))
        return 2 if invalid else 0

    if invalid:
        print_table(invalid, "invalid configs (nothing was submitted)")
        return 2
    if not todo:
        print(f"sweep {spec.name}: all {len(selected)} run(s) finished; nothing to submit")
        write_summary(spec, selected, root, args.launcher, [])
        return 0

    if args.launcher == "slurm" and spec.pack:
        _err(
            f"{spec.name}: running {len(todo)} run(s) in one packed SLURM job, {spec.pack} at once"
        )
        job_id, job_log = run_packed(spec, args, root, stamp)
        for r in todo:
            r.status, r.error = _status_of(r.run_dir)
            r.job_id, r.log = job_id, job_log
        return _report(spec, selected, root, args.launcher, [f"packed SLURM job {job_id}"])
    _err(
        f"{spec.name}: {len(selected) - len(todo)} of {len(selected)} run(s) finished; running {len(todo)} "
        f"in {len(plans)} multirun(s) ({args.launcher})"
    )
    try:
        out = sys.stderr.fileno()  # keep stdout for the summary
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no real stderr
        out = None
    procs: list[subprocess.Popen] = []

    def _stop(signum, frame):  # SIGTERM: stop our multiruns too (queued SLURM jobs carry on)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    env = dict(os.environ)
    if (
        args.jobs > 1 and "OMP_NUM_THREADS" not in env
    ):  # N processes must not each spin on every core
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    try:
        for cmd, _, _ in plans:
            if args.launcher == "local":  # at most --jobs at once: they share this machine
                while sum(p.poll() is None for p in procs) >= args.jobs:
                    time.sleep(0.2)
            _err("$ " + display_command(cmd))
            procs.append(subprocess.Popen(cmd, stdout=out, env=env))
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait()
        _err("interrupted; SLURM jobs already submitted keep running (see squeue); rerun to resume")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)

    for (cmd, sweep_dir, block_runs), proc in zip(plans, procs):
        jobs = _submitit_jobs(sweep_dir) if args.launcher == "slurm" else {}
        _wait_for_queue(list(jobs.values()))
        for i, r in enumerate(block_runs):
            if i in jobs:
                r.job_id = jobs[i]
                r.log = str(sweep_dir / ".submitit" / jobs[i] / f"{jobs[i]}_0_log.err")
            elif args.launcher == "local":
                r.log = str(sweep_dir / str(i))
        if proc.returncode != 0:
            _err(f"multirun exited with status {proc.returncode}: {display_command(cmd)}")
    for r in todo:
        r.status, r.error = _status_of(r.run_dir)
    return _report(spec, selected, root, args.launcher, [display_command(c) for c, _, _ in plans])


def _report(
    spec: SweepSpec, selected: list[Run], root: Path, launcher: str, commands: list[str]
) -> int:
    """Name what did not finish, print the table, write the summary; the exit status."""
    for r in selected:
        if r.status in (PENDING, PARTIAL) and not r.error:
            r.error = "did not finish (no result.json): see the log"
    print_table(selected, f"sweep {spec.name}")
    summary = write_summary(spec, selected, root, launcher, commands)
    not_done = [r for r in selected if r.status != FINISHED]
    if not_done:
        print(
            f"{len(not_done)} run(s) not finished; rerun the same command to retry only those, "
            f"or add --only NAME for one. Summary: {summary}"
        )
        return 1
    print(f"all {len(selected)} run(s) finished. Summary: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
