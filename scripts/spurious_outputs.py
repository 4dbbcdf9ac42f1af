"""Greedy test outputs of finished runs: accuracy, how many compute an unneeded step, and the
accuracy of those and of the others (eightfold.objectives.spurious.unneeded_step_outcomes).

    python scripts/spurious_outputs.py R/runs/sft-procedural_teacher-n1000-s0-* R/runs/step_dpo-...

The issue-14 candidate-2 reading in docs/results.md (which objective unlearns the wasted step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from eightfold.generation import generate_ids
from eightfold.objectives.pi_sft import load_pretrained
from eightfold.objectives.spurious import unneeded_step_outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished run directories")
    args = parser.parse_args()
    for run in args.run_dirs:
        if not (run / "model").is_dir():
            raise SystemExit(f"{run} has no model/: expected a finished eightfold run directory")
        cfg = OmegaConf.load(run / "config.yaml")
        data = instantiate(cfg.data, _convert_="all")
        data.prepare_examples()
        model, tokenizer = load_pretrained(run / "model")
        outs = generate_ids(
            model, tokenizer, [e.prompt for e in data.test_examples], int(cfg.data.max_new_tokens)
        )
        out = unneeded_step_outcomes(data.test_examples, [c[0].text for c in outs], data.kind)
        pct = {k: (f"{100 * v:.1f}" if isinstance(v, float) else v) for k, v in out.items()}
        print(run.name, " ".join(f"{k}={v}" for k, v in pct.items()), flush=True)


if __name__ == "__main__":
    main()
