"""The run-directory rule: one run = one directory keyed by the config that decides its result.

The key is a hash of the resolved config minus the keys that cannot change the numbers (output
paths, worker counts, progress bars, the launcher). The same experiment launched twice, from two
sweeps, in the same second, or after a preemption, lands in the same directory: a finished run is
skipped, an interrupted one resumes, two sweeps cannot clobber each other's outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Dotted keys dropped before hashing: where things are written and how fast, never what is computed.
HASH_EXCLUDE = (
    "paths",
    "hydra",
    "perf",  # packing / chunked log-probs / activation checkpointing: same numbers, faster
    "logger",
    "callbacks",
    "debug_name",
    "data.num_workers",
    "data.cache_dir",
    "eval.batch_size",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "checkpoint_every_n_steps",
    "save_model",
    # how a teacher is reached, never what it writes (the cache ignores these too)
    "data.teacher.concurrency",
    "data.teacher.max_retries",
    "data.teacher.backoff_base_s",
    "data.teacher.backoff_max_s",
    "data.teacher.timeout_s",
    "data.teacher.device",
    "data.teacher.base_url",
)

RESULT = "result.json"
FAILED = "failed.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
MODEL_DIR = "model"  # the final weights + tokenizer in save_pretrained format


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def config_hash(cfg: DictConfig | dict, length: int = 10) -> str:
    """Hash of the result-determining part of ``cfg`` (resolved, excluded keys dropped)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    tree = json.loads(json.dumps(tree, default=str))  # deep copy with plain types
    for key in HASH_EXCLUDE:
        _drop(tree, key)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.objective.name}-{cfg.data.source}-n{cfg.data.size}-s{cfg.seed}-{config_hash(cfg)}"


def run_dir(cfg: DictConfig) -> Path:
    """``<paths.root>/runs/<objective>-<source>-n<size>-s<seed>-<hash>``."""
    return Path(cfg.paths.root) / "runs" / run_name(cfg)


def last_checkpoint(directory: Path) -> Path | None:
    path = Path(directory) / CHECKPOINTS / LAST_CKPT
    return path if path.is_file() else None


def write_atomic(path: Path, data: bytes | str) -> None:
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


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_result(directory: Path) -> dict | None:
    """The finished run's result, or None if the run has not finished (or its file is unreadable)."""
    path = Path(directory) / RESULT
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
