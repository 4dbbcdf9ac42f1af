"""Config checks that run before any data is generated or any step is trained.

Every message names the bad value and says what would be valid.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eightfold.config import ConfigError
from eightfold.data.arithmetic import max_variables, pool_size
from eightfold.data.star_graph import check_task as check_star_graph
from eightfold.runfiles import check_writable_dir

__all__ = ["ConfigError", "check_command_line", "validate_config"]

# Kept in step with eightfold.data.synthetic.SOURCES (a test checks it); listed here so that
# validation stays import-light.
SOURCES = (
    "procedural",
    "star_graph",
    "procedural_teacher",
    "gsm8k_teacher",
    "math_teacher",
    "gsm8k",
    "math",
)
KINDS = ("procedural", "gsm8k", "math", "star_graph")
# Sources with a generator of fresh problems (eightfold.data.datamodule.POOLS; a test checks it):
# the ones objective.sample_prompts=pool can sample on.
POOL_SOURCES = ("procedural", "procedural_teacher", "star_graph")
SEED_END = 2**32  # seeds are 0 <= seed < 2**32 (Lightning, numpy)


def _positive_int(value, key: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"{key}={value!r} is not valid: expected a positive integer, e.g. {key}={example}"
        )
    return value


def validate_config(cfg: DictConfig) -> None:
    _check_objective(cfg)
    data = cfg.data
    size = _positive_int(data.size, "data.size", "500")
    _positive_int(data.test_size, "data.test_size", "500")
    _positive_int(cfg.trainer.max_steps, "trainer.max_steps", "600")
    perf = cfg.get("perf") or {}
    for key, example in (("logits_chunk_size", "4096"), ("pack_length", "4096")):
        if perf.get(key) is not None:  # checked here, so a sweep rejects it before submitting
            _positive_int(perf[key], f"perf.{key}", example)
    _check_outputs(cfg)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < SEED_END:
        # Lightning and numpy take seeds in [0, 2**32); a negative one would also alias a positive
        # one in random.Random (it hashes abs(seed))
        raise ConfigError(
            f"seed={cfg.seed!r} is not valid: expected an integer 0 <= seed < 2**32"
            f" ({SEED_END}), e.g. seed=0"
        )
    if data.source == "self":  # self-generated data needs pi_sft: it is an objective, not a file
        raise ConfigError(
            "data.source='self' is not a data source: training on the SFT model's own correct samples"
            " is objective=rft objective.positives=self (sweep objective.positives=teacher,self,teacher+self"
            " for the teacher-vs-self comparison)"
        )
    if data.source not in SOURCES:
        raise ConfigError(
            f"data.source={data.source!r} is not valid: expected one of {', '.join(SOURCES)}"
        )
    if data.kind not in KINDS:
        raise ConfigError(
            f"data.kind={data.kind!r} is not valid: expected one of {', '.join(KINDS)}"
        )
    if data.source.endswith("_teacher"):
        _check_teacher(data)
    if (data.source == "star_graph") != (data.kind == "star_graph"):
        raise ConfigError(
            f"data.source={data.source!r} with data.kind={data.kind!r} is not valid: the star graph"
            " is data.source=star_graph with data.kind=star_graph (data=star_graph)"
        )
    if data.source == "star_graph":
        task = dict(data.task)
        if (
            not {"degree", "path_length", "num_nodes"}
            <= set(task)
            <= {
                "degree",
                "path_length",
                "num_nodes",
                "cue",
            }
        ):
            raise ConfigError(
                f"data.task={task} is not valid for data.source=star_graph: expected the keys"
                " degree, path_length, num_nodes and optionally cue (conf/data/star_graph.yaml)"
            )
        try:
            check_star_graph(**task, size=size, test_size=data.test_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if data.source in ("procedural", "procedural_teacher"):
        task = data.task
        chains = _positive_int(task.chains, "data.task.chains", "2")
        steps = _positive_int(task.steps, "data.task.steps", "2")
        modulus = task.modulus
        if modulus not in (2, 3, 5, 7, 11, 13):
            raise ConfigError(
                f"data.task.modulus={modulus!r} is not valid: expected a prime whose residues are"
                " written as digits or short numbers: 2, 3, 5, 7, 11 or 13"
            )
        if max_variables(chains, steps) > 26:
            raise ConfigError(
                f"data.task.chains={chains} x data.task.steps={steps} needs {max_variables(chains, steps)}"
                " variables; at most 26 (a-z) are available"
            )
        pool = pool_size(chains, steps, modulus)
        if data.test_size >= pool:
            room = pool - size
            fix = (
                f"use data.test_size<={room} (data.size={size} comes from the rest)"
                if room >= 1
                else "raise data.task.steps / data.task.chains"
            )
            raise ConfigError(
                f"data.test_size={data.test_size} is larger than the problem pool: chains={chains},"
                f" steps={steps}, modulus={modulus} give {pool} distinct problems, and the training"
                f" problems come from the same pool; {fix}"
            )
        available = pool - data.test_size
        if size > available:
            raise ConfigError(
                f"data.size={size} is larger than the problem pool: chains={chains}, steps={steps},"
                f" modulus={modulus} give {available} distinct problems outside the test set;"
                f" use data.size<={available} or raise data.task.steps / data.task.chains"
            )


# logger/ entries whose tracker needs a package: `_target_` -> (modules, the extra that installs it)
TRACKER_PACKAGES = {
    "eightfold.checkpointing.tensorboard_logger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "eightfold.checkpointing.wandb_logger": (("wandb",), "wandb"),
    "eightfold.checkpointing.mlflow_logger": (("mlflow",), "mlflow"),
}


def check_loggers(cfg) -> list[str]:
    """The ``logger`` group's entries (none imported: a tracker import takes seconds): each has a
    ``_target_`` and the package its tracker needs is installed. Returns the entry names."""
    if cfg is None:
        return []
    if not OmegaConf.is_dict(cfg) and not isinstance(cfg, dict):
        raise ConfigError(
            f"logger={cfg!r} is not valid: expected a logger config, e.g. logger=csv,"
            " logger=tensorboard, logger=[csv,mlflow] or logger=many"
        )
    for name, entry in cfg.items():
        target = entry.get("_target_") if hasattr(entry, "get") else None
        if not target:
            raise ConfigError(
                f"logger.{name}={entry!r} is not valid: expected an entry with a _target_"
                " (conf/logger/*.yaml)"
            )
        modules, extra = TRACKER_PACKAGES.get(target, ((), None))
        if modules and not any(_installed(m) for m in modules):
            raise ConfigError(
                f"logger.{name} needs the {modules[0]} package, which is not installed:"
                f" pip install 'eightfold[{extra}]'"
            )
    return list(cfg)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_pass_k(eval_cfg) -> list[int]:
    """``eval.pass_k`` (null, k or a list of k) and its sampling settings; returns the ks."""
    if eval_cfg is None or eval_cfg.get("pass_k") is None:
        return []
    raw = eval_cfg.pass_k
    ks = list(raw) if OmegaConf.is_list(raw) or isinstance(raw, (list, tuple)) else [raw]
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
        raise ConfigError(
            f"eval.pass_k={_plain(raw)!r} is not valid: expected null (off) or a list of positive"
            " integers, e.g. eval.pass_k=[1,5]"
        )
    sampling = eval_cfg.get("sampling") or {}
    n = _positive_int(sampling.get("n"), "eval.sampling.n", "16")
    if max(ks) > n:
        raise ConfigError(
            f"eval.pass_k={_plain(raw)!r} is not valid with eval.sampling.n={n}: pass@k needs at"
            f" least k samples per problem; use eval.sampling.n>={max(ks)}"
        )
    t = sampling.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise ConfigError(
            f"eval.sampling.temperature={t!r} is not valid: expected a number >= 0 (0 = greedy)"
        )
    top_p = sampling.get("top_p")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(
            f"eval.sampling.top_p={top_p!r} is not valid: expected a number in (0, 1], e.g. 1.0"
        )
    return sorted(set(ks))


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _check_outputs(cfg: DictConfig) -> None:
    """What a run writes besides its numbers: the trackers of logger/, the pass@k of eval/."""
    check_loggers(cfg.get("logger"))
    check_pass_k(cfg.get("eval"))


def _check_objective(cfg: DictConfig) -> None:
    """The values' types and choices are checked at compose time (eightfold.config); a key that
    an objective's YAML leaves at the schema's ??? is caught here, before any work."""
    missing = sorted(OmegaConf.missing_keys(cfg.objective))
    if missing:
        raise ConfigError(
            f"objective={cfg.objective.get('name', '?')} leaves {', '.join(missing)} unset:"
            " give each a value in its conf/objective/*.yaml or on the command line"
        )
    if cfg.objective.get("sample_prompts") == "pool" and cfg.data.source not in POOL_SOURCES:
        raise ConfigError(
            f"objective.sample_prompts=pool needs fresh problems, which data.source="
            f"{cfg.data.source!r} cannot generate: use a source with a generator"
            f" ({', '.join(POOL_SOURCES)}) or objective.sample_prompts=train"
        )


def _check_teacher(data: DictConfig) -> None:
    from eightfold.data.synthetic import LABELS
    from eightfold.data.teachers import check_config

    if data.get("teacher") is None:
        raise ConfigError(
            f"data.source={data.source!r} needs data.teacher: use data=teacher (or +teacher@data.teacher=...)"
        )
    try:
        check_config(OmegaConf.to_container(data.teacher, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if data.get("label", "reference") not in LABELS:
        raise ConfigError(
            f"data.label={data.label!r} is not valid: expected one of {', '.join(LABELS)}"
        )


# -----------------------------------------------------------------------------
# the command line, before Hydra writes anything (.hydra/*.yaml, the run and sweep folders)

# A config key that names a secret: refused, its value goes in an environment variable instead.
_SECRET_KEY = re.compile(
    r"(.*_)?(api_?key|secret(_key)?|password|passwd|(access|auth|bearer|api|hf)_token)", re.I
)
_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+@")
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
_KEY_HOME = (
    "put the key in the environment variable named by data.teacher.api_key_env (e.g."
    " OPENAI_API_KEY): a config value is written into .hydra/*.yaml, config.yaml and the logs"
)
# Hydra flags that print and exit without writing under paths.root
_NO_OUTPUT_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc")


def secret_in_arguments(args: Sequence[str]) -> str | None:
    """Why an argument would put a credential on disk (one line that does not repeat it), or None.

    Hydra saves every override in ``.hydra/overrides.yaml`` and the composed config in
    ``.hydra/config.yaml`` before the app runs, so a key must be refused before Hydra starts."""
    for arg in args:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~") if sep and not arg.startswith("-") else ""
        leaf = name.rsplit(".", 1)[-1]
        if name and _SECRET_KEY.fullmatch(leaf):
            return f"{name} is not allowed on the command line: {_KEY_HOME}"
        where = name or "an argument"
        if _URL_CREDENTIALS.search(value if name else arg):
            return (
                f"{where} holds credentials in a URL (user:password@host): give the URL without"
                f" them and {_KEY_HOME}"
            )
        if _KEY_LIKE.search(value if name else arg):
            return f"{where} holds what looks like an API key (sk-...): {_KEY_HOME}"
    return None


def root_from_arguments(
    args: Sequence[str], environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Path | None:
    """``paths.root`` as conf/paths/default.yaml resolves it for these overrides: the last
    ``paths.root=`` override, else ``$EIGHTFOLD_ROOT``, else ``<cwd>/outputs``. None when the
    override is an interpolation or a sweep (Hydra resolves those)."""
    environ = os.environ if environ is None else environ
    root = None
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "paths.root":
            root = value
    if root is None:
        root = environ.get("EIGHTFOLD_ROOT") or str((cwd or Path.cwd()) / "outputs")
    root = root.strip()
    if len(root) >= 2 and root[0] == root[-1] and root[0] in "'\"":
        root = root[1:-1]
    elif "," in root or re.match(r"^(choice|range|interval|glob|shuffle|sort|tag)\(", root):
        return None
    if "${" in root or not root:
        return None
    return Path(root)


def check_command_line(args: Sequence[str]) -> None:
    """What ``eightfold-train`` checks before Hydra starts: no credential in an argument, and a
    ``paths.root`` it can write to (not a file, not read-only). Raises ConfigError."""
    problem = secret_in_arguments(args)
    if problem:
        raise ConfigError(problem)
    if any(a.split("=")[0] in _NO_OUTPUT_FLAGS for a in args):
        return
    root = root_from_arguments(args)
    if root is not None and (problem := check_writable_dir(root, "paths.root")):
        raise ConfigError(problem)
