"""Resume-safe outputs: atomic checkpoints, metrics that survive a resume, the experiment trackers
of the ``logger/`` config group, a step progress bar, and a console without third-party noise.

Trackers (``logger=csv`` by default; ``tensorboard``, ``wandb``, ``mlflow``; ``many`` or a list such
as ``logger=[csv,mlflow]`` for several). Every tracker run is named after the run directory and
tagged with the run's config hash and the sweep's name, and a requeued run continues the same
tracker run: TensorBoard writes to the same ``logs/tensorboard`` folder (events after the resumed
checkpoint are purged), wandb uses an id derived from the run directory with ``resume="allow"``,
MLflow reopens the run whose id is stored in ``logs/mlflow.json``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.loggers import (  # the trackers' own packages are imported when used
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from eightfold.runfiles import SHARDED_META, write_atomic

log = logging.getLogger("eightfold")

LOGS = "logs"  # <run>/logs: metrics.csv, tensorboard/, mlflow.json


class AtomicCheckpointIO(TorchCheckpointIO):
    """Serialise to memory, then write-to-temp + rename (Lightning writes in place).

    Lightning saves a step's checkpoint before it hands that step's metrics to the loggers. So
    that a checkpoint on disk always comes after the metrics of every step it holds, the write
    is held back (the bytes are taken at once: the state is that of the step) until
    :class:`CheckpointAfterMetrics` has flushed the loggers: a run killed in between resumes
    from the checkpoint before, and logs its steps again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: tuple[Path, bytes] | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self.pending = (Path(path), buffer.getvalue())

    def write_pending(self) -> None:
        if self.pending is not None:
            path, payload = self.pending
            self.pending = None
            write_atomic(path, payload)


class CheckpointAfterMetrics(Callback):
    """Writes the checkpoint :class:`AtomicCheckpointIO` holds once the step's metrics are logged
    and every logger has flushed: at the next batch, the end of the epoch, the end of training."""

    def __init__(self, checkpoint_io: AtomicCheckpointIO) -> None:
        self.checkpoint_io = checkpoint_io

    def _write(self, trainer) -> None:
        if self.checkpoint_io.pending is None:
            return
        for logger in trainer.loggers:
            logger.save()
        self.checkpoint_io.write_pending()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._write(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._write(trainer)  # one saved by a callback after ours in on_train_end

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.checkpoint_io.pending = None  # its step's metrics may not be out: keep the one before


class RngState(Callback):
    """Every global RNG a run draws from (python, numpy, torch, CUDA) in each checkpoint, set
    back when the run resumes: dropout and any sampling in a step go on as if never stopped.

    Lightning saves no RNG state. The state is taken when the checkpoint is (the end of a step)
    and restored at the start of training, after everything a resumed process does first."""

    def __init__(self) -> None:
        self._restore: dict | None = None

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._restore:
            return
        import random

        import numpy as np

        state, self._restore = self._restore, None
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)


class LastTrainLoss(Callback):
    """The training loss of the last step, kept in each checkpoint: a run resumed from its final
    checkpoint (killed while it evaluated) trains no step, yet reports the same final loss."""

    def __init__(self) -> None:
        self.value: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.value = float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.value = state_dict.get("value")


class _ResumingWriter(ExperimentWriter):
    """metrics.csv across a resume, each step once. When it opens, the rows of steps at or after
    ``keep_before_step`` (the resumed checkpoint's step; 0 for a fresh start) are dropped: a
    killed attempt logged them after its last checkpoint, and the resumed run logs them again.
    Every flush rewrites the file atomically, so a kill never leaves half a row."""

    def __init__(self, log_dir: str, keep_before_step: int = 0) -> None:
        self._keep_before = int(keep_before_step)
        self._rows: list[dict] = []
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run keeps its earlier rows
        path = Path(self.metrics_file_path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        self.metrics_keys = list(reader.fieldnames or [])
        self._rows = [
            r for r in rows if _step_of(r) is not None and _step_of(r) < self._keep_before
        ]
        if len(self._rows) != len(rows):
            self._write()

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self._rows.extend(self.metrics)
        self.metrics = []
        self._write()

    def _write(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(self._rows)
        write_atomic(self.metrics_file_path, out.getvalue())


def _step_of(row: dict) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that keeps one metrics.csv across a resume (the same logger run after a requeue),
    each step in it once (:class:`_ResumingWriter`)."""

    def __init__(self, *args: Any, keep_before_step: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_before_step = keep_before_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self._keep_before_step)
        return self._experiment


# -----------------------------------------------------------------------------
# the logger/ config group


@dataclass(frozen=True)
class RunInfo:
    """What every tracker is told about the run it records."""

    directory: Path
    config_hash: str
    sweep: str | None = None
    resumed_from_step: int | None = None  # the checkpoint's step when the run resumes
    params: dict = field(default_factory=dict)  # the resolved config, logged as hyperparameters

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def tags(self) -> dict[str, str]:
        tags = {"config_hash": self.config_hash, "run_dir": str(self.directory)}
        if self.sweep:
            tags["sweep"] = self.sweep
        return tags


def instantiate_loggers(cfg: Any, run: RunInfo) -> list[Logger]:
    """One Lightning logger per entry of the ``logger`` config (lightning-hydra-template style);
    the entries were checked by ``eightfold.validate`` before any work."""
    from hydra.utils import get_method
    from omegaconf import OmegaConf

    loggers = []
    for entry in (cfg or {}).values():
        options = (
            OmegaConf.to_container(entry, resolve=True)
            if OmegaConf.is_config(entry)
            else dict(entry)
        )
        factory = get_method(options.pop("_target_"))
        loggers.append(factory(run=run, **options))  # RunInfo passed as is, not as a config
    return loggers


def sweep_name() -> str | None:
    """The sweep a run belongs to: ``$EIGHTFOLD_SWEEP`` when set, else under a Hydra multirun
    ``hydra.job.name`` when it was given one, else the multirun's folder; None for a single run."""
    if os.environ.get("EIGHTFOLD_SWEEP"):
        return os.environ["EIGHTFOLD_SWEEP"]
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    if hc.job.name and hc.job.name != "train":  # `train` is the app's default job name
        return str(hc.job.name)
    return Path(hc.sweep.dir).name


def checkpoint_step(path: Path | None) -> int | None:
    """The global step stored in a checkpoint (memory-mapped: a 7B checkpoint is not read)."""
    if path is None:
        return None
    if path.is_dir():  # a sharded checkpoint (trainer=fsdp): the step is in its metadata file
        path = path / SHARDED_META
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip checkpoint (an old format): read it whole
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return int(ckpt.get("global_step", 0))


def logger_place(logger: Logger, base: Path) -> str:
    """Where a logger writes, for the console: a file or folder (relative to ``base``, the run
    directory, when inside it), or a tracker's run."""
    if isinstance(logger, CSVLogger):
        return _relative(Path(logger.log_dir) / "metrics.csv", base)
    return logger.place(base) if isinstance(logger, _Tracker) else type(logger).__name__


def _relative(path: Path | str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


class _Tracker:
    """A tracker's run stays open after ``fit`` (Lightning finalizes on success) so that the test
    metrics can be added; :func:`close_trackers` closes it. A failure closes it at once."""

    def place(self, base: Path) -> str:
        raise NotImplementedError

    def finalize(self, status: str) -> None:
        if status != "success":
            self._close(status)

    def _close(self, status: str) -> None:
        super().finalize(status)  # type: ignore[misc]


class _TensorBoard(_Tracker, TensorBoardLogger):
    def place(self, base: Path) -> str:
        return _relative(self.log_dir, base) + " (tensorboard)"


class _Wandb(_Tracker, WandbLogger):
    def place(self, base: Path) -> str:
        mode = "offline " if self._offline else ""
        return f"wandb {mode}run {self._project}/{self._id} ({self._save_dir}/wandb)"

    def _close(self, status: str) -> None:
        super()._close(status)
        if self._experiment is not None:  # finish: the next run in this process gets its own
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


class _MLflow(_Tracker, MLFlowLogger):
    def place(self, base: Path) -> str:
        return f"mlflow run {self._run_id} ({self._tracking_uri})"


def csv_logger(run: RunInfo, flush_logs_every_n_steps: int = 100) -> ResumableCSVLogger:
    """``<run>/logs/metrics.csv``: flushed before every checkpoint is written; a resumed run drops
    the rows a killed attempt logged after its last checkpoint (each step once)."""
    return ResumableCSVLogger(
        run.directory,
        name=LOGS,
        version="",
        flush_logs_every_n_steps=flush_logs_every_n_steps,
        keep_before_step=run.resumed_from_step or 0,
    )


def tensorboard_logger(run: RunInfo, **kwargs: Any) -> Logger:
    """``<run>/logs/tensorboard``: ``tensorboard --logdir <root>/runs`` shows each run by its name."""
    # purge_step: events a crashed attempt wrote after the checkpoint it resumes from are hidden
    if run.resumed_from_step is not None:
        kwargs.setdefault("purge_step", run.resumed_from_step)
    logger = _TensorBoard(
        save_dir=str(run.directory / LOGS),
        name="tensorboard",
        version="",
        default_hp_metric=False,
        **kwargs,
    )
    logger.log_hyperparams({**run.params, "tags": run.tags})
    return logger


def wandb_id(directory: Path) -> str:
    """A wandb run id that is the same for every attempt of one run directory."""
    return hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]


def wandb_logger(
    run: RunInfo,
    project: str = "eightfold",
    entity: str | None = None,
    save_dir: str | None = None,
    offline: bool = False,
    **kwargs: Any,
) -> Logger:
    """A wandb run named after the run directory, grouped by sweep, resumed by its stable id.
    The API key is wandb's own business (``wandb login`` / ``WANDB_API_KEY``), never a config value."""
    _finish_stray_wandb_run(wandb_id(run.directory))
    save = Path(save_dir) if save_dir else run.directory.parent.parent
    save.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("settings", _wandb_settings())
    logger = _Wandb(
        name=run.name,
        id=wandb_id(run.directory),
        project=project,
        entity=entity,
        save_dir=str(save),
        offline=offline,
        group=run.sweep,
        tags=[run.config_hash, *([run.sweep[:64]] if run.sweep else [])],
        config={**run.params, "tags": run.tags},
        resume="allow",
        **kwargs,
    )
    logger._wandb_init.pop("anonymous", None)  # deprecated in wandb; it warns even when unset
    return logger


def _wandb_settings():
    import wandb

    return wandb.Settings(silent=True, console="off")  # eightfold's console is its own


def _finish_stray_wandb_run(keep: str) -> None:
    """A wandb run left open in this process by another run (e.g. the SFT run trained first)
    would swallow this run's metrics: finish it."""
    wandb = sys.modules.get("wandb")
    stray = getattr(wandb, "run", None) if wandb else None
    if stray is not None and stray.id != keep:
        stray.finish()


def mlflow_logger(
    run: RunInfo,
    experiment_name: str = "eightfold",
    tracking_uri: str | None = None,
    **kwargs: Any,
) -> Logger:
    """An MLflow run named after the run directory and tagged; its id is kept in
    ``<run>/logs/mlflow.json`` so that a requeued run reopens it. ``tracking_uri`` is a server
    (``http://...``), a database (``sqlite:///...``) or a local folder (``file:...``)."""
    uri = (
        tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"file:{run.directory.parent.parent}/mlruns"
    )
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this switch; it is what a
        # machine without a database or server has.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    id_file = run.directory / LOGS / "mlflow.json"
    stored = _read_json(id_file)
    run_id = stored.get("run_id") if stored.get("tracking_uri") == uri else None

    logger = _MLflow(
        experiment_name=experiment_name,
        run_name=run.name,
        tracking_uri=uri,
        tags=run.tags,
        run_id=run_id,
        **kwargs,
    )
    if logger.run_id is None:  # not rank 0: Lightning's loggers record on rank 0 only
        return logger
    if run_id is None:  # a new run: keep its id for a requeue, record the config once
        write_atomic(
            id_file,
            json.dumps(
                {"run_id": logger.run_id, "tracking_uri": uri, "experiment": experiment_name}
            ),
        )
        logger.log_hyperparams(run.params)
    else:  # a requeued run: the crash marked it FAILED, it is running again
        logger.experiment.update_run(run_id, status="RUNNING")
    return logger


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


@rank_zero_only
def close_trackers(loggers: list[Logger], metrics: dict[str, Any], step: int) -> None:
    """Add the run's final numbers (``test_*`` of result.json) to every tracker and close its run.
    The CSV logger is left as it is: metrics.csv holds the training curve only."""
    final = {
        "test/" + re.sub(r"@", "_at_", k[len("test_") :]): float(v)
        for k, v in metrics.items()
        if k.startswith("test_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for logger in loggers:
        if isinstance(logger, _Tracker):
            try:
                if final:
                    logger.log_metrics(final, step=step)
                logger._close("success")
            except Exception as err:  # result.json is written: a tracker cannot fail the run now
                log.warning("%s: could not record the result: %s", type(logger).__name__, err)


# -----------------------------------------------------------------------------
# console


class StepProgressBar(ProgressBar):
    """One tqdm bar over optimizer steps (runs are budgeted in steps, not epochs), with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._bar = tqdm(
            total=total,
            initial=trainer.global_step,
            desc="train",
            unit="step",
            leave=False,
            dynamic_ncols=True,
            disable=not self._enabled,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is None:
            return
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        self._bar.set_postfix(
            {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in metrics.items()},
            refresh=False,
        )
        self._bar.update(trainer.global_step - self._bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_wanted(enabled: bool) -> bool:
    """Progress bars only where someone watches: ``trainer.enable_progress_bar`` and a terminal."""
    return bool(enabled) and sys.stderr.isatty()


# Third-party console lines a user cannot act on, matched exactly by the logger that emits them
# and their message (warnings by their text and the module they are attributed to).
_QUIET_LOGS = {
    "lightning.pytorch.utilities.rank_zero": (
        r"💡 Tip: .*litlogger",  # an advert for a hosted service, printed by every Trainer
        r"(GPU|TPU|HPU) available: ",  # the train stage line names the device
        r"`Trainer\.fit` stopped: `max_steps=\d+` reached",  # the train stage line says so
    ),
    "lightning.pytorch.loggers.mlflow": (r"Experiment with name \S+ not found\. Creating it\.",),
    # Sampling with a left-padded batch: generate() gets the mask, a decoding step inside
    # transformers checks a later token (a finished sample's pad = eos) without it.
    "transformers.modeling_utils": (r"We strongly recommend passing in an `attention_mask`",),
}
_QUIET_WARNINGS = (
    # Lightning's hint for multi-node jobs, printed on any machine with SLURM installed; eightfold
    # starts its SLURM jobs itself (srun is used where it is needed).
    (r"The `srun` command is available on your system but is not used", None),
    # torch deprecates LeafSpec; the call is inside Lightning, nothing a user can change.
    (
        r".*isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # Runs are budgeted in steps, several epochs of a small dataset each: the epoch-level
    # logging this warns about is not used.
    (r"The number of training batches \(\d+\) is smaller than the logging interval", None),
)


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def quiet_console() -> None:
    """Drop the third-party lines listed above (nothing else) and transformers' own progress bars
    ("Loading weights", "Writing model shards": the stage lines say the same). Idempotent."""
    for name, patterns in _QUIET_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))
    for message, module in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module or "")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
