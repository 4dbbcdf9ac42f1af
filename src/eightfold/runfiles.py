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
import tempfile
from pathlib import Path
from typing import Any

RESULT = "result.json"
FAILED = "failed.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
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


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    """The finished run's result, or None if the run has not finished (or its file is unreadable)."""
    path = Path(directory) / RESULT
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def last_checkpoint(directory: str | Path) -> Path | None:
    path = Path(directory) / CHECKPOINTS / LAST_CKPT
    return path if path.is_file() else None


def run_status(directory: str | Path) -> tuple[str, str]:
    """(status, error) of a run directory: finished, failed (with its error line), partial (a
    checkpoint to resume from) or pending (nothing yet)."""
    directory = Path(directory)
    if read_result(directory) is not None:
        return FINISHED, ""
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
