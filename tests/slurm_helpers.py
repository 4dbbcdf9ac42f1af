"""Helpers for the tests marked ``slurm`` (a real SLURM, see scripts/start-slurm.sh).

``require_slurm()`` finds the cluster (``SLURM_CONF`` or ``$SLURM_CI_DIR/env``),
checks that a node answers, and returns the partition to submit to.  When no
SLURM is there it skips the test, unless ``EIGHTFOLD_REQUIRE_SLURM=1`` (CI),
in which case it fails: a broken SLURM must not hide behind a skip.

The job functions below run on the compute node.  This module is imported by
the tests as a top-level module that the node cannot import, so it is pickled
by value (``cloudpickle.register_pickle_by_value``), see ``_pickle_by_value``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REQUIRE_ENV = "EIGHTFOLD_REQUIRE_SLURM"
DEFAULT_CI_DIR = "/tmp/eightfold-slurm"
RESPONSIVE_STATES = ("idle", "mixed", "allocated", "completing")


def _pickle_by_value() -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_pickle_by_value()


# --------------------------------------------------------------------- discovery
def _ensure_slurm_conf() -> None:
    """Point the clients at the test cluster's config when nothing else does."""
    if os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").exists():
        return
    conf = Path(os.environ.get("SLURM_CI_DIR", DEFAULT_CI_DIR)) / "etc" / "slurm.conf"
    if conf.exists():
        os.environ["SLURM_CONF"] = str(conf)


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def slurm_unavailable_reason(wait_s: float = 15) -> str | None:
    """None when a SLURM node answers; otherwise why not (for skip/fail messages).

    When the controller answers but its node is still registering, looks again
    for up to ``wait_s`` (not a timing assertion: only how long to look before
    giving up).  A controller that does not answer is reported at once.
    """
    _ensure_slurm_conf()
    hint = " (start the test cluster with scripts/start-slurm.sh)"
    if shutil.which("sinfo") is None:
        return "no SLURM here: `sinfo` is not on PATH" + hint
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    if not Path(conf).exists():
        return f"no SLURM config: {conf} does not exist" + hint
    # `scontrol ping` answers at once; sinfo retries a dead controller for ~10 s
    try:
        ping = _run(["scontrol", "ping"])
    except subprocess.TimeoutExpired:
        return "`scontrol ping` did not answer within 20 s" + hint
    if ping.returncode != 0 or "UP" not in ping.stdout:
        first = (ping.stdout.strip() or ping.stderr.strip()).splitlines()[:1]
        return (
            f"the SLURM controller is not up (`scontrol ping`: {first[0] if first else ''})" + hint
        )
    deadline = time.monotonic() + wait_s
    while True:
        try:
            proc = _run(["sinfo", "-h", "-N", "-o", "%N %T"])
        except subprocess.TimeoutExpired:
            return "`sinfo` did not answer within 20 s" + hint
        if proc.returncode != 0:
            return f"`sinfo` failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}" + hint
        states = [line.split()[-1] for line in proc.stdout.splitlines() if line.strip()]
        if any(s.rstrip("*~#!%$@^-").lower() in RESPONSIVE_STATES for s in states):
            return None
        if time.monotonic() >= deadline:
            return f"no idle SLURM node answers (node states: {states or 'none'})" + hint
        time.sleep(1)


def default_partition() -> str:
    """$EIGHTFOLD_SLURM_PARTITION or $SLURM_CI_PARTITION, else the cluster's default partition."""
    for var in ("EIGHTFOLD_SLURM_PARTITION", "SLURM_CI_PARTITION"):
        if os.environ.get(var):
            return os.environ[var]
    out = _run(["sinfo", "-h", "-o", "%P"]).stdout.split()
    for p in out:
        if p.endswith("*"):
            return p.rstrip("*")
    if not out:
        raise RuntimeError("sinfo lists no partition")
    return out[0]


def require_slurm() -> str:
    """Return the partition to use, or skip (fail under EIGHTFOLD_REQUIRE_SLURM=1)."""
    reason = slurm_unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return default_partition()


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def sacct_state(job_id: str) -> str:
    """The job's state in the accounting DB ('' when sacct does not know it yet)."""
    proc = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
    return proc.stdout.strip().splitlines()[0].split()[0] if proc.stdout.strip() else ""


# --------------------------------------------------------------------- job bodies
def node_info(x: int) -> dict:
    """Runs on the node: the value plus where and as what it ran."""
    return {
        "value": x * x,
        "hostname": socket.gethostname(),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "pid": os.getpid(),
    }


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def _checkpointable_base():
    import submitit

    return submitit.helpers.Checkpointable


class ResumableCounter(_checkpointable_base()):
    """A checkpointable job that counts steps up to ``total``.

    The first run counts slowly (0.2 s a step) and, once past step 5, writes
    ``marker`` so that the test knows it may interrupt it.  On the signal
    submitit calls ``checkpoint`` (inherited: it re-submits this object with
    its current state, ``self.step`` included) and requeues the job; the rerun
    continues from that step, quickly, and returns where it resumed from.
    """

    def __init__(self, marker: str, total: int) -> None:
        self.marker = marker
        self.total = total
        self.step = 0
        self.resumed_from: int | None = None
        self.restarts: list[str] = []

    def __call__(self) -> dict:
        self.restarts.append(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if self.step > 0:
            self.resumed_from = self.step
        while self.step < self.total:
            if self.resumed_from is None:
                time.sleep(0.2)
                if self.step == 5:
                    Path(self.marker).write_text(f"running {os.environ.get('SLURM_JOB_ID')}\n")
            self.step += 1
        return {
            "step": self.step,
            "resumed_from": self.resumed_from,
            "restarts": list(self.restarts),
            "job_id": os.environ.get("SLURM_JOB_ID"),
        }
