"""``eightfold-train``: the Hydra app. One call = one run = one directory keyed by its config.

    eightfold-train experiment=smoke
    eightfold-train -m experiment=cpu_default data.size=125,250,500,1000,2000 paths.root=DIR

Flow, one stage per numbered step in ``_run_locked``: validate the config (clear errors before
any work) -> skip if the run's ``result.json`` exists -> lock the run directory -> build data,
model and objective -> pi_sft (the SFT run of the same data, model and seed, trained first if
needed) when the objective starts from it -> the objective prepares its training data (the
``Objective`` contract, ``eightfold/objectives/__init__.py``) -> fit (resuming from
``checkpoints/last.ckpt`` after a preemption) -> greedy evaluation -> atomic ``result.json``.

Under a multirun a failed run writes ``failed.json`` and returns, so the launcher waits for every
job of the sweep (``eightfold-sweep`` reads each run's own files for the summary).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import filelock
import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eightfold import __version__
from eightfold.config import ConfigError, register_configs
from eightfold.rundir import config_hash, run_dir
from eightfold.runfiles import (
    CHECKPOINTS,
    CONFIG,
    FAILED,
    MODEL_DIR,
    RESULT,
    TEMP_SUFFIX,
    CorruptResult,
    last_checkpoint,
    model_complete,
    read_result,
    remove_temp_files,
    write_atomic,
    write_json_atomic,
)
from eightfold.validate import check_command_line, validate_config

log = logging.getLogger("eightfold")

register_configs()

# A per-process id for Hydra's log folders (cached: one value per launch).
OmegaConf.register_new_resolver(
    "eightfold.launch_id",
    lambda: f"{os.getpid()}-{os.urandom(2).hex()}",
    use_cache=True,
    replace=True,
)

# GPUs a SLURM job asks for: trainer.devices on gpu trainers, none for trainer=cpu.
OmegaConf.register_new_resolver(
    "eightfold.gpus",
    lambda accelerator, devices: devices if accelerator in ("gpu", "cuda") else 0,
    replace=True,
)

# SFT for a number of epochs at any data size (the LLM regime: a few passes over n problems),
# e.g. trainer.max_steps='${eightfold.epochs_steps:3,${data.size},${data.batch_size}}'.
OmegaConf.register_new_resolver(
    "eightfold.epochs_steps",
    lambda epochs, size, batch_size: max(1, math.ceil(float(epochs) * int(size) / int(batch_size))),
    replace=True,
)

CONF_DIR = Path(os.environ.get("EIGHTFOLD_CONF", Path(__file__).resolve().parents[2] / "conf"))


def _build_trainer(cfg: DictConfig, directory: Path, max_steps: int | None = None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from eightfold.checkpointing import (
        AtomicCheckpointIO,
        CheckpointAfterMetrics,
        LastTrainLoss,
        RngState,
        RunInfo,
        StepProgressBar,
        checkpoint_step,
        instantiate_loggers,
        progress_wanted,
        sweep_name,
    )

    progress = progress_wanted(cfg.trainer.get("enable_progress_bar", True))
    callbacks = [
        ModelCheckpoint(
            dirpath=directory / CHECKPOINTS,
            filename="step{step}",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.checkpoint_every_n_steps,
            save_on_train_epoch_end=False,
        )
    ]
    checkpoint_io = AtomicCheckpointIO()
    # a resumed run continues as the uninterrupted one: the data order (eightfold.data.loader),
    # the RNGs, and metrics.csv with each step once
    callbacks += [RngState(), LastTrainLoss(), CheckpointAfterMetrics(checkpoint_io)]
    if progress:
        callbacks.append(StepProgressBar())
    plugins = [checkpoint_io]
    try:  # submitit owns SLURM requeue; Lightning must not install a second handler
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        if SLURMEnvironment.detect():
            plugins.append(SLURMEnvironment(auto_requeue=False))
    except ImportError:  # pragma: no cover
        pass
    # The logger/ group (default csv: <run>/logs/metrics.csv); trackers are told the run's name,
    # hash, sweep and resume step so that a requeued run continues the same tracker run.
    info = RunInfo(
        directory=directory,
        config_hash=config_hash(cfg),
        sweep=sweep_name(),
        resumed_from_step=checkpoint_step(last_checkpoint(directory)),
        params={
            k: v
            for k, v in OmegaConf.to_container(cfg, resolve=True, enum_to_str=True).items()
            if k != "hydra"
        },
    )
    loggers = instantiate_loggers(cfg.get("logger"), info)
    budget = {} if max_steps is None else {"max_steps": int(max_steps)}  # the objective's own
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        plugins=plugins,
        logger=loggers or False,
        enable_progress_bar=progress,
        default_root_dir=directory,
        **budget,
    )
    return trainer


def run(cfg: DictConfig, wait: bool = False, need_model: bool = False) -> dict:
    """Run one experiment; returns its result dict (also written to ``result.json``).

    A run locked by another process is skipped, or with ``wait`` waited for (then read). With
    ``need_model`` a finished run whose ``model/`` is incomplete (a weight file deleted) is not
    finished: it is done again (it resumes from its last checkpoint). A corrupt result.json
    raises :class:`~eightfold.runfiles.CorruptResult` before anything is touched.
    """
    validate_config(cfg)
    directory = run_dir(cfg)
    done = _finished(directory, need_model)
    if done is not None:
        log.info("skip: %s is finished (%s)", directory.name, directory / RESULT)
        return {**done, "skipped": True}

    directory.mkdir(parents=True, exist_ok=True)
    # Under srun every DDP rank runs this function: each rank takes its own lock, so the
    # ranks of one job never shut each other out (two *jobs* still contend for rank 0's).
    rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))
    lock = filelock.FileLock(str(directory / (".lock" if rank == 0 else f".lock.rank{rank}")))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            log.warning("skip: %s is running in another process (lock held)", directory)
            return {"status": "running_elsewhere", "run_dir": str(directory)}
        log.info("waiting for %s: it is running in another process", directory)
        lock.acquire()
    try:
        done = _finished(directory, need_model)  # finished while we waited for the lock
        if done is not None:
            return {**done, "skipped": True}
        if read_result(directory) is not None:  # finished, but its model is incomplete
            log.warning("%s: its model/ is incomplete; training it again", directory)
            (directory / RESULT).unlink()
        if rank == 0:
            # what a killed attempt left half-written: rank 0 holds the run's lock, and the
            # other ranks of its job write nothing here before it (config.yaml is rank 0's)
            remove_temp_files(directory)
        return _run_locked(cfg, directory, write_config=rank == 0)
    except Exception as err:
        write_json_atomic(
            directory / FAILED,
            {
                "objective": cfg.objective.name,
                "source": cfg.data.source,
                "n": cfg.data.size,
                "seed": cfg.seed,
                "config_hash": config_hash(cfg),
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
                **job_info(),
            },
        )
        log.error("run failed, see %s", directory / FAILED)
        raise
    finally:
        lock.release()


def _finished(directory: Path, need_model: bool) -> dict | None:
    done = read_result(directory)
    if done is not None and need_model and not model_complete(directory / MODEL_DIR):
        return None
    return done


def _run_locked(cfg: DictConfig, directory: Path, write_config: bool = True) -> dict:
    import lightning as L

    from eightfold.checkpointing import close_trackers
    from eightfold.evaluate import evaluate
    from eightfold.models import apply_lora, hf_causal_lm, merge_lora, run_device, to_load_dtype
    from eightfold.objectives import Objective
    from eightfold.objectives.pi_sft import PiSft
    from eightfold.sharding import full_state_dict, unsharded

    t0 = time.perf_counter()
    _console(cfg)
    log.info("run: %s", directory)
    if write_config:
        write_atomic(directory / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    (directory / FAILED).unlink(missing_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # 1. data, model, objective
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_examples()
    lora = cfg.model.get("lora")
    if cfg.get("base"):  # the LLM regime: start from a base pretrained once on the task family
        model, tokenizer = hf_causal_lm(str(ensure_base_model(cfg)), dtype="float32")
    else:
        model, tokenizer = instantiate({k: v for k, v in cfg.model.items() if k != "lora"})
    model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it is given
    datamodule.tokenizer = tokenizer
    check_context_fits(datamodule, model, tokenizer)
    module = instantiate(cfg.objective.module, model=model, tokenizer=tokenizer, _convert_="all")
    if not isinstance(module, Objective):
        raise TypeError(
            f"{cfg.objective.module._target_} is not an objective: it lacks part of the contract"
            " in eightfold/objectives/__init__.py (name, needs_pi_sft, train_steps, prepare,"
            " result_fields)"
        )
    apply_perf(cfg.perf, model, datamodule, module)
    data_time = time.perf_counter() - t0
    log.info(
        "data: %d train / %d test problems (%s) in %.1f s",
        len(datamodule.train_examples),
        len(datamodule.test_examples),
        cfg.data.source,
        data_time,
    )

    # 2. pi_sft (trained first if needed), then the objective's own training data
    pi_sft = None
    if module.needs_pi_sft:
        pi_sft = PiSft(cfg, datamodule, ensure_sft_model(cfg))
        log.info("pi_sft: %s", pi_sft.dir)
    train_data = module.prepare(cfg, datamodule, pi_sft) or datamodule
    if pi_sft is not None:
        # the same RNG state at fit start whether the SFT run trained in this process or not
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if lora:  # after pi_sft's weights are in: the adapters train on top of them
        model = module.model = apply_lora(model, OmegaConf.to_container(lora))

    # 3. fit, resuming from the last checkpoint after a preemption
    _quiet_duplicate_lightning_logs()
    trainer = _build_trainer(cfg, directory, max_steps=module.train_steps)
    resume = last_checkpoint(directory)
    resumed_from_step = _ckpt_step(resume)
    if resume is not None:
        log.info("resuming from %s (step %d)", resume, resumed_from_step)
    t_train = time.perf_counter()
    trainer.fit(module, datamodule=train_data, ckpt_path=str(resume) if resume else None)
    train_time = time.perf_counter() - t_train
    final_loss = _final_train_loss(trainer)
    log.info(
        "train: %d steps on %s in %.1f s, loss %.3g -> %s",
        trainer.global_step,
        cfg.trainer.accelerator,
        train_time,
        final_loss,
        _outputs_line(directory, trainer),
    )

    # 4. save, evaluate greedily on the test set, write result.json
    full = full_state_dict(trainer.strategy.model)  # FSDP: all ranks gather, rank 0 keeps it
    result: dict = {}
    if trainer.global_rank == 0:
        if full is not None:  # FSDP left the model wrapped and sharded: whole again on the CPU
            model = unsharded(model, full)
        model = to_load_dtype(merge_lora(model))  # plain weights in the load dtype (fp32 trains)
        if cfg.save_model:
            save_model_atomic(model, tokenizer, directory / MODEL_DIR)
            log.info("model: -> %s", directory / MODEL_DIR)
        model.to(run_device(cfg.trainer.accelerator))
        t_eval = time.perf_counter()
        metrics = evaluate(
            model,
            tokenizer,
            datamodule.test_examples,
            datamodule.kind,
            max_new_tokens=datamodule.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            pass_k=list(cfg.eval.get("pass_k") or []),
            sampling=OmegaConf.to_container(cfg.eval.get("sampling") or {}),
            seed=int(cfg.seed),
        )
        eval_time = time.perf_counter() - t_eval
        log.info(
            "eval: test accuracy %.3f%s on %d problems in %.1f s",
            metrics["test_accuracy"],
            "".join(f", {k} {v:.3f}" for k, v in metrics.items() if k.startswith("test_pass@")),
            metrics["test_size"],
            eval_time,
        )
        result = {
            "objective": cfg.objective.name,
            "source": cfg.data.source,
            "n": cfg.data.size,
            "seed": cfg.seed,
            **metrics,
            "chance_accuracy": chance_accuracy(cfg.data),
            "config_hash": config_hash(cfg),
            "config_path": str(directory / CONFIG),
            "run_dir": str(directory),
            "train_steps": trainer.global_step,
            "resumed_from_step": resumed_from_step,
            "final_train_loss": final_loss,
            "num_params": sum(p.numel() for p in model.parameters()),
            "data_time_s": round(data_time, 3),
            "train_time_s": round(train_time, 3),
            "eval_time_s": round(eval_time, 3),
            "wall_time_s": round(time.perf_counter() - t0, 3),
            "eightfold_version": __version__,
            **job_info(),
            **{
                f"data_{k}": v
                for k, v in getattr(datamodule, "data_info", {}).items()
                if _scalar(v)
            },
            **module.result_fields(),
        }
        write_json_atomic(directory / RESULT, result)
        close_trackers(trainer.loggers, result, trainer.global_step)
        log.info(
            "result: %s in %.1f s -> %s",
            cfg.objective.name,
            result["wall_time_s"],
            directory / RESULT,
        )
    return result


def chance_accuracy(data: DictConfig) -> float | None:
    """Accuracy of a uniform guess where the task defines one: a value mod p, or one of the d arms."""
    if data.kind == "procedural":
        return 1.0 / data.task.modulus
    if data.kind == "star_graph":
        return 1.0 / data.task.degree
    return None


def job_info() -> dict:
    """Which launcher job ran this run and where its log is (null outside a Hydra app): the
    sweep summary reads them from the run's own files, not from the launcher's folders."""
    job_id = job_log = None
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        job_id = str(hc.job.id) if OmegaConf.select(hc, "job.id") is not None else None
        job_log = str(Path(hc.runtime.output_dir) / f"{hc.job.name}.log")
    except (ValueError, ImportError, AttributeError):  # not under a Hydra app (tests, the API)
        pass
    try:  # under the submitit launcher (SLURM) the job's own stderr is the useful log
        import submitit

        job_log = str(submitit.JobEnvironment().paths.stderr)
    except (RuntimeError, ImportError):
        pass
    return {"job_id": job_id, "job_log": job_log}


def apply_perf(perf: DictConfig, model, datamodule, module) -> None:
    """The speed knobs of ``perf.*`` (docs/performance.md): none of them changes what is computed."""
    if perf.packing:
        context = getattr(model.config, "max_position_embeddings", None)
        length = perf.pack_length or context
        if not length:
            raise ConfigError(
                "perf.packing=true needs perf.pack_length: this model reports no context length"
            )
        if context and length > context:
            raise ConfigError(
                f"perf.pack_length={length} exceeds the model's context of {context} tokens"
            )
        datamodule.pack_length = module.pack_length = int(length)
    if perf.logits_chunk_size is not None:  # a positive integer (validate_config)
        module.logits_chunk_size = int(perf.logits_chunk_size)
    if perf.gradient_checkpointing:
        from eightfold.models import enable_activation_checkpointing

        enable_activation_checkpointing(model)


def check_context_fits(datamodule, model, tokenizer) -> None:
    """Fail with a clear message (not an IndexError mid-training) if examples exceed the context."""
    from eightfold.generation import encode_prompt, encode_response

    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    longest = max(
        len(encode_prompt(tokenizer, e.prompt)) + len(encode_response(tokenizer, e.solution))
        for e in datamodule.train_examples + datamodule.test_examples
    )
    if longest > limit:
        raise ConfigError(
            f"the longest example has {longest} tokens but the model's context is {limit}: "
            f"raise model.n_positions (tiny_gpt) to >= {longest} or shorten the task (data.task.steps)"
        )


def save_model_atomic(model, tokenizer, target: Path) -> None:
    """``save_pretrained`` into a temp folder, then rename: a later run never loads half a model."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TEMP_SUFFIX}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def objective_config(name: str) -> DictConfig:
    """``conf/objective/<name>.yaml`` composed as ``objective=<name>`` composes it (its schema and
    shared blocks included), inside a running Hydra app or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=f"objective/{name}").objective
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=f"objective/{name}").objective


def sft_config(cfg: DictConfig) -> DictConfig:
    """The SFT run that an objective built on pi_sft starts from: this config with objective=sft."""
    base = cfg.copy()
    OmegaConf.set_struct(base, False)
    base.objective = objective_config("sft")
    base.save_model = True
    return base


def base_config(cfg: DictConfig) -> DictConfig:
    """The run that ``base=<preset>`` pretrains once: SFT on the base corpus (the run's data with
    ``base.data`` merged over it) for ``base.steps`` steps at ``base.seed``. Its directory is keyed
    by this config like any run's, so every run of a study with the same base shares one model."""
    spec = cfg.base
    steps = spec.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"base.steps={steps!r} is invalid: give a positive number of steps")
    base = copy.deepcopy(cfg)  # a deep copy: the caller's trainer / data nodes stay as they are
    OmegaConf.set_struct(base, False)
    base.objective = objective_config("sft")
    if spec.get("lr") is not None:
        base.objective.module.lr = spec.lr
    base.data = OmegaConf.merge(cfg.data, spec.get("data") or {})
    base.data.size = int(base.data.size)
    base.trainer.max_steps = steps
    base.seed = int(spec.get("seed", 0))
    base.data.seed = base.seed
    base.save_model = True
    del base["base"]
    return base


def ensure_model(run_cfg: DictConfig, what: str) -> Path:
    """The saved model of the run ``run_cfg`` (``save_pretrained`` format), training it first if
    it has not finished: not trained yet, or finished without a complete model (it resumes from
    its last checkpoint); another process training it (a parallel sweep): wait, then reuse."""
    directory = run_dir(run_cfg)
    if not model_complete(directory / MODEL_DIR):
        log.info("training the %s this run starts from: %s", what, directory)
        run(run_cfg, wait=True, need_model=True)
        if not model_complete(directory / MODEL_DIR):
            raise RuntimeError(
                f"the {what} run {directory} finished without a complete model in"
                f" {directory / MODEL_DIR}"
            )
    return directory / MODEL_DIR


def ensure_sft_model(cfg: DictConfig) -> Path:
    """pi_sft for ``cfg``'s data, model and seed: every objective at the same (data, model,
    seed) shares it, so a sweep over objectives trains SFT once per size."""
    return ensure_model(sft_config(cfg), "SFT model")


def ensure_base_model(cfg: DictConfig) -> Path:
    """The pretrained base of ``cfg`` (``base=<preset>``), shared by every run with that base."""
    return ensure_model(base_config(cfg), "pretrained base")


def _console(cfg: DictConfig) -> bool:
    """Progress bars on for a terminal (unless trainer.enable_progress_bar=false), and none of the
    third-party lines a user cannot act on (eightfold.checkpointing.quiet_console)."""
    from eightfold.checkpointing import progress_wanted, quiet_console
    from eightfold.generation import show_progress

    progress = progress_wanted(cfg.trainer.get("enable_progress_bar", True))
    quiet_console()
    show_progress(progress)
    return progress


def _outputs_line(directory: Path, trainer) -> str:
    """Where the train stage wrote: the checkpoint, then each logger's file, folder or run."""
    from eightfold.checkpointing import logger_place

    places = [f"{CHECKPOINTS}/last.ckpt"] + [logger_place(x, directory) for x in trainer.loggers]
    return ", ".join(places)


def _quiet_duplicate_lightning_logs() -> None:
    # Under Hydra the root logger already prints to the console and the run's log file;
    # Lightning's own console handlers would print every line twice.
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            lg.handlers = [h for h in lg.handlers if type(h) is not logging.StreamHandler]
            lg.propagate = True


def _scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _final_train_loss(trainer) -> float:
    """The last step's training loss; after a resume that trained no step (from the final
    checkpoint), the one that checkpoint kept."""
    from eightfold.checkpointing import LastTrainLoss

    value = trainer.callback_metrics.get("train/loss")
    if value is None:
        kept = [c.value for c in trainer.callbacks if isinstance(c, LastTrainLoss)]
        value = kept[0] if kept and kept[0] is not None else float("nan")
    return float(value)


def _ckpt_step(path: Path | None) -> int | None:
    from eightfold.checkpointing import checkpoint_step  # a file, or a sharded folder

    return checkpoint_step(path)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        # in a multirun, a run another process holds (a second sweep of the same file) is waited
        # for, then read: the sweep reports it finished, not "did not finish"
        result = run(cfg, wait=_in_multirun())
    except ConfigError as err:  # bad overrides: one clear line, no traceback, nothing trained
        print(f"eightfold: error: {err}", file=sys.stderr)
        sys.exit(2)
    except CorruptResult as err:  # a damaged result.json: reported, never silently redone
        if not _in_multirun():
            print(f"eightfold: error: {err}", file=sys.stderr)
            sys.exit(2)
        log.error("%s", err)
        return None
    except Exception:
        # A multirun keeps going (the launcher then waits for every job): the run has written
        # failed.json, and the sweep's summary names it. A single run fails loudly.
        if not _in_multirun():
            raise
        log.exception("run failed; the multirun goes on")
        return None
    return result.get("test_error")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def main() -> None:
    # before Hydra: it writes the overrides and the composed config (.hydra/*.yaml) under
    # paths.root before the app runs, so a key there or an unwritable root is refused first
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"eightfold: error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
