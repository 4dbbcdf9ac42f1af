"""Real-SLURM tests of the submission path (submitit on the local test cluster).

Start the cluster first (``bash scripts/start-slurm.sh``); without it these tests
skip, or fail when ``EIGHTFOLD_REQUIRE_SLURM=1`` (as in CI).  Nothing here mocks
SLURM: jobs go through sbatch/slurmctld/slurmd/srun and sacct for real.
"""

from __future__ import annotations

import os
import time

import pytest

try:  # tests/ may or may not become a package
    from . import slurm_helpers as sh
except ImportError:  # pragma: no cover - depends on how pytest imports tests/
    import slurm_helpers as sh

submitit = pytest.importorskip("submitit")

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def partition() -> str:
    return sh.require_slurm()


def _executor(folder, partition: str, **params):
    ex = submitit.AutoExecutor(folder=folder)
    assert ex.cluster == "slurm", f"submitit did not detect SLURM (got {ex.cluster!r})"
    ex.update_parameters(slurm_partition=partition, timeout_min=10, cpus_per_task=1, **params)
    return ex


def test_single_job_returns_value(partition, tmp_path, record_property):
    ex = _executor(tmp_path / "submitit", partition)
    t0 = time.monotonic()
    job = ex.submit(sh.node_info, 7)
    out = job.result()
    record_property("submit_to_result_s", round(time.monotonic() - t0, 2))

    assert out["value"] == 49
    assert out["job_id"] == job.job_id
    assert out["partition"] == partition
    assert out["array_task_id"] is None
    # the job ran in another process, under slurmd, not in this one
    assert out["pid"] != os.getpid()
    # accounting sees it (submitit relies on sacct for jobs that die without a result)
    assert sh.wait_until(lambda: sh.sacct_state(job.job_id) == "COMPLETED", 60, "sacct COMPLETED")


def test_job_array_of_three_returns_three_values(partition, tmp_path, record_property):
    ex = _executor(tmp_path / "submitit", partition, slurm_array_parallelism=3)
    t0 = time.monotonic()
    jobs = ex.map_array(sh.node_info, [1, 2, 3])
    outs = [j.result() for j in jobs]
    record_property("array3_submit_to_results_s", round(time.monotonic() - t0, 2))

    assert [o["value"] for o in outs] == [1, 4, 9]
    # one array job, three tasks
    assert len({o["array_job_id"] for o in outs}) == 1
    assert outs[0]["array_job_id"] is not None
    assert sorted(o["array_task_id"] for o in outs) == ["0", "1", "2"]
    assert [j.job_id for j in jobs] == [f"{outs[0]['array_job_id']}_{i}" for i in range(3)]


def test_raising_job_is_reported_with_remote_traceback(partition, tmp_path):
    ex = _executor(tmp_path / "submitit", partition)
    job = ex.submit(sh.raise_value_error, "boom-4242")
    with pytest.raises(submitit.core.utils.FailedJobError) as err:
        job.result()
    assert "boom-4242" in str(err.value)
    assert "ValueError" in str(err.value)


def test_cancelled_job_is_seen_through_accounting(partition, tmp_path):
    """A job that dies without writing a result must not make result() hang.

    That only works when sacct answers (slurmdbd), which is why start-slurm.sh
    sets up accounting: the sweep's failure summary depends on it.
    """
    ex = _executor(tmp_path / "submitit", partition)
    job = ex.submit(sh.sleep_then, 600, 1)
    sh.wait_until(lambda: sh.sacct_state(job.job_id) == "RUNNING", 120, "job RUNNING")
    job.cancel(check=True)
    with pytest.raises(submitit.core.utils.UncompletedJobError) as err:
        job.result()
    assert "CANCELLED" in str(err.value)


def test_preempted_checkpointable_job_is_requeued_and_resumes(partition, tmp_path, record_property):
    """submitit owns the requeue: USR2 -> checkpoint() -> scontrol requeue -> rerun."""
    marker = tmp_path / "first-run-started"
    ex = _executor(tmp_path / "submitit", partition)
    job = ex.submit(sh.ResumableCounter(str(marker), total=3000))
    sh.wait_until(marker.exists, 180, "the first run to reach step 5")
    t0 = time.monotonic()
    job._interrupt()  # what a preemption does: SIGTERM, then USR2 (submitit's signal)
    out = job.result()
    record_property("requeue_interrupt_to_result_s", round(time.monotonic() - t0, 2))

    assert out["restarts"] == ["0", "1"], out
    assert out["step"] == 3000
    # resumed from where the first run was, not from scratch
    assert out["resumed_from"] is not None and out["resumed_from"] >= 5, out
    assert out["job_id"] == job.job_id
