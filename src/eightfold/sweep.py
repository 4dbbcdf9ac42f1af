"""``eightfold-sweep``: run a sweep file (``sweeps/*.yaml``) as a Hydra multirun, locally or on SLURM.

    eightfold-sweep sweeps/cpu_default.yaml --root results/cpu_default
    eightfold-sweep sweeps/data_scaling.yaml --dry-run
    eightfold-sweep sweeps/data_scaling.yaml --launcher slurm hydra.launcher.partition=gpu
    eightfold-sweep sweeps/data_scaling.yaml --only 'sft-procedural-n500-s1-*'   # retry one run

A sweep file::

    description: what the study measures
    overrides: [experiment=cpu_default]          # every run (Hydra overrides)
    grid:                                         # cartesian product, one run per combination
      objective: [sft, rft_control, dpo_pool]     # a list, or a Hydra sweep: "range(0,3)"
      data.size: [125, 250, 500, 1000, 2000]
    slurm: {timeout_min: 60, cpus_per_task: 2}    # hydra.launcher.* with --launcher slurm
    pack: 8                                       # optional: ONE SLURM job runs the sweep, 8 at once
    only: ["sft-*", "*-n1000-*"]                  # optional: the grid's runs whose name matches a glob

Extra ``KEY=VALUE`` arguments are Hydra overrides added after the file's: one whose key the file
already sets replaces it (``seed=0`` narrows the ``seed`` axis, ``data.size=125,250`` replaces it),
which is how Hydra's own sweeper merges a repeated key.

How it works. The whole sweep is ONE ``eightfold-train -m`` command line. Every multirun of
``eightfold-train`` uses eightfold's sweeper (``hydra/sweeper=eightfold``, the default set in
``conf/hydra/default.yaml``; code in ``src/hydra_plugins/eightfold_sweeper``): Hydra's
``BasicSweeper`` expands the grid, then the sweeper composes EVERY run's config, validates it
(:func:`eightfold.validate.validate_config`), finds its run directory (:func:`eightfold.rundir.run_dir`)
and its status (:func:`eightfold.runfiles.run_status`), and launches nothing if any run is invalid;
otherwise it hands the launcher the explicit list of runs that are not finished (one job array on
SLURM). This module holds that logic (:func:`inspect`, :func:`select`, :func:`shard`), the status
table, the summary (``<root>/sweeps/<sweep>.summary.json``, exit status 1 if a run did not finish),
``--jobs N`` (N multiruns at once, one shard each, runs that share an SFT model kept together) and
``pack`` (one SLURM job, submitted with submitit, runs the sweep locally N at a time). Job ids and
logs come from each run's own ``result.json`` / ``failed.json``.

Why a sweeper plugin and not submitit directly (dora's way: compose and validate in process,
then ``executor.batch()`` + one ``submit`` per run). Both were built and measured on
``sweeps/data_scaling.yaml`` (60 runs, 2 shared cores). ``--dry-run``: 8.4 s CPU (10-17 s wall)
here, 7.0 s CPU (11-14 s) direct, 19-22 s CPU (24-44 s) for the old tool; both new ones compose
a run's config groups once per distinct choice of groups (4 here, not 60: see the sweeper's
``_compose``), the extra second here is the Hydra app starting in a second process. Size: ~630
lines direct against ~740 here (this module + the plugin), 840 before. The plugin wins anyway:
plain ``eightfold-train -m`` gets the same checks (direct, it would still launch invalid and
finished runs); there is one launch path, hydra-submitit-launcher's, with its requeue and its
``hydra.launcher.*`` settings (direct needs its own checkpointable wrapper and reads the same
settings a second way); and locally each shard is one process running its runs one after the
other (direct starts one Python per run, ~4 s of imports each).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from eightfold.runfiles import (
    FAILED,
    FAILED_STATUS,
    FINISHED,
    INVALID,
    PARTIAL,
    PENDING,
    RESULT,
    STATUSES,
    run_status,
    write_json_atomic,
)

SPEC_KEYS = {"description", "overrides", "grid", "slurm", "pack", "only"}
LAUNCHERS = ("local", "slurm")
TODO = (FAILED_STATUS, PARTIAL, PENDING)  # statuses that are (re)launched


class SweepError(ValueError):
    """A sweep file or command line that cannot work (reported in one line, exit 2)."""


# ----------------------------------------------------------------------------- sweep file
def _parse(text: str):
    """One override, parsed by Hydra's own grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(text)
    except HydraException as err:
        raise SweepError(f"{text!r} is not a Hydra override: {str(err).splitlines()[0]}") from None


def _values(text: str) -> list:
    override = _parse(text)
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def as_override(key: str, value: Any) -> str:
    """``key=value`` for a YAML value: a string as written, anything else as JSON; accepted only
    if Hydra reads back the same value (else the sweep file must write it in Hydra's syntax)."""
    texts = [value, json.dumps(value)] if isinstance(value, str) else [json.dumps(value)]
    for text in texts:
        try:
            if _values(f"{key}={text}") == [value]:
                return f"{key}={text}"
        except SweepError:
            pass
    raise SweepError(
        f"{key}: Hydra does not read {value!r} back as itself; quote it, e.g. '\"...\"'"
    )


def merge(overrides: Iterable[str]) -> list[str]:
    """A later override of the same key replaces the earlier one in its place (as Hydra's
    ``BasicSweeper`` does), so a command-line ``KEY=A,B`` replaces the file's ``KEY`` axis."""
    out: dict[tuple, str] = {}
    for text in overrides:
        override = _parse(text)
        out[(override.key_or_group, override.package)] = text
    return list(out.values())


@dataclass
class Sweep:
    name: str
    path: Path
    overrides: list[str]  # fixed overrides, then the grid axes (KEY=A,B,C): Hydra syntax
    # hydra.launcher.KEY=VALUE, added with --launcher slurm
    slurm: list[str] = field(default_factory=list)
    description: str = ""
    pack: int = 0  # > 0: on SLURM, ONE job runs the whole sweep, this many runs at once
    only: list[str] = field(default_factory=list)  # run-name globs: a grid less some of its runs


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping with keys {sorted(SPEC_KEYS)}")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        hint = " (a named variant is an objective file now: objective: [rft_control, ...])"
        raise SweepError(
            f"{path}: unknown key(s) {unknown!r}; allowed: {sorted(SPEC_KEYS)}"
            + (hint if "variants" in unknown else "")
        )
    fixed = raw.get("overrides") or []
    if not isinstance(fixed, list) or not all(isinstance(o, str) for o in fixed):
        raise SweepError(
            f"{path}: 'overrides' must be a list of KEY=VALUE, e.g. [experiment=smoke]"
        )
    grid, slurm, pack = raw.get("grid") or {}, raw.get("slurm") or {}, raw.get("pack") or 0
    if not isinstance(grid, dict) or not isinstance(slurm, dict):
        raise SweepError(f"{path}: 'grid' and 'slurm' must map keys to values")
    axes = []
    for key, values in grid.items():
        if str(key).startswith("hydra"):
            raise SweepError(f"{path}: grid.{key}: hydra settings cannot vary within a sweep")
        if isinstance(values, str):  # a Hydra sweep as written: "1,2,3", "range(0,3)", "glob(*)"
            axes.append(f"{key}={values}")
        elif isinstance(values, list) and values:
            texts = [as_override(key, v).split("=", 1)[1] for v in values]
            axes.append(f"{key}={','.join(texts)}")
        else:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list, e.g. {key}: [1, 2]")
    if not isinstance(pack, int) or isinstance(pack, bool) or pack < 0:
        raise SweepError(
            f"{path}: pack={pack!r} is not valid: runs at once in one job, e.g. pack: 8"
        )
    only = raw.get("only") or []
    if not isinstance(only, list) or not all(isinstance(o, str) and o for o in only):
        raise SweepError(
            f"{path}: only={only!r} is not valid: a list of run-name globs, e.g."
            " only: ['sft-*', '*-n1000-*'] (every SFT run, every objective at n=1000)"
        )
    overrides = merge([*fixed, *axes])  # each one must parse
    if not grid:  # Hydra would run the defaults once: not a sweep
        raise SweepError(
            f"{path}: the grid is empty: a sweep varies at least one key, e.g."
            " grid: {data.size: [125, 250]} (one config alone: eightfold-train KEY=VALUE ...)"
        )
    return Sweep(
        name=path.stem,
        path=path,
        overrides=overrides,
        slurm=[as_override(f"hydra.launcher.{k}", v) for k, v in slurm.items()],
        description=str(raw.get("description") or "").strip(),
        pack=pack,
        only=only,
    )


# ----------------------------------------------------------------------------- runs (used by the sweeper)
@dataclass
class Run:
    index: int  # position in the multirun's expansion
    overrides: list[str]  # every override of this run, as Hydra's sweeper expanded them
    point: list[str] = field(default_factory=list)  # the ones that vary across the sweep
    name: str = ""  # the run directory's name (the overrides when the config is invalid)
    run_dir: str | None = None
    status: str = PENDING
    error: str = ""
    size: int = 0  # data.size: how --jobs balances its shards
    job_id: str | None = None  # SLURM job id (from the run's own files)
    log: str | None = None
    memory: str = ""  # estimated GPU memory per device, e.g. 61.2/80 GiB (eightfold.memory)


@functools.cache
def _key(override: str) -> str:
    return _parse(override).key_or_group


def inspect(jobs: list[list[str]], compose: Callable[[list[str]], Any]) -> list[Run]:
    """Compose each job's config as the launcher will, validate it, find its directory and status."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from eightfold.rundir import run_dir
    from eightfold.validate import validate_config

    values: dict[str, set[str]] = {}
    for o in {o for job in jobs for o in job}:
        values.setdefault(_key(o), set()).add(o)
    varying = {k for k, v in values.items() if len(v) > 1}
    runs = []
    for index, job in enumerate(jobs):
        run = Run(index, list(job), point=[o for o in job if _key(o) in varying])
        try:
            cfg = compose(list(job))
            validate_config(cfg)
        except (ValueError, HydraException, OmegaConfBaseException) as err:
            run.status, run.error = INVALID, f"{type(err).__name__}: {err}".splitlines()[0]
            run.name = " ".join(run.point or job)
        else:
            run.run_dir = str(run_dir(cfg))
            run.name, run.size = Path(run.run_dir).name, int(cfg.data.size)
            run.status, run.error = run_status(run.run_dir)
        runs.append(run)
    return runs


def select(runs: list[Run], only: Iterable[str] = ()) -> list[Run]:
    """The runs to consider: the first of any that share a run directory, and with ``only`` those
    whose name (or index) matches one of its globs."""
    only, seen, out = list(only), {}, []
    for r in runs:
        if r.run_dir is not None and r.run_dir in seen:
            print(
                f"note: runs {seen[r.run_dir]} and {r.index} are the same run ({r.name})",
                file=sys.stderr,
            )
            continue
        seen.setdefault(r.run_dir, r.index)
        if not only or any(fnmatch.fnmatchcase(r.name, p) or p == str(r.index) for p in only):
            out.append(r)
    return out


def shard(runs: list[Run], index: int, count: int) -> list[Run]:
    """Shard ``index`` of ``count``: runs that differ only in the objective (they share one SFT run)
    stay together; groups go, largest data first, to the least loaded shard. Depends only on the
    configs, not on what has finished, so every shard process draws the same partition."""
    if count <= 1:
        return runs
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(
            tuple(o for o in r.overrides if not _key(o).startswith("objective")), []
        ).append(r)
    load, mine = [0] * count, set()
    for group in sorted(groups.values(), key=lambda g: -sum(r.size or 1 for r in g)):
        target = load.index(min(load))
        load[target] += sum(r.size or 1 for r in group)
        if target == index:
            mine.update(r.index for r in group)
    return [r for r in runs if r.index in mine]


def refresh(run: Run, launcher: str) -> None:
    """Status, error, job id and log of a run, re-read from its directory."""
    if run.run_dir is None:
        return
    run.status, run.error = run_status(run.run_dir)
    for name in (RESULT, FAILED):
        try:
            info = json.loads((Path(run.run_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        run.job_id = str(info["job_id"]) if launcher == "slurm" and info.get("job_id") else None
        run.log = info.get("job_log")
        break


def write_report(
    path: str | Path, runs: list[Run], selected: list[Run], todo: list[Run], **extra
) -> None:
    write_json_atomic(
        path,
        {
            "runs": [asdict(r) for r in runs],
            "selected": [r.index for r in selected],
            "todo": [r.index for r in todo],
            **extra,
        },
    )


def read_report(path: str | Path) -> tuple[list[Run], list[int], dict]:
    data = json.loads(Path(path).read_text())
    runs = [Run(**r) for r in data.pop("runs")]
    return runs, data.pop("selected"), data


# ----------------------------------------------------------------------------- output
def _err(msg: str) -> None:
    print(f"eightfold-sweep: {msg}", file=sys.stderr, flush=True)


def counts(runs: list[Run]) -> dict[str, int]:
    return {s: sum(r.status == s for r in runs) for s in STATUSES}


def print_table(runs: list[Run], title: str) -> None:
    summary = ", ".join(f"{n} {s}" for s, n in counts(runs).items() if n)
    print(f"{title}: {len(runs)} run(s): {summary}")
    names = max((len(r.name) for r in runs), default=0) if any(r.memory for r in runs) else 0
    if names:  # the estimated GPU memory column (eightfold.memory), after the name
        print(f"  {'':5} {'status':<8} {'run':<{names}}  GPU mem/dev est.")
    for r in runs:
        point = f"   ({' '.join(r.point)})" if r.point and r.status != INVALID else ""
        name = f"{r.name:<{names}}  {r.memory or '-':<16}" if names else r.name
        print(f"  [{r.index:>3}] {r.status:<8} {name}{point}")
        if r.error:
            print("        error: " + r.error.strip().replace("\n", "\n               "))
        if r.status in TODO and r.log:
            print(f"        log:   {r.log}")
    sys.stdout.flush()


def write_summary(
    spec: Sweep, runs: list[Run], root: Path, launcher: str, commands: list[str]
) -> Path:
    path = root / "sweeps" / f"{spec.name}.summary.json"
    rows = [{**asdict(r), "slurm_job_id": r.job_id} for r in runs]
    for row in rows:
        del row["job_id"], row["size"]
    write_json_atomic(
        path,
        {
            "sweep": str(spec.path),
            "launcher": launcher,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
            "commands": commands,
            "counts": counts(runs),
            "runs": rows,
        },
    )
    return path


# ----------------------------------------------------------------------------- commands
def train_command(spec: Sweep, cli: list[str], root: Path, launcher: str, *extra: str) -> list[str]:
    """``eightfold-train -m`` over the whole sweep; ``extra``: hydra.sweep.dir, hydra.sweeper.*."""
    launch = ["hydra/launcher=slurm", *spec.slurm] if launcher == "slurm" else []
    overrides = merge(
        [*spec.overrides, *launch, *cli, as_override("paths.root", str(root)), *extra]
    )
    return [sys.executable, "-m", "eightfold.train", "-m", *overrides]


def display(cmd: list[str]) -> str:
    return shlex.join(
        ["eightfold-train", *(a for a in cmd[3:] if not a.startswith("hydra.sweeper.report="))]
    )


def run_commands(cmds: list[list[str]], jobs: int, stdout=None, sweep: str = "") -> int:
    """Run the multiruns side by side and wait for all; SIGTERM / Ctrl-C stop them too."""
    env = dict(os.environ)
    if sweep:  # the tracker tag of every run (checkpointing.sweep_name): one group per sweep file
        env.setdefault("EIGHTFOLD_SWEEP", sweep)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # N processes must not each spin on every core
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def _stop(signum, frame):
        raise KeyboardInterrupt

    previous, procs = signal.signal(signal.SIGTERM, _stop), []
    try:
        for cmd in cmds:
            _err("$ " + display(cmd))
            procs.append(subprocess.Popen(cmd, stdout=stdout, env=env))
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        _err("interrupted; SLURM jobs already submitted keep running (see squeue); rerun to resume")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def packed_job_parameters(launcher: dict) -> dict[str, Any]:
    """submitit parameters of the packed job: the multirun's resolved ``hydra.launcher``, named as
    hydra-submitit-launcher names them (its ``BaseQueueConf`` keys as they are, others ``slurm_*``),
    for one task on one node."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    drop = {"_target_", "submitit_folder", "array_parallelism", "max_num_timeout"}
    params = {k: v for k, v in launcher.items() if k not in drop}
    params.update(tasks_per_node=1, nodes=1)
    return {k if k in generic else f"slurm_{k}": v for k, v in params.items()}


def packed_command(spec: Sweep, args: argparse.Namespace, root: Path) -> str:
    """What the packed job runs: this sweep, locally, ``spec.pack`` runs at once."""
    cmd = ["eightfold-sweep", str(spec.path.resolve()), "--launcher", "local"]
    cmd += ["--jobs", str(spec.pack), "--root", str(root)]
    cmd += [
        o for o in args.overrides if not _key(o).startswith(("hydra/launcher", "hydra.launcher"))
    ]
    return shlex.join(cmd + [x for p in args.only for x in ("--only", p)])


def run_packed(
    spec: Sweep, args: argparse.Namespace, root: Path, launcher: dict, stamp: str
) -> tuple[str, str]:
    """Submit ONE SLURM job that runs this sweep locally with ``--jobs spec.pack`` (small runs
    sharing one GPU node) and wait for it; returns (job id, log path)."""
    import submitit

    folder = root / "multirun" / f"{spec.name}_{stamp}_packed"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(**packed_job_parameters(launcher))
    inner = [
        sys.executable,
        "-m",
        "eightfold.sweep",
        *shlex.split(packed_command(spec, args, root))[1:],
    ]
    job = executor.submit(submitit.helpers.CommandFunction(inner, cwd=os.getcwd()))
    _err(f"packed job {job.job_id}: {packed_command(spec, args, root)}")
    try:
        job.result()
    except Exception as err:  # noqa: BLE001 - the runs' own files say what finished
        _err(
            f"packed job {job.job_id} ended with an error: {str(err).splitlines()[0] if str(err) else repr(err)}"
        )
    return str(job.job_id), str(job.paths.stderr)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="eightfold-sweep",
        description="Run a sweep file (sweeps/*.yaml) as a Hydra multirun; skip finished runs.",
        epilog="Exit status: 0 all selected runs finished, 1 some failed or did not finish, 2 bad sweep/config.",
    )
    p.add_argument("sweep", help="sweep file, e.g. sweeps/data_scaling.yaml")
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides after the file's: KEY=A,B replaces an axis"
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
        help="print the runs, their status and the command; run nothing",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="local: N multiruns at once, each with cpus/N torch threads; runs that share an SFT "
        "model stay in one multirun",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only runs whose name (or index) matches this glob; repeatable (retry one run "
        "alone); replaces the sweep file's own `only` list",
    )
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    from eightfold.runfiles import check_writable_dir
    from eightfold.validate import secret_in_arguments

    args = parse_args(argv)
    root = Path(args.root).expanduser().resolve()
    try:
        spec = load_sweep(args.sweep)
        merge(args.overrides)  # each one must parse
        # before Hydra writes the overrides and configs under the root (--dry-run included)
        if problem := secret_in_arguments([*spec.overrides, *spec.slurm, *args.overrides]):
            raise SweepError(problem)
        if problem := check_writable_dir(root, "--root"):
            raise SweepError(problem)
        if args.jobs < 1:
            raise SweepError(f"--jobs {args.jobs} is not valid: a positive number of multiruns")
        if args.jobs > 1 and args.launcher != "local":
            raise SweepError(
                "--jobs is for --launcher local (on SLURM every run is its own job, or set "
                "'pack: N' in the sweep file to run N at once in one job)"
            )
        # --only replaces the file's `only`, as KEY=A,B replaces the file's axis
        patterns = list(args.only) or spec.only
        only = [as_override("hydra.sweeper.only", patterns)] if patterns else []
    except SweepError as err:
        _err(f"error: {err}")
        return 2
    packed = args.launcher == "slurm" and spec.pack > 0
    shards = 1 if packed else args.jobs
    stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="eightfold-sweep-") as tmp:
        reports = [Path(tmp) / f"{i}.json" for i in range(shards)]

        def command(i: int, *more: str) -> list[str]:
            name = f"{spec.name}_{stamp}_{i}"
            extra = [as_override("hydra.sweep.dir", str(root / "multirun" / name)), *only]
            if shards > 1:
                extra += [f"hydra.sweeper.shard={i}", f"hydra.sweeper.shards={shards}"]
            extra += [as_override("hydra.sweeper.report", str(reports[i])), *more]
            return train_command(spec, args.overrides, root, args.launcher, *extra)

        cmds = [command(i) for i in range(shards)]
        if args.dry_run or packed:  # the sweeper checks every run and launches nothing
            plan = command(0, "hydra.sweeper.dry_run=true", "hydra.sweeper.shards=1")
            rc = subprocess.run(plan, stdout=None if args.dry_run else sys.stderr).returncode
            if args.dry_run:
                print(
                    f"in ONE packed SLURM job, {spec.pack} at once, running:"
                    if packed
                    else f"in {shards} multirun(s):"
                )
                for line in [packed_command(spec, args, root)] if packed else map(display, cmds):
                    print("  " + line)
                return rc if rc in (0, 2) else 2
        else:
            _err(f"{spec.name}: running the sweep in {shards} multirun(s) ({args.launcher})")
            if run_commands(cmds, shards, stdout=sys.stderr, sweep=spec.name) == 130:
                return 130
        if not reports[0].exists():
            _err("error: the multirun stopped before it could check the runs (see above)")
            return 2
        runs, chosen, plan_info = read_report(reports[0])
        todo = {i for p in reports if p.exists() for i in json.loads(p.read_text())["todo"]}
    selected = [r for r in runs if r.index in chosen]
    if args.only and not selected:
        _err(f"error: no run matches --only {' '.join(args.only)}")
        return 2
    invalid = [r for r in selected if r.status == INVALID]
    if invalid:
        print_table(invalid, "invalid configs (nothing was submitted)")
        return 2
    if not todo:
        print(f"sweep {spec.name}: all {len(selected)} run(s) finished; nothing to submit")
        write_summary(spec, selected, root, args.launcher, [])
        return 0
    job = None
    if packed:
        _err(
            f"{spec.name}: running {len(todo)} run(s) in one packed SLURM job, {spec.pack} at once"
        )
        job = run_packed(spec, args, root, plan_info["launcher"], stamp)
    return report(
        spec,
        selected,
        todo,
        root,
        args.launcher,
        job,
        [f"packed SLURM job {job[0]}"] if job else [display(c) for c in cmds],
    )


def report(
    spec: Sweep,
    selected: list[Run],
    todo: set[int],
    root: Path,
    launcher: str,
    job: tuple[str, str] | None,
    commands: list[str],
) -> int:
    """After the launch: every run's status re-read from its directory, the table, the summary;
    the exit status (0 all finished, 1 not)."""
    for r in selected:
        refresh(r, launcher)
        if job is not None and r.index in todo:  # the packed job ran it
            r.job_id, r.log = job[0], r.log or job[1]
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
