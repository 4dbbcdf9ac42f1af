"""The run-directory rule: one run = one directory keyed by the config that decides its result.

The key is a hash of the resolved config minus the keys that cannot change the numbers (output
paths, worker counts, progress bars, the launcher). The same experiment launched twice, from two
sweeps, in the same second, or after a preemption, lands in the same directory: a finished run is
skipped, an interrupted one resumes, two sweeps cannot clobber each other's outputs. What a run
directory holds, and how its status is read, is :mod:`eightfold.runfiles`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Dotted keys dropped before hashing: where things are written and how fast, never what is computed.
HASH_EXCLUDE = (
    "paths",
    "hydra",
    "perf",  # packing / chunked log-probs / activation checkpointing: same numbers, faster
    "logger",
    "callbacks",
    "data.num_workers",
    "data.cache_dir",
    "eval.batch_size",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "checkpoint_every_n_steps",
    "save_model",
    "recipe",  # read by the objective files: the values it feeds are hashed where they land
    "gpu_memory_gib",  # a check before launch (eightfold.memory), never what a run computes
    # how a teacher is reached, never what it writes (the cache ignores these too)
    "data.teacher.concurrency",
    "data.teacher.max_retries",
    "data.teacher.backoff_base_s",
    "data.teacher.backoff_max_s",
    "data.teacher.timeout_s",
    "data.teacher.device",
    "data.teacher.base_url",
)


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


# Keys hashed only while they are on (``{switch: keys}``): pass@k changes result.json when it is
# set (eval.pass_k=[1,5]); off (null, the default) it and its sampling settings leave the hash of
# every greedy-only run where it was before they existed. The same for the spurious-step analysis
# of step_dpo / awr: objective.spurious_analysis.positives=n adds rollouts and result fields,
# and objective.negatives_where=greedy_wrong (a greedy pass, fewer negatives).
HASH_WHEN_ON = {
    "eval.pass_k": ("eval.pass_k", "eval.sampling"),
    "objective.spurious_analysis.positives": ("objective.spurious_analysis",),
    "objective.negatives_where": ("objective.negatives_where",),
}


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def config_hash(cfg: DictConfig | dict, length: int = 10) -> str:
    """Hash of the result-determining part of ``cfg`` (resolved, excluded keys dropped)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    tree = json.loads(json.dumps(tree, default=str))  # deep copy with plain types
    for key in HASH_EXCLUDE:
        _drop(tree, key)
    for switch, keys in HASH_WHEN_ON.items():
        if _get(tree, switch) is None:
            for key in keys:
                _drop(tree, key)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.objective.name}-{cfg.data.source}-n{cfg.data.size}-s{cfg.seed}-{config_hash(cfg)}"


def run_dir(cfg: DictConfig) -> Path:
    """``<paths.root>/runs/<objective>-<source>-n<size>-s<seed>-<hash>``."""
    return Path(cfg.paths.root) / "runs" / run_name(cfg)
