"""eightfold-sweep, the eightfold sweeper (hydra/sweeper=eightfold) and hydra/launcher=slurm.

The first part needs no SLURM (sweep files, the run hashes they expand to, the sweeper's checks,
the launcher config, local sweeps). The tests marked ``slurm`` submit real jobs to the local test
cluster (scripts/start-slurm.sh); they skip without one, or fail under EIGHTFOLD_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from eightfold.runfiles import FAILED, RESULT, read_result
from eightfold.sweep import (
    Run,
    SweepError,
    as_override,
    load_sweep,
    packed_job_parameters,
    shard,
    train_command,
)
from eightfold.train import CONF_DIR

try:  # tests/ may or may not become a package
    from . import slurm_helpers as sh
except ImportError:  # pragma: no cover - depends on how pytest imports tests/
    import slurm_helpers as sh

REPO = Path(__file__).resolve().parents[1]
QUIET = "trainer.enable_progress_bar=false"
HASHES = json.loads((REPO / "tests" / "data" / "config_hashes.json").read_text())["sweeps"]


def write_sweep(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess: `eightfold-sweep ARGS`."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "eightfold.sweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`eightfold-train ARGS` in a subprocess."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "eightfold.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "runs").iterdir()} if (root / "runs").is_dir() else {}


def multirun_dirs(root: Path) -> list[Path]:
    return sorted((root / "multirun").iterdir()) if (root / "multirun").is_dir() else []


def table(stdout: str) -> list[list[str]]:
    """The rows of the status table: [index, status, name, ...] ("  [  7] pending name ..." and,
    past 99 runs, "  [100] pending name ...")."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("  ["):
            index, rest = line[3:].split("]", 1)
            rows.append([index.strip(), *rest.split()])
    return rows


def run_hash(name: str) -> str:
    return name.rsplit("-", 1)[1]


# =============================================================================== no SLURM needed
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
# Issue 13 changed the defaults of these objectives, and so the run hash of every objective built
# on them (rft_control, dpo_pool, ...), on purpose; the JSON's "changed" entry says why.
CHANGED = json.loads((REPO / "tests" / "data" / "config_hashes.json").read_text())["changed"]
# data_source's variants were `objective=rft objective.positives=self|teacher` (objective.name
# "rft"); they are now the objective files rft_self / rft_control, named after the file. The name
# is part of the config, so their hashes change too (they are also built on rft).
# Studies rewritten on purpose since the baseline: every run of them moved, nothing to compare.
REWRITTEN = {
    "gsm8k_7b": "issue 15: trainer=fsdp and recipe=7b replaced DDP, bf16 master weights and the"
    " tiny model's learning rates, which could not fit or train a 7B model",
}

RENAMED = {
    "data_source": {
        "objective.positives=self": "rft_self",
        "objective.positives=teacher": "rft_control",
    }
}


def _changed(objective: str) -> bool:
    return any(objective == c or objective.startswith(f"{c}_") for c in CHANGED["objectives"])


def _old_point(sweep: str, overrides: list[str]) -> tuple[str, int, int]:
    """(objective name, data.size, seed) of a run recorded by the old sweep tool."""
    values = dict(o.split("=", 1) for o in overrides)
    name = values.get("objective.name", values["objective"])
    name = next((new for o, new in RENAMED.get(sweep, {}).items() if o in overrides), name)
    return name, int(values["data.size"]), int(values["seed"])


def _new_point(run_name: str) -> tuple[str, int, int]:
    objective, _source, size, seed, _hash = run_name.split("-")
    return objective, int(size[1:]), int(seed[1:])


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_expands_to_the_recorded_runs(path, tmp_path):
    """Each study file composes into valid, distinct runs (a dry run: nothing trains). A file
    that existed before the sweep tool moved onto Hydra expands to the runs the old tool recorded
    (tests/data/config_hashes.json), each with its recorded hash unless its objective changed on
    purpose since: the move itself orphans no run directory or cache."""
    proc = sweep_cli(str(path), "--dry-run", "--root", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    names = [row[2] for row in table(proc.stdout)]
    assert names and f"{len(names)} run(s): {len(names)} pending" in proc.stdout
    assert f"would launch {len(names)} of {len(names)}" in proc.stdout
    assert "eightfold-train -m " in proc.stdout
    assert len(set(names)) == len(names)  # no two grid points share a run directory
    if path.stem not in HASHES or path.stem in REWRITTEN:  # added or rewritten since the baseline
        return
    recorded = {_old_point(path.stem, r["overrides"]): r["config_hash"] for r in HASHES[path.stem]}
    got = {_new_point(name): run_hash(name) for name in names}
    assert sorted(got) == sorted(recorded)  # the same runs, under the objective files' names
    for point, old in recorded.items():
        assert (got[point] != old) == _changed(point[0]), (point, CHANGED["why"])
    renamed = [p for p in got if p[0] in RENAMED.get(path.stem, {}).values()]
    assert len(renamed) == (30 if path.stem == "data_source" else 0)


@pytest.mark.parametrize(
    "value", ["sft", "teacher+self", "deepseek-ai/deepseek-math-7b-base", "1e3", "true", "a b",
              "it's", "x,y", 3, 0.25, True, None, [1, "x y"]],
)  # fmt: skip
def test_as_override_is_read_back_by_hydra_as_the_same_value(value):
    parsed = OverridesParser.create().parse_override(as_override("k", value))
    assert not parsed.is_sweep_override() and parsed.value() == value


def test_sweep_file_errors_are_clear(tmp_path):
    with pytest.raises(SweepError, match="unknown key"):
        load_sweep(write_sweep(tmp_path / "a.yaml", variants={"v": ["seed=1"]}))
    with pytest.raises(SweepError, match="non-empty list"):
        load_sweep(write_sweep(tmp_path / "b.yaml", grid={"seed": []}))
    with pytest.raises(SweepError, match="cannot vary"):
        load_sweep(write_sweep(tmp_path / "c.yaml", grid={"hydra.launcher.partition": ["a"]}))
    with pytest.raises(SweepError, match="not a Hydra override"):
        load_sweep(write_sweep(tmp_path / "d.yaml", overrides=["seed=[1"]))
    with pytest.raises(SweepError, match="pack=-1 is not valid"):
        load_sweep(write_sweep(tmp_path / "e.yaml", grid={"seed": [0]}, pack=-1))
    with pytest.raises(SweepError, match="only='sft-\\*' is not valid: a list of run-name globs"):
        load_sweep(write_sweep(tmp_path / "o.yaml", grid={"seed": [0]}, only="sft-*"))
    with pytest.raises(SweepError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")


def test_command_line_overrides_replace_axes_in_place_and_add_fixed_values(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path / "s.yaml",
            overrides=["experiment=smoke"],
            grid={"data.size": [32, 48], "seed": "range(0,2)"},
            slurm={"timeout_min": 30},
        )
    )
    assert spec.overrides == ["experiment=smoke", "data.size=32,48", "seed=range(0,2)"]
    cli = ["data.size=64", "seed=0,1", "model.n_layer=2", "hydra.launcher.timeout_min=5"]
    cmd = train_command(spec, cli, tmp_path, "slurm")
    assert cmd[3:] == [
        "-m", "experiment=smoke", "data.size=64", "seed=0,1", "hydra/launcher=slurm",
        "hydra.launcher.timeout_min=5", "model.n_layer=2", f"paths.root={tmp_path}",
    ]  # fmt: skip
    assert "hydra/launcher=slurm" not in train_command(spec, [], tmp_path, "local")


def test_data_scaling_sweeps_every_objective():
    spec = load_sweep(REPO / "sweeps" / "data_scaling.yaml")
    axes = {o.split("=")[0]: o.split("=")[1].split(",") for o in spec.overrides}
    assert axes["objective"] == ["sft", "rft", "dpo", "step_dpo"]
    assert len(axes["data.size"]) >= 5 and len(axes["seed"]) >= 3


def test_shards_partition_the_runs_and_keep_objectives_of_one_point_together():
    runs = [
        Run(i, [f"objective={o}", f"data.size={n}", f"seed={s}"], size=n)
        for i, (o, n, s) in enumerate(
            (o, n, s) for o in ("sft", "rft") for n in (1, 2, 3) for s in (0, 1)
        )
    ]
    parts = [shard(runs, i, 3) for i in range(3)]
    assert sorted(r.index for part in parts for r in part) == [r.index for r in runs]
    for part in parts:
        points = {tuple(r.overrides[1:]) for r in part}
        assert {tuple(r.overrides[1:]) for r in part if r.overrides[0] == "objective=sft"} == points
    assert [len(p) for p in parts] == [4, 4, 4]  # balanced by data size: (3), (2 + 1), ...
    assert sum(len(shard(runs, i, 64)) > 0 for i in range(64)) == 6  # one shard per (size, seed)


def _launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "paths.root=/tmp/unused", *overrides],
            return_hydra_config=True,
        )
        return cfg.hydra.launcher


def test_slurm_launcher_follows_the_trainer_for_ddp():
    ddp = _launcher("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2")
    assert ddp._target_.endswith("SlurmLauncher")
    assert (ddp.tasks_per_node, ddp.nodes, ddp.gpus_per_node) == (8, 2, 8)
    cpu = _launcher("trainer=cpu")
    assert (cpu.tasks_per_node, cpu.nodes, cpu.gpus_per_node) == (1, 1, 0)  # CPU: no GPU
    # timeouts requeue (the run resumes from last.ckpt): must not be 0
    assert cpu.max_num_timeout > 0 and cpu.signal_delay_s > 0
    partition = _launcher("hydra.launcher.partition=gpu", "hydra.launcher.account=proj")
    assert partition.partition == "gpu"


def test_packed_job_parameters_are_the_launchers_in_submitits_names(tmp_path):
    """pack: the sweeper's report carries the multirun's resolved hydra.launcher; the packed job
    asks for the same resources, in submitit's names, as one task on one node."""
    report = tmp_path / "report.json"
    plan = train_cli(
        "-m", "experiment=smoke", "data.size=32,48", "trainer=ddp", "trainer.devices=4",
        f"paths.root={tmp_path}", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
        "hydra.sweeper.dry_run=true", f"hydra.sweeper.report={report}", cwd=tmp_path,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    launcher = json.loads(report.read_text())["launcher"]
    assert (launcher["tasks_per_node"], launcher["gpus_per_node"]) == (4, 4)  # from the trainer
    params = packed_job_parameters(launcher)
    assert (params["tasks_per_node"], params["nodes"], params["gpus_per_node"]) == (1, 1, 4)
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == launcher["timeout_min"]
    assert params["slurm_signal_delay_s"] == launcher["signal_delay_s"]
    assert not {"submitit_folder", "slurm_submitit_folder", "slurm__target_"} & set(params)
    import submitit  # submitit's SLURM executor takes every one of these names

    # The debug cluster needs no srun on the machine; update_parameters still checks every
    # slurm_ name against the SLURM executor's parameters (and the others against the generics).
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="debug")
    executor.update_parameters(**params)
    with pytest.raises(NameError, match="slurm_not_a_parameter"):
        executor.update_parameters(slurm_not_a_parameter=1)


def test_dry_run_lists_runs_and_command(tmp_path):
    sweep = write_sweep(
        tmp_path / "three.yaml",
        overrides=["experiment=smoke", QUIET],
        grid={"data.size": [32, 48, 64]},
    )
    root = tmp_path / "root"
    args = [str(sweep), "--dry-run", "--root", str(root), "--launcher", "slurm"]
    proc = sweep_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 run(s): 3 pending" in proc.stdout and "would launch 3 of 3" in proc.stdout
    assert [row[3] for row in table(proc.stdout)] == [f"(data.size={n})" for n in (32, 48, 64)]
    assert "data.size=32,48,64" in proc.stdout and "hydra/launcher=slurm" in proc.stdout
    assert not root.exists()  # nothing ran, nothing was written
    none = sweep_cli(*args, "--only", "nothing-*", cwd=tmp_path)
    assert none.returncode == 2 and "no run matches" in none.stdout + none.stderr
    # the file's own `only` keeps part of the grid; --only on the command line replaces it
    part = write_sweep(
        tmp_path / "part.yaml", **yaml.safe_load(sweep.read_text()), only=["*-n48-*"]
    )
    proc = sweep_cli(str(part), *args[1:], cwd=tmp_path)
    assert proc.returncode == 0 and "1 run(s): 1 pending" in proc.stdout, proc.stdout
    assert [row[3] for row in table(proc.stdout)] == ["(data.size=48)"]
    proc = sweep_cli(str(part), *args[1:], "--only", "*-n32-*", cwd=tmp_path)
    assert [row[3] for row in table(proc.stdout)] == ["(data.size=32)"]
    packed = write_sweep(tmp_path / "packed.yaml", **yaml.safe_load(sweep.read_text()), pack=2)
    proc = sweep_cli(str(packed), *args[1:], cwd=tmp_path)
    assert proc.returncode == 0 and "would launch 3 of 3" in proc.stdout
    assert "in ONE packed SLURM job, 2 at once" in proc.stdout and "--jobs 2" in proc.stdout


def test_invalid_config_is_reported_before_anything_runs(tmp_path):
    sweep = write_sweep(
        tmp_path / "bad.yaml", overrides=["experiment=smoke"], grid={"data.size": [32, -5]}
    )
    proc = sweep_cli(str(sweep), "--root", str(tmp_path / "root"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    assert "data.size=-5 is not valid" in proc.stdout
    assert not (tmp_path / "root" / "multirun").exists()
    dry = sweep_cli(str(sweep), "--dry-run", "--root", str(tmp_path / "root"), cwd=tmp_path)
    assert dry.returncode == 2 and "1 pending, 1 invalid" in dry.stdout
    # the plain multirun gets the same check from the sweeper: nothing is launched
    plain = train_cli(
        "-m", "experiment=smoke", "data.size=32,-5", "objective=sft,no_such_objective",
        f"paths.root={tmp_path / 'plain'}", cwd=tmp_path,
    )  # fmt: skip
    assert plain.returncode == 2, plain.stdout + plain.stderr[-3000:]
    out = plain.stdout + plain.stderr
    assert "3 run(s) have an invalid config: nothing was launched" in out
    assert "no_such_objective" in out and not (tmp_path / "plain" / "multirun").exists()


def test_jobs_errors(tmp_path):
    sweep = write_sweep(tmp_path / "q.yaml", grid={"seed": [0]}, pack=4)
    bad = sweep_cli(str(sweep), "--jobs", "0", "--dry-run", cwd=tmp_path)
    assert bad.returncode == 2 and "--jobs 0 is not valid" in bad.stderr
    bad = sweep_cli(str(sweep), "--jobs", "2", "--launcher", "slurm", cwd=tmp_path)
    assert bad.returncode == 2 and "'pack: N'" in bad.stderr


@pytest.mark.slow
def test_local_sweep_runs_then_skips_finished_runs(tmp_path):
    root = tmp_path / "root"
    sweep = write_sweep(
        tmp_path / "two.yaml", overrides=["experiment=smoke", QUIET], grid={"data.size": [32, 48]}
    )
    first = sweep_cli(str(sweep), "--root", str(root), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    dirs = run_dirs(root)
    assert len(dirs) == 2 and all(read_result(d) is not None for d in dirs.values())
    results = {n: (d / RESULT).read_bytes() for n, d in dirs.items()}
    summary = json.loads((root / "sweeps" / "two.summary.json").read_text())
    assert summary["counts"]["finished"] == 2
    assert all(Path(r["log"]).is_file() for r in summary["runs"])  # the run's own Hydra log

    again = sweep_cli(str(sweep), "--root", str(root), cwd=tmp_path)
    assert again.returncode == 0
    assert "all 2 run(s) finished; nothing to submit" in again.stdout
    assert len(multirun_dirs(root)) == 1  # no second multirun
    assert {n: (d / RESULT).read_bytes() for n, d in dirs.items()} == results

    name = sorted(dirs)[0]
    only = sweep_cli(str(sweep), "--root", str(root), "--only", name, "--dry-run", cwd=tmp_path)
    assert "1 run(s): 1 finished" in only.stdout and "would launch 0 of 1" in only.stdout

    # the plain multirun skips finished runs too, before launching anything
    plain = train_cli(
        "-m", "experiment=smoke", QUIET, "data.size=32,48,64", f"paths.root={root}",
        "hydra.sweeper.only=[sft-*-n32-*,sft-*-n48-*]", cwd=tmp_path,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "2 run(s): 2 finished; launching 0" in plain.stdout + plain.stderr
    assert len(multirun_dirs(root)) == 1 and len(run_dirs(root)) == 2


@pytest.mark.slow
def test_local_sweep_with_parallel_jobs_trains_each_sft_once(tmp_path):
    root = tmp_path / "root"
    sweep = write_sweep(
        tmp_path / "par.yaml",
        overrides=["experiment=smoke", QUIET, "trainer.max_steps=60"],
        grid={"objective": ["sft", "rft"], "data.size": [32, 48]},
    )
    proc = sweep_cli(str(sweep), "--root", str(root), "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "in 2 multirun(s)" in proc.stderr
    results = [read_result(d) for d in run_dirs(root).values()]
    assert sorted((r["objective"], r["n"]) for r in results) == [
        ("rft", 32),
        ("rft", 48),
        ("sft", 32),
        ("sft", 48),
    ]
    # every rft run started from the SFT run of its own size, trained once
    assert {r["sft_run"] for r in results if r["objective"] == "rft"} == {
        d.name for d in run_dirs(root).values() if read_result(d)["objective"] == "sft"
    }
    # each multirun ran one size: its SFT run and the rft run on top of it
    assert len(multirun_dirs(root)) == 2
    for mr in multirun_dirs(root):
        launched = [p for p in mr.iterdir() if p.is_dir() and p.name.isdigit()]
        assert len(launched) == 2


# =============================================================================== real SLURM
@pytest.fixture(scope="module")
def partition() -> str:
    return sh.require_slurm()


def _submitit_folders(root: Path) -> list[Path]:
    return sorted(
        p for m in multirun_dirs(root) for p in (m / ".submitit").glob("[0-9]*") if p.is_dir()
    )


@pytest.mark.slurm
def test_slurm_sweep_three_sizes_then_resubmit_skips_all(partition, tmp_path, record_property):
    root = tmp_path / "root"
    sweep = write_sweep(
        tmp_path / "three.yaml",
        overrides=["experiment=smoke", QUIET],
        grid={"data.size": [32, 48, 64]},
    )
    args = (
        str(sweep),
        "--root",
        str(root),
        "--launcher",
        "slurm",
        f"hydra.launcher.partition={partition}",
    )
    t0 = time.monotonic()
    proc = sweep_cli(*args, cwd=tmp_path)
    record_property("sweep_3_runs_s", round(time.monotonic() - t0, 1))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]

    dirs = run_dirs(root)
    assert sorted(read_result(d)["n"] for d in dirs.values()) == [32, 48, 64]
    # one job array of three tasks, run under SLURM
    (mr,) = multirun_dirs(root)
    tasks = sorted(p.name for p in (mr / ".submitit").iterdir() if "_" in p.name and p.is_dir())
    array_id = tasks[0].split("_")[0]
    assert tasks == [f"{array_id}_{i}" for i in range(3)]
    script = (mr / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-2" in script and f"#SBATCH --partition={partition}" in script
    assert "#SBATCH --ntasks-per-node=1" in script and "--gpus-per-node=1" not in script
    # the results are back as soon as each task wrote them; accounting follows a moment later
    sh.wait_until(lambda: all(sh.sacct_state(t) == "COMPLETED" for t in tasks), 60, "sacct")
    summary = json.loads((root / "sweeps" / "three.summary.json").read_text())
    assert sorted(r["slurm_job_id"] for r in summary["runs"]) == tasks
    results = {n: (d / RESULT).read_bytes() for n, d in dirs.items()}

    # re-submitting the sweep: all finished, nothing submitted
    again = sweep_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "all 3 run(s) finished; nothing to submit" in again.stdout
    assert len(multirun_dirs(root)) == 1

    # the plain Hydra multirun on SLURM: the sweeper sees every run finished and submits nothing
    jobs = _submitit_folders(root)
    plain = train_cli(
        "-m", "experiment=smoke", QUIET, "data.size=32,48,64", f"paths.root={root}",
        "hydra/launcher=slurm", f"hydra.launcher.partition={partition}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "3 run(s): 3 finished; launching 0" in plain.stdout + plain.stderr
    assert len(multirun_dirs(root)) == 1 and _submitit_folders(root) == jobs
    assert {n: (d / RESULT).read_bytes() for n, d in run_dirs(root).items()} == results


def _wait_proc(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"eightfold-sweep did not finish in {timeout}s:\n{out}\n{err[-3000:]}"
        ) from None


@pytest.mark.slurm
def test_slurm_preempted_run_is_requeued_and_resumes_from_checkpoint(
    partition, tmp_path, record_property
):
    """USR2 (what SLURM sends before a time limit or on preemption) -> submitit requeues the job
    -> the rerun resumes from checkpoints/last.ckpt, not from step 0."""
    root = tmp_path / "root"
    steps, every = 150, 10
    sweep = write_sweep(
        tmp_path / "slow.yaml",
        overrides=[
            "experiment=smoke",
            QUIET,
            f"trainer.max_steps={steps}",
            f"checkpoint_every_n_steps={every}",
        ],
        grid={"data.size": [64]},
    )
    args = [
        str(sweep),
        "--root",
        str(root),
        "--launcher",
        "slurm",
        f"hydra.launcher.partition={partition}",
    ]
    dry = sweep_cli(*args, "--dry-run", cwd=tmp_path)
    run_dir = (
        root
        / "runs"
        / next(line.split()[3] for line in dry.stdout.splitlines() if line.startswith("  ["))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "eightfold.sweep", *args], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        sh.wait_until((run_dir / "checkpoints" / "last.ckpt").exists, 300, "the first checkpoint")
        (job_dir,) = _submitit_folders(root)
        job_id = job_dir.name
        assert read_result(run_dir) is None, "the run finished before it could be interrupted"
        t0 = time.monotonic()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        out, err = _wait_proc(proc, 600)
    finally:
        if proc.poll() is None:
            proc.kill()
    record_property("signal_to_result_s", round(time.monotonic() - t0, 1))
    assert proc.returncode == 0, out + err[-3000:]
    result = read_result(run_dir)
    assert result["train_steps"] == steps
    resumed = result["resumed_from_step"]
    assert resumed is not None and every <= resumed < steps and resumed % every == 0, result
    log = "".join(p.read_text() for p in job_dir.glob("*_log.*"))
    assert f"Requeued job {job_id}" in log
    assert log.count("Starting with JobEnvironment") == 2  # the same job ran twice
    assert f"(step {resumed})" in log or str(resumed) in log


@pytest.mark.slurm
def test_slurm_packed_sweep_runs_every_run_in_one_job(partition, tmp_path, record_property):
    root = tmp_path / "root"
    sweep = write_sweep(
        tmp_path / "packed.yaml",
        overrides=["experiment=smoke", QUIET],
        grid={"data.size": [32, 48, 64]},
        slurm={"timeout_min": 10, "cpus_per_task": 2},
        pack=2,
    )
    t0 = time.monotonic()
    proc = sweep_cli(
        str(sweep),
        "--root",
        str(root),
        "--launcher",
        "slurm",
        f"hydra.launcher.partition={partition}",
        cwd=tmp_path,
    )
    record_property("packed_3_runs_s", round(time.monotonic() - t0, 1))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert sorted(read_result(d)["n"] for d in run_dirs(root).values()) == [32, 48, 64]
    summary = json.loads((root / "sweeps" / "packed.summary.json").read_text())
    (job,) = {r["slurm_job_id"] for r in summary["runs"]}  # one job for all three runs
    sh.wait_until(lambda: sh.sacct_state(job) == "COMPLETED", 60, "sacct COMPLETED")
    script = next(root.glob(f"multirun/packed_*_packed/{job}/{job}_submission.sh")).read_text()
    assert f"#SBATCH --partition={partition}" in script and "#SBATCH --cpus-per-task=2" in script
    # inside the job: the local sweep, two multiruns side by side (one shard of the sizes each)
    log = next(root.glob(f"multirun/packed_*_packed/{job}/{job}_0_log.err")).read_text()
    assert "in 2 multirun(s) (local)" in log and log.count("$ eightfold-train -m") == 2
    assert "hydra.sweeper.shard=1 hydra.sweeper.shards=2" in log


@pytest.mark.slurm
def test_slurm_failed_run_is_reported_and_the_others_finish(partition, tmp_path):
    root = tmp_path / "root"
    # n_head=3 does not divide the width (32): that run raises while building its model
    sweep = write_sweep(
        tmp_path / "heads.yaml",
        overrides=["experiment=smoke", QUIET],
        grid={"model.n_head": [1, 3, 4]},
    )
    args = [
        str(sweep),
        "--root",
        str(root),
        "--launcher",
        "slurm",
        f"hydra.launcher.partition={partition}",
    ]
    proc = sweep_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    summary = json.loads((root / "sweeps" / "heads.summary.json").read_text())
    status = {r["point"][0]: r for r in summary["runs"]}
    assert status["model.n_head=1"]["status"] == status["model.n_head=4"]["status"] == "finished"
    bad = status["model.n_head=3"]
    assert bad["status"] == "failed" and "divisible" in bad["error"]
    assert (Path(bad["run_dir"]) / FAILED).exists() and Path(bad["log"]).exists()
    assert "1 failed" in proc.stdout and "divisible" in proc.stdout

    # retried alone: only that run is selected, the finished ones are not touched
    retry = sweep_cli(*args, "--only", bad["name"], "--dry-run", cwd=tmp_path)
    assert "1 run(s): 1 failed" in retry.stdout and "would launch 1 of 1" in retry.stdout
    assert "(model.n_head=3)" in retry.stdout


@pytest.mark.slurm
def test_slurm_ddp_run_uses_srun_tasks(partition, tmp_path):
    """trainer.devices=2 on SLURM: two srun tasks, Lightning DDP (gloo on CPU) across them."""
    root = tmp_path / "root"
    sweep = write_sweep(
        tmp_path / "ddp.yaml",
        overrides=["experiment=smoke", QUIET, "trainer.devices=2", "+trainer.strategy=ddp"],
        grid={"data.size": [64]},
    )
    args = [
        str(sweep),
        "--root",
        str(root),
        "--launcher",
        "slurm",
        f"hydra.launcher.partition={partition}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eightfold.sweep", *args], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            logs = "".join(
                p.read_text() for f in _submitit_folders(root) for p in f.glob("*_log.out")
            )
            if "running in another process" in logs:  # one rank gave up: rank 0 would hang
                break
            time.sleep(1)
    finally:
        for f in _submitit_folders(root):
            subprocess.run(["scancel", f.name], check=False)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    (result,) = [read_result(d) for d in run_dirs(root).values()]
    assert result is not None and result["train_steps"] == 30
    (job_dir,) = _submitit_folders(root)
    script = next(job_dir.glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script
