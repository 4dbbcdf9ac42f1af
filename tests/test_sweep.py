"""eightfold-sweep and hydra/launcher=slurm.

The first part needs no SLURM (sweep files, expansion, run directories, the launcher config, a
local sweep). The tests marked ``slurm`` submit real jobs to the local test cluster
(scripts/start-slurm.sh); they skip without one, or fail under EIGHTFOLD_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import itertools
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

from eightfold.rundir import FAILED, RESULT, read_result
from eightfold.sweep import (
    Run,
    SweepError,
    cartesian_blocks,
    expand,
    hydra_value,
    load_sweep,
    packed_job_parameters,
    split_blocks,
    split_top_level,
)
from eightfold.train import CONF_DIR

try:  # tests/ may or may not become a package
    from . import slurm_helpers as sh
except ImportError:  # pragma: no cover - depends on how pytest imports tests/
    import slurm_helpers as sh

REPO = Path(__file__).resolve().parents[1]
QUIET = "trainer.enable_progress_bar=false"


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


def run_dirs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "runs").iterdir()} if (root / "runs").is_dir() else {}


def multirun_dirs(root: Path) -> list[Path]:
    return sorted((root / "multirun").iterdir()) if (root / "multirun").is_dir() else []


# =============================================================================== no SLURM needed
@pytest.mark.parametrize(
    "value",
    [
        "sft",
        "teacher+self",
        "deepseek-ai/deepseek-math-7b-base",
        "1e3",
        "true",
        "a b",
        "it's",
        3,
        0.25,
        True,
        None,
        [1, "x y"],
    ],
)
def test_hydra_value_parses_back_to_the_same_value(value):
    parsed = OverridesParser.create().parse_override(f"k={hydra_value(value)}").value()
    assert parsed == value


def test_split_top_level_respects_brackets_and_quotes():
    assert split_top_level("32,48,64") == ["32", "48", "64"]
    assert split_top_level("[1,2],{a:1,b:2},'x,y'") == ["[1,2]", "{a:1,b:2}", "'x,y'"]
    assert split_top_level("single") == ["single"]


def test_cartesian_blocks_cover_exactly_any_subset_of_the_grid():
    grid = {"a": ["1", "2", "3"], "b": ["x", "y"], "c": ["p", "q"]}
    all_runs = [
        Run(i, dict(zip(grid, combo))) for i, combo in enumerate(itertools.product(*grid.values()))
    ]
    rng = __import__("random").Random(0)
    subsets = [all_runs, all_runs[:1], all_runs[::2]] + [
        [r for r in all_runs if rng.random() < 0.5] for _ in range(200)
    ]
    for subset in subsets:
        blocks = cartesian_blocks(subset, list(grid))
        covered = [r.index for _, runs in blocks for r in runs]
        assert sorted(covered) == sorted(r.index for r in subset)  # each run exactly once
        for axes, runs in blocks:
            product = [dict(zip(axes, c)) for c in itertools.product(*axes.values())]
            # the block is a full product, listed in Hydra's job order
            assert [{k: r.values[k] for k in axes} for r in runs] == product
    assert len(cartesian_blocks(all_runs, list(grid))) == 1  # a fresh sweep: one multirun


def test_sweep_file_errors_are_clear(tmp_path):
    with pytest.raises(SweepError, match="unknown key"):
        load_sweep(write_sweep(tmp_path / "a.yaml", grids={"seed": [0]}))
    with pytest.raises(SweepError, match="non-empty list"):
        load_sweep(write_sweep(tmp_path / "b.yaml", grid={"seed": 0}))
    with pytest.raises(SweepError, match="grid also sweeps"):
        load_sweep(write_sweep(tmp_path / "c.yaml", variants={"v": ["seed=1"]}, grid={"seed": [0]}))
    with pytest.raises(SweepError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")


def test_cli_overrides_replace_axes_and_add_fixed_values(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path / "s.yaml", overrides=["experiment=smoke"], grid={"data.size": [32, 48]}
        )
    )
    spec.apply_cli(["data.size=64", "seed=0,1", "model.n_layer=2", "hydra.launcher.partition=a,b"])
    assert spec.grid == {"data.size": ["64"], "seed": ["0", "1"]}
    assert spec.overrides == ["experiment=smoke", "model.n_layer=2", "hydra.launcher.partition=a,b"]
    assert [r.overrides for r in expand(spec)] == [
        ["data.size=64", "seed=0"],
        ["data.size=64", "seed=1"],
    ]


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("cpu_default", 25),
        ("cpu_hard", 24),
        ("data_scaling", 60),
        ("data_source", 45),
        ("gsm8k_7b", 15),
        ("cpu_hard_seeds", 36),
        ("cpu_default_gpu", 25),
    ],
)
def test_repo_sweep_files_expand_and_compose(name, count, tmp_path):
    """Each study file composes into valid, distinct runs (a dry run: nothing trains)."""
    proc = sweep_cli(
        str(REPO / "sweeps" / f"{name}.yaml"), "--dry-run", "--root", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{count} run(s): {count} pending" in proc.stdout
    assert f"would run {count} of {count}" in proc.stdout
    assert "eightfold-train -m " in proc.stdout
    names = [line.split()[3] for line in proc.stdout.splitlines() if line.startswith("  [")]
    assert len(set(names)) == count  # no two grid points collapse into one run directory


def test_data_scaling_sweeps_every_objective():
    spec = load_sweep(REPO / "sweeps" / "data_scaling.yaml")
    assert spec.grid["objective"] == ["sft", "rft", "dpo", "step_dpo"]
    assert len(spec.grid["data.size"]) >= 5 and len(spec.grid["seed"]) >= 3


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
    assert (cpu.tasks_per_node, cpu.nodes, cpu.gpus_per_node) == (
        1,
        1,
        0,
    )  # CPU runs ask for no GPU
    # timeouts requeue (the run resumes from last.ckpt): must not be 0
    assert cpu.max_num_timeout > 0 and cpu.signal_delay_s > 0
    assert (
        _launcher("hydra.launcher.partition=gpu", "hydra.launcher.account=proj").partition == "gpu"
    )


def test_dry_run_lists_runs_and_command(tmp_path):
    sweep = write_sweep(
        tmp_path / "three.yaml",
        overrides=["experiment=smoke", QUIET],
        grid={"data.size": [32, 48, 64]},
    )
    proc = sweep_cli(
        str(sweep),
        "--dry-run",
        "--root",
        str(tmp_path / "root"),
        "--launcher",
        "slurm",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 run(s): 3 pending" in proc.stdout
    assert "data.size=32,48,64" in proc.stdout
    assert "hydra/launcher=slurm" in proc.stdout
    assert not (tmp_path / "root" / "multirun").exists()  # nothing ran


def test_invalid_config_is_reported_before_anything_runs(tmp_path):
    sweep = write_sweep(
        tmp_path / "bad.yaml", overrides=["experiment=smoke"], grid={"data.size": [32, -5]}
    )
    proc = sweep_cli(str(sweep), "--root", str(tmp_path / "root"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.size=-5 is not valid" in proc.stdout
    assert not (tmp_path / "root" / "multirun").exists()


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

    again = sweep_cli(str(sweep), "--root", str(root), cwd=tmp_path)
    assert again.returncode == 0
    assert "all 2 run(s) finished; nothing to submit" in again.stdout
    assert len(multirun_dirs(root)) == 1  # no second multirun
    assert {n: (d / RESULT).read_bytes() for n, d in dirs.items()} == results

    name = sorted(dirs)[0]
    only = sweep_cli(str(sweep), "--root", str(root), "--only", name, "--dry-run", cwd=tmp_path)
    assert "1 run(s): 1 finished" in only.stdout and "would run 0 of 1" in only.stdout
    summary = json.loads((root / "sweeps" / "two.summary.json").read_text())
    assert summary["counts"]["finished"] == 2


def test_split_blocks_keeps_objectives_of_one_size_together(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path / "g.yaml",
            grid={"objective": ["sft", "rft"], "data.size": [1, 2, 3], "seed": [0, 1]},
        )
    )
    runs = expand(spec)
    (block,) = cartesian_blocks(runs, list(spec.grid))
    parts = split_blocks([block], 3)
    assert len(parts) == 3
    assert sorted(r.index for _, rs in parts for r in rs) == [r.index for r in runs]  # a partition
    for axes, rs in parts:
        assert axes["objective"] == ["sft", "rft"] and len(axes["data.size"]) == 1
        assert [r.values["objective"] for r in rs][:2] == [
            "sft",
            "sft",
        ]  # SFT first, as Hydra numbers them
    # nothing left to split: as many blocks as there are (size, seed) points
    assert len(split_blocks([block], 64)) == 6


def test_pack_and_jobs_errors_and_packed_job_parameters(tmp_path):
    with pytest.raises(SweepError, match="pack=-1 is not valid"):
        load_sweep(write_sweep(tmp_path / "p.yaml", grid={"seed": [0]}, pack=-1))
    spec = load_sweep(
        write_sweep(
            tmp_path / "q.yaml",
            grid={"seed": [0]},
            pack=4,
            slurm={"timeout_min": 30, "gpus_per_node": 1, "array_parallelism": 8},
        )
    )
    spec.apply_cli(["hydra.launcher.partition=gpu", "hydra.launcher.signal_delay_s=60"])
    assert packed_job_parameters(spec) == {
        "tasks_per_node": 1,
        "nodes": 1,
        "timeout_min": 30,
        "gpus_per_node": 1,
        "slurm_partition": "gpu",
        "slurm_signal_delay_s": 60,
    }
    bad = sweep_cli(str(tmp_path / "q.yaml"), "--jobs", "0", "--dry-run", cwd=tmp_path)
    assert bad.returncode == 2 and "--jobs 0 is not valid" in bad.stderr
    bad = sweep_cli(str(tmp_path / "q.yaml"), "--jobs", "2", "--launcher", "slurm", cwd=tmp_path)
    assert bad.returncode == 2 and "'pack: N'" in bad.stderr


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
    # every rft run started from the SFT run its own multirun trained before it (not a second one)
    assert {r["sft_run"] for r in results if r["objective"] == "rft"} == {
        d.name for d in run_dirs(root).values() if read_result(d)["objective"] == "sft"
    }
    assert len(multirun_dirs(root)) == 2


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
    assert all(sh.sacct_state(t) == "COMPLETED" for t in tasks)
    summary = json.loads((root / "sweeps" / "three.summary.json").read_text())
    assert sorted(r["slurm_job_id"] for r in summary["runs"]) == tasks
    results = {n: (d / RESULT).read_bytes() for n, d in dirs.items()}

    # re-submitting the sweep: all finished, nothing submitted
    again = sweep_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "all 3 run(s) finished; nothing to submit" in again.stdout
    assert len(multirun_dirs(root)) == 1

    # the plain Hydra multirun on SLURM: jobs run, and the app skips each finished run
    plain = subprocess.run(
        [sys.executable, "-m", "eightfold.train", "-m", "experiment=smoke", QUIET, "data.size=32,48,64",
         f"paths.root={root}", "hydra/launcher=slurm", f"hydra.launcher.partition={partition}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert {n: (d / RESULT).read_bytes() for n, d in run_dirs(root).items()} == results
    logs = "".join(p.read_text() for f in _submitit_folders(root) for p in f.glob("*_log.out"))
    assert logs.count("is finished") >= 3  # "skip: <run> is finished"


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
    assert sh.sacct_state(job) == "COMPLETED"
    script = next(root.glob(f"multirun/packed_*_packed/{job}/{job}_submission.sh")).read_text()
    assert f"#SBATCH --partition={partition}" in script and "#SBATCH --cpus-per-task=2" in script
    # inside the job: the local sweep, one multirun per size, two at a time
    log = next(root.glob(f"multirun/packed_*_packed/{job}/{job}_0_log.err")).read_text()
    assert "running 3 in 3 multirun(s) (local)" in log and log.count("$ eightfold-train -m") == 3


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
    status = {r["overrides"][0]: r for r in summary["runs"]}
    assert status["model.n_head=1"]["status"] == status["model.n_head=4"]["status"] == "finished"
    bad = status["model.n_head=3"]
    assert bad["status"] == "failed" and "divisible" in bad["error"]
    assert (Path(bad["run_dir"]) / FAILED).exists() and Path(bad["log"]).exists()
    assert "1 failed" in proc.stdout and "divisible" in proc.stdout

    # retried alone: only that run is selected, the finished ones are not touched
    retry = sweep_cli(*args, "--only", bad["name"], "--dry-run", cwd=tmp_path)
    assert "1 run(s): 1 failed" in retry.stdout and "would run 1 of 1" in retry.stdout
    assert "model.n_head=3 " in retry.stdout


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
