"""Regenerate tests/data/config_hashes.json: the resolved config and run hash of every
experiment x objective x data composition, and the run names of every sweep file.

Written once BEFORE the architecture move (issue 12) so the move can be checked against it:
    python tests/data/make_config_hashes.py
It ran once, at commit 1132f58 (before the move): it imports the sweep tool of that day
(`expand`, `is_hydra_override`), which the sweeper plugin replaced, so it only runs there
(`git worktree add /tmp/old 1132f58`). Do not rerun it to make a failing test pass: a changed hash means every existing run directory
and cache built from that config is orphaned. Where a change is right, edit the entry by hand and
say why in its "changed" field.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eightfold.rundir import config_hash
from eightfold.train import CONF_DIR

HERE = Path(__file__).resolve().parent
ROOT = "/ROOT"
FILES = ["data.train_file=/data/train.jsonl", "data.test_file=/data/test.jsonl"]


def compositions() -> list[list[str]]:
    experiments = [None] + sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    objectives = sorted(p.stem for p in (CONF_DIR / "objective").glob("*.yaml"))
    datas = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
    out = []
    for exp, obj, data in itertools.product(experiments, objectives, datas):
        ov = ([f"experiment={exp}"] if exp else []) + [f"objective={obj}", f"data={data}"]
        if data in ("gsm8k", "math"):
            ov += FILES
        out.append(ov)
    for teacher in sorted(p.stem for p in (CONF_DIR / "teacher").glob("*.yaml")):
        out.append(["data=teacher", f"teacher@data.teacher={teacher}"])
    return out


def sweep_runs() -> dict[str, list[list[str]]]:
    """The overrides of every run of every sweep file, expanded by the sweep tool of the day."""
    from eightfold.sweep import expand, is_hydra_override, load_sweep

    out = {}
    for path in sorted((CONF_DIR.parent / "sweeps").glob("*.yaml")):
        spec = load_sweep(path)
        fixed = [o for o in spec.overrides if not is_hydra_override(o)]
        out[path.stem] = [fixed + r.overrides for r in expand(spec)]
    return out


def main() -> None:
    entries = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for ov in compositions():
            cfg = compose(config_name="train", overrides=[*ov, f"paths.root={ROOT}"])
            entries.append(
                {
                    "overrides": ov,
                    "config_hash": config_hash(cfg),
                    "config": OmegaConf.to_container(cfg, resolve=True),
                }
            )
        sweeps = {}
        for name, runs in sweep_runs().items():
            rows = []
            for ov in runs:
                cfg = compose(config_name="train", overrides=[*ov, f"paths.root={ROOT}"])
                rows.append({"overrides": ov, "config_hash": config_hash(cfg)})
            sweeps[name] = rows
    blob = {
        "about": __doc__.strip().splitlines()[0],
        "root": ROOT,
        "files": FILES,
        "compositions": entries,
        "sweeps": sweeps,
    }
    (HERE / "config_hashes.json").write_text(json.dumps(blob, indent=1, sort_keys=True) + "\n")
    print(f"{len(entries)} compositions, {sum(len(v) for v in sweeps.values())} sweep runs")


if __name__ == "__main__":
    main()
