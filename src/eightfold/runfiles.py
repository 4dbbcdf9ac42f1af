"""The files a run leaves on disk, read and written in one place. Standard library only.

A run directory holds ``config.yaml`` (written when the run starts), then ``result.json``
(finished) or ``failed.json`` (crashed), ``checkpoints/last.ckpt`` while it trains and ``model/``
(``save_pretrained`` weights) when it keeps them. Training, the sweep tool, the data pipeline and
the analysis package (which must not need torch or omegaconf) all read run state through this
module, so "finished" means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RESULT = "result.json"
FAILED = "failed.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
SHARDED_META = "meta.pt"  # Lightning's metadata file in a sharded checkpoint folder
MODEL_DIR = "model"  # the final weights + tokenizer in save_pretrained format

# The status of a run directory, in the order a summary lists them (``invalid`` is a config
# that does not compose or validate: it has no directory).
FINISHED, FAILED_STATUS, PARTIAL, PENDING, INVALID = (
    "finished",
    "failed",
    "partial",
    "pending",
    "invalid",
)
STATUSES = (FINISHED, FAILED_STATUS, PARTIAL, PENDING, INVALID)

# Above this many bytes of weights, the fingerprint is (name, size, mtime) instead of a sha256.
HASH_WEIGHTS_MAX_BYTES = 2 * 1024**3
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


# Result fields every finished run's result.json has: a JSON object without them is no result.
RESULT_KEYS = ("test_accuracy", "test_error")
TEMP_SUFFIX = ".tmp"  # write_atomic's temp files: .<name>.<random>.tmp beside the target


class CorruptResult(ValueError):
    """A result.json that is not JSON (truncated, overwritten): reported, never silently redone."""


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file.

    The file gets the mode any new file gets (0666 minus the umask), not mkstemp's 0600: a group
    shares a results folder with ``umask 002``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_result(directory: str | Path) -> dict | None:
    """The finished run's result, or None if the run has not finished: no result.json, or one
    that holds no result (not a JSON object with the RESULT_KEYS, e.g. ``[]`` or ``{}``).

    Raises :class:`CorruptResult` when result.json is not JSON (truncated, binary): whether the
    run finished is unknown, and redoing it would hide the damage."""
    path = Path(directory) / RESULT
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        result = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptResult(
            f"{path} is corrupt ({len(raw)} bytes, not valid JSON: {err}): check the run, then"
            " delete the file to run it again"
        ) from None
    if not isinstance(result, dict) or not all(k in result for k in RESULT_KEYS):
        return None
    return result


def model_complete(model_dir: str | Path) -> bool:
    """A ``save_pretrained`` folder a later run can load: its config and every weight file (the
    shards an index lists, or at least one weight file)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        return False
    for index in model_dir.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return all((model_dir / shard).is_file() for shard in shards)
    return any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in model_dir.iterdir())


def remove_temp_files(directory: str | Path, prefix: str = "") -> list[Path]:
    """Delete the temp files (and temp folders) a killed writer left in ``directory``, recursively:
    ``.<prefix>*.tmp``. Call it only while holding the lock of what ``directory`` holds."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in sorted(directory.rglob(f".{prefix}*{TEMP_SUFFIX}"), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def check_writable_dir(path: str | Path, what: str) -> str | None:
    """Why ``path`` cannot be (or become) a directory this process writes into, as one line
    naming ``what`` (e.g. ``paths.root``), or None when it can."""
    path = Path(path).expanduser()
    probe = path if path.is_absolute() else Path.cwd() / path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            return f"{what}={path} is not valid: {probe} is a broken symbolic link"
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return (
            f"{what}={path} is not valid: {probe} is a file, not a directory; expected a directory"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        hint = "" if probe == path else f" (to create {path} in it)"
        return (
            f"{what}={path} is not writable: no write permission on {probe}{hint};"
            " expected a directory you can write to"
        )
    return None


def last_checkpoint(directory: str | Path) -> Path | None:
    path = Path(directory) / CHECKPOINTS / LAST_CKPT
    # a file, or a sharded checkpoint (trainer=fsdp): a folder, whole once its metadata is in
    return path if path.is_file() or (path / SHARDED_META).is_file() else None


def run_status(directory: str | Path) -> tuple[str, str]:
    """(status, error) of a run directory: finished, failed (with its error line), partial (a
    checkpoint to resume from) or pending (nothing yet)."""
    directory = Path(directory)
    try:
        if read_result(directory) is not None:
            return FINISHED, ""
    except CorruptResult as err:
        return FAILED_STATUS, str(err)
    failed = directory / FAILED
    if failed.exists():
        try:
            return FAILED_STATUS, str(json.loads(failed.read_text()).get("error", "")).strip()
        except (OSError, json.JSONDecodeError, AttributeError):
            return FAILED_STATUS, f"unreadable {failed}"
    if last_checkpoint(directory) is not None:
        return PARTIAL, ""
    return PENDING, ""


def fingerprint_path(path: str | Path) -> str:
    """sha256 over a file or a directory's files (relative names + contents): a checkpoint hash."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the weight files of a ``save_pretrained`` folder (cheap proxy for huge models)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    h = hashlib.sha256()
    if sum(p.stat().st_size for p in files) <= HASH_WEIGHTS_MAX_BYTES:
        for p in files:
            h.update(p.name.encode())
            h.update(p.read_bytes())
        return h.hexdigest()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "stat-" + h.hexdigest()
