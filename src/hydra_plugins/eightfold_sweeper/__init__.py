"""``hydra/sweeper=eightfold``: Hydra's BasicSweeper, made to check every run before it launches any.

The default sweeper of every ``eightfold-train -m`` (``conf/hydra/default.yaml``). It expands the
overrides exactly as ``BasicSweeper`` does, then composes each run's config as the launcher will,
validates it and finds its run directory and status (:func:`eightfold.sweep.inspect`). If any run
is invalid, nothing is launched (exit 2). Otherwise the launcher gets the explicit list of runs
that are not finished (on SLURM: one job array of exactly those runs); none left means no launch.

    eightfold-train -m experiment=smoke data.size=32,48 hydra.sweeper.dry_run=true   # the table
    eightfold-train -m ... hydra.sweeper.only='[sft-*]'     # only runs whose name matches a glob
    eightfold-train -m ... hydra.sweeper.shard=0 hydra.sweeper.shards=2   # half (eightfold-sweep --jobs)

Will it fit: for every run on an accelerator the table shows its estimated GPU memory per device
(:mod:`eightfold.memory`), against ``gpu_memory_gib`` when that is set; a run that is not finished
and needs more is refused like an invalid config (one line each: the run, the estimate, the
limit, the largest part), in a dry run and before a real launch alike.

A failed run writes ``failed.json`` and returns, so the launcher waits for every job; afterwards
the exit status is 1 if a launched run did not finish. This module is imported at every Hydra
start (plugin discovery), so it imports eightfold only inside :meth:`EightfoldSweeper.sweep`.
"""

import copy
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class EightfoldSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.eightfold_sweeper.EightfoldSweeper"
    only: list[str] = field(default_factory=list)  # globs of run names (or indices); [] = all
    shard: int = 0  # launch only this shard of the runs ...
    shards: int = 1  # ... out of this many (runs that share an SFT model stay together)
    dry_run: bool = False  # print the status table, launch nothing
    report: str | None = None  # write the runs and their status here (JSON)


ConfigStore.instance().store(
    group="hydra/sweeper", name="eightfold", node=EightfoldSweeperConf, provider="eightfold"
)


def check_memory(runs: list, configs: dict) -> None:
    """Each valid run on an accelerator gets its estimate (``run.memory``, the table's column);
    one that is not finished and needs more than ``gpu_memory_gib`` becomes invalid with the
    reason, so nothing launches (eightfold.memory)."""
    from eightfold import memory
    from eightfold import sweep as sw

    for r in runs:
        cfg = configs.get(tuple(r.overrides))
        if r.status == sw.INVALID or cfg is None or not memory.on_accelerator(cfg):
            continue
        try:
            limit = memory.gpu_limit(cfg)
            est = memory.estimate_config(cfg)
        except memory.MemoryConfigError as err:
            if cfg.get("gpu_memory_gib") is not None:  # asked for a check that cannot be made
                r.status, r.error = sw.INVALID, str(err)
            continue
        r.memory = est.describe(limit)
        if limit is not None and not est.fits(limit) and r.status in sw.TODO:
            r.status, r.error = sw.INVALID, memory.refusal(est, limit)


class EightfoldSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict | None = None,
        only: Any = (),
        shard: int = 0,
        shards: int = 1,
        dry_run: bool = False,
        report: str | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.only, self.shard, self.shards = [str(p) for p in only], shard, shards
        self.dry_run, self.report = dry_run, report
        self._composed: dict = {}  # config-group overrides -> their composed config

    def _compose(self, overrides: list[str]) -> Any:
        """A run's config as the launcher composes it, without the ``hydra`` node.

        Hydra builds the defaults list from the config-group overrides alone, then applies the
        value overrides to the result (``ConfigLoaderImpl._load_configuration_impl``). Runs that
        choose the same groups share that first, slow step here (sweeps/data_scaling.yaml: 4
        compositions for 60 runs), then get their value overrides by the same Hydra function.
        """
        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        values = [
            o
            for o in parsed
            if isinstance(o.value(), dict) or not loader.repository.group_exists(o.key_or_group)
        ]
        groups = tuple(o.input_line for o in parsed if o not in values)
        if groups not in self._composed:
            cfg = loader.load_sweep_config(self.config, list(groups))
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
            self._composed[groups] = cfg
        cfg = copy.deepcopy(self._composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg

    def sweep(self, arguments: list[str]) -> Any:
        from eightfold import sweep as sw

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        (jobs,) = self.split_arguments(overrides, None)
        configs: dict[tuple, Any] = {}

        def compose(job: list[str]) -> Any:
            configs[tuple(job)] = cfg = self._compose(job)
            return cfg

        runs = sw.inspect(jobs, compose)
        check_memory(runs, configs)
        selected = sw.select(runs, self.only)
        todo = [r for r in sw.shard(selected, self.shard, self.shards) if r.status in sw.TODO]
        invalid = [r for r in selected if r.status == sw.INVALID]
        if self.report:
            try:
                launcher = OmegaConf.to_container(self.config.hydra.launcher, resolve=True)
            except Exception:  # noqa: BLE001 - only eightfold-sweep's pack reads it
                launcher = None
            sw.write_report(self.report, runs, selected, todo, launcher=launcher)
        if self.dry_run:
            sw.print_table(selected, "runs")
            print(f"would launch {len(todo)} of {len(selected)} (finished runs are skipped)")
        if self.only and not selected:
            log.error(f"no run matches hydra.sweeper.only={self.only}")
            sys.exit(2)
        if invalid:
            for r in invalid:
                log.error(f"invalid config [{r.index}] {r.name}: {r.error}")
            log.error(f"{len(invalid)} run(s) have an invalid config: nothing was launched")
            sys.exit(2)
        if self.dry_run:
            return []
        counts = ", ".join(f"{n} {s}" for s, n in sw.counts(selected).items() if n)
        log.info(f"{len(selected)} run(s): {counts}; launching {len(todo)}")
        if not todo:
            return []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, start = [], 0
        for batch in self.split_overrides_to_chunks(
            [r.overrides for r in todo], self.max_batch_size
        ):
            returns.append(self.launcher.launch(batch, initial_job_idx=start))
            start += len(batch)
        for r in todo:
            sw.refresh(r, launcher="")
        left = [r for r in todo if r.status != sw.FINISHED]
        for r in left:
            log.error(f"{r.status}: {r.name}: {r.error or 'no result.json'}")
        if left:
            log.error(f"{len(left)} of {len(todo)} launched run(s) did not finish")
            sys.exit(1)
        return returns
