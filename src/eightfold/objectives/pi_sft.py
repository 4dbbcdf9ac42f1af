"""pi_sft: the trained SFT model of a run's (data, model, seed), with its samples and rollouts.

``PiSft(cfg, data, model_dir)`` is what RFT, DPO, per-step DPO and AWR start from. ``train.py``
trains (or finds) the SFT run first (``ensure_sft_model``) and hands this object to the
objective's ``prepare`` (the ``Objective`` contract in ``objectives/__init__.py``):

* ``.dir`` / ``.model`` / ``.tokenizer``: the SFT run's saved model, loaded frozen;
* ``.samples()``: k samples per prompt at (temperature, top_p), each verified with
  ``verify.is_correct`` and, on the procedural source, checked step by step
  (``first_wrong_step``); built once and cached under ``<paths.root>/cache/samples/`` by
  ``eightfold.data.cache.load_or_build``, keyed by the SFT run, its weights' sha256, k,
  temperature, top_p, max_new_tokens, seed, batch size and the prompts. rft / dpo / step_dpo /
  awr at the same size and sampling knobs therefore share ONE sampling pass;
* ``.rollouts(...)``: the Monte Carlo step values of the selected negatives (cached the same way
  under ``cache/rollouts/``), shared by step_dpo and awr.

Record of one sample: ``{"problem": i, "j": j, "completion": str, "ids": [int] (the sampled
tokens after ``encode_prompt(prompt)``, EOS excluded), "correct": bool, "first_wrong_step": int |
None (procedural; None = every step right), "teacher": bool (same steps as the teacher's
solution)}``. The objectives train on ``ids``; ``completion`` (their decoding) is what the
verifier read.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from eightfold.config import SAMPLE_PROMPTS
from eightfold.data.arithmetic import first_wrong_step
from eightfold.data.cache import load_or_build
from eightfold.data.examples import Example
from eightfold.evaluate import evaluate
from eightfold.generation import Completion, encode_prompt, generate_ids
from eightfold.models import hf_causal_lm, run_device
from eightfold.objectives.spurious import generator_spurious_steps
from eightfold.rollouts import (
    NegativeValues,
    rollout_negatives,
    rollout_seed,
    rollout_settings,
    sample_continuations,
)
from eightfold.runfiles import weights_fingerprint
from eightfold.verify import is_correct, split_steps

log = logging.getLogger(__name__)

PROMPT_SETS = SAMPLE_PROMPTS
# Part of the samples' and rollouts' cache keys: 2 = records carry the sampled token ids (an
# entry written before has none and is never read again).
RECORD_FORMAT = 2


def load_pretrained(model_dir: Path):
    """(model, tokenizer) from a ``save_pretrained`` folder, in eval mode, gradients off."""
    model, tokenizer = hf_causal_lm(str(model_dir), attn_implementation=None)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def cache_root(cfg: DictConfig) -> Path:
    return Path(cfg.data.get("cache_dir") or Path(cfg.paths.root) / "cache")


def prompts_hash(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.prompt.encode() + b"\x1f" + e.answer.encode() + b"\x1e")
    return h.hexdigest()


def sampling_examples(cfg: DictConfig, datamodule) -> list[Example]:
    """The prompts samples are drawn on: the training problems (paper) or a fresh pool.

    ``pool`` (objective.sample_prompts=pool) draws data.size new problems from the source's
    generator, disjoint from train and test, with the generator's answers
    (``MathDataModule.pool_examples``; sources with a generator: procedural, procedural_teacher,
    star_graph): it deviates from the paper (more problems than the teacher data) and exists for
    the memorisation regime measured in
    docs/results.md#cpu-testbed-1-task-design-and-dpo-collapse, where pi_sft reproduces its
    training solutions.
    """
    which = cfg.objective.get("sample_prompts", "train")
    if which not in PROMPT_SETS:
        raise ValueError(
            f"objective.sample_prompts={which!r} is not valid: expected one of {', '.join(PROMPT_SETS)}"
        )
    if which == "train":
        return list(datamodule.train_examples)
    return datamodule.pool_examples()


def same_steps(a: str, b: str) -> bool:
    return split_steps(a) == split_steps(b)


@dataclass
class SampleSet:
    examples: list[Example]
    records: list[dict]
    key: dict
    time_s: float | None = None  # time of the pass that built it (None: loaded from the cache)
    by_problem: dict[int, list[dict]] = field(default_factory=dict)

    def __post_init__(self):
        for r in self.records:
            self.by_problem.setdefault(r["problem"], []).append(r)


def draw_samples(
    model,
    tokenizer,
    examples: list[Example],
    kind: str,
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
) -> list[dict]:
    """k samples per example through ``generation.generate_ids`` (the one decoding path), verified."""
    outs = generate_ids(
        model,
        tokenizer,
        [e.prompt for e in examples],
        max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        num_samples=k,
        batch_size=batch_size,
        seed=seed,
    )
    records = []
    for i, (e, completions) in enumerate(zip(examples, outs)):
        for j, c in enumerate(completions):
            records.append(
                {
                    "problem": i,
                    "j": j,
                    "completion": c.text,
                    "ids": list(c.ids),
                    "correct": is_correct(c.text, e.answer, kind),
                    "first_wrong_step": first_wrong_step(e.problem, c.text)
                    if e.problem is not None
                    else None,
                    "teacher": same_steps(c.text, e.solution),
                }
            )
    return records


def sample_stats(samples: SampleSet) -> dict:
    """Counts for result.json: samples, positives, negatives, novel and spurious positives."""
    recs, examples = samples.records, samples.examples
    known = all(e.problem is not None for e in examples)
    unique_pos: dict[tuple[int, tuple[str, ...]], dict] = {}
    unique_neg: set[tuple[int, tuple[str, ...]]] = set()
    for r in recs:
        key = (r["problem"], tuple(split_steps(r["completion"])))
        if r["correct"]:
            unique_pos.setdefault(key, r)
        else:
            unique_neg.add(key)
    pos = list(unique_pos.values())
    out = {
        "samples": len(recs),
        "sample_accuracy": round(sum(r["correct"] for r in recs) / max(1, len(recs)), 4),
        "samples_correct": sum(r["correct"] for r in recs),
        "samples_incorrect": sum(not r["correct"] for r in recs),
        "positives": len(pos),  # unique (problem, steps) with the right answer
        "negatives": len(unique_neg),
        "novel_positives": sum(not r["teacher"] for r in pos),  # differ from the teacher's solution
        "problems_with_positive": len({r["problem"] for r in pos}),
        "problems_with_negative": len({p for p, _ in unique_neg}),
        "sample_prompts": samples.key.get("prompts", {}).get("set"),
    }
    if known:
        out["spurious_positives"] = sum(  # right answer, a step wrong or wasted
            bool(generator_spurious_steps(examples[r["problem"]].problem, r["completion"]))
            for r in pos
        )
        out["novel_strict_positives"] = sum(
            not r["teacher"] and r["first_wrong_step"] is None for r in pos
        )
        out["sample_strict_accuracy"] = round(
            sum(r["first_wrong_step"] is None for r in recs) / max(1, len(recs)), 4
        )
    return out


def sample_completion(record: dict) -> Completion:
    """A sample record's sampled ids and text."""
    return Completion(tuple(record["ids"]), record["completion"])


def select_negatives(
    samples: SampleSet,
    per_problem: int | None,
    max_total: int | None,
    seed: int,
    problems: set[int] | None = None,
) -> tuple[list[tuple[int, Completion]], int]:
    """Unique incorrect samples (problem index, sampled completion), unique by their steps (the
    first sample of each): at most ``per_problem`` per problem and ``max_total`` overall, picked
    by a seeded shuffle (the same set for dpo, step_dpo, awr), and how many the cap dropped.
    ``problems``: only these problem indices (``negatives_where=greedy_wrong``)."""
    seen: set[tuple[int, tuple[str, ...]]] = set()
    by_problem: dict[int, list[Completion]] = {}
    for r in samples.records:
        if problems is not None and r["problem"] not in problems:
            continue
        key = (r["problem"], tuple(split_steps(r["completion"])))
        if not r["correct"] and key not in seen:
            seen.add(key)
            by_problem.setdefault(r["problem"], []).append(sample_completion(r))
    rng = random.Random(f"negatives-{seed}")
    chosen: list[tuple[int, Completion]] = []
    for p in sorted(by_problem):
        texts = by_problem[p]
        rng.shuffle(texts)
        chosen += [(p, t) for t in texts[: per_problem or len(texts)]]
    rng.shuffle(chosen)
    capped = max(0, len(chosen) - max_total) if max_total is not None else 0
    if max_total is not None:
        chosen = chosen[:max_total]
    return sorted(chosen, key=lambda x: x[0]), capped


class PiSft:
    """pi_sft of this run's (data, model, seed), its samples and rollouts, all cached on disk.

    ``model_dir`` is the SFT run's ``model/`` folder (``train.ensure_sft_model``); ``cfg`` is the
    objective's run config: its ``objective`` block gives the sampling and rollout knobs.
    """

    def __init__(self, cfg: DictConfig, data, model_dir: Path):
        self.cfg, self.data = cfg, data
        self.obj = cfg.objective
        self.dir = Path(model_dir)
        self.device = run_device(cfg.trainer.get("accelerator"))
        self.model, self.tokenizer = load_pretrained(self.dir)
        self.model.to(self.device)
        self.fingerprint = {
            "run": self.dir.parent.name,
            "weights_sha256": weights_fingerprint(self.dir),
        }
        self.cache = cache_root(cfg)
        self.kind = data.kind
        self._samples: SampleSet | None = None
        self.negatives_capped: int | None = None  # set by negatives()
        self._greedy: list[dict] | None = None  # greedy_records(): negatives_where=greedy_wrong
        self._negatives: list[tuple[int, Completion]] | None = None
        self._t0 = time.perf_counter()

    # -- samples -------------------------------------------------------------
    def sample_key(self, examples: list[Example]) -> dict:
        o = self.obj
        return {
            "sft": self.fingerprint,
            "k": int(o.k),
            "temperature": float(o.temperature),
            "top_p": float(o.top_p),
            "max_new_tokens": int(o.max_new_tokens),
            "seed": int(self.cfg.seed),
            "batch_size": int(o.sample_batch_size),
            "kind": self.kind,
            "format": RECORD_FORMAT,
            "prompts": {
                "set": o.get("sample_prompts", "train"),
                "n": len(examples),
                "sha256": prompts_hash(examples),
            },
        }

    def samples(self) -> SampleSet:
        if self._samples is not None:
            return self._samples
        examples = sampling_examples(self.cfg, self.data)
        key = self.sample_key(examples)
        timing: dict = {}
        o = self.obj

        def build():
            t0 = time.perf_counter()
            recs = draw_samples(
                self.model,
                self.tokenizer,
                examples,
                self.kind,
                k=int(o.k),
                temperature=float(o.temperature),
                top_p=float(o.top_p),
                max_new_tokens=int(o.max_new_tokens),
                seed=int(self.cfg.seed),
                batch_size=int(o.sample_batch_size),
            )
            timing["time_s"] = time.perf_counter() - t0
            log.info(
                "sampled %d solutions from %s in %.1f s", len(recs), self.dir, timing["time_s"]
            )
            return recs

        records = load_or_build(self.cache, "samples", key, build, meta={"sft_dir": str(self.dir)})
        self._samples = SampleSet(examples, records, key, timing.get("time_s"))
        return self._samples

    def greedy_records(self) -> list[dict]:
        """pi_sft's greedy answer on each sampling prompt, verified (cached beside the samples):
        ``negatives_where=greedy_wrong`` keeps the negatives of the problems it gets wrong."""
        if self._greedy is None:
            samples = self.samples()
            key = {**samples.key, "k": 1, "temperature": 0.0, "top_p": 1.0, "greedy": True}

            def build():  # the test set's greedy decode-and-verify, on the sampling prompts
                outcomes = evaluate(
                    self.model,
                    self.tokenizer,
                    samples.examples,
                    self.kind,
                    int(self.obj.max_new_tokens),
                    int(self.obj.sample_batch_size),
                )["test_outcomes"]
                return [{"problem": i, "correct": o == "1"} for i, o in enumerate(outcomes)]

            self._greedy = load_or_build(self.cache, "greedy", key, build)
        return self._greedy

    # -- rollouts ------------------------------------------------------------
    def negatives(self) -> list[tuple[int, Completion]]:
        """The selected negatives; ``self.negatives_capped`` counts those the opt-in
        ``max_negatives`` cap dropped (reported in result.json when it binds)."""
        if self._negatives is None:  # rollouts() and the pairs both ask: select once
            o = self.obj
            where = o.get("negatives_where")
            problems = None
            if where == "greedy_wrong":
                problems = {r["problem"] for r in self.greedy_records() if not r["correct"]}
            self._negatives, self.negatives_capped = select_negatives(
                self.samples(),
                o.get("negatives_per_problem"),
                o.get("max_negatives"),
                int(self.cfg.seed),
                problems,
            )
        return self._negatives

    def rollouts(self):
        """(list[NegativeValues], stats dict) of the selected negatives (cached)."""
        samples = self.samples()
        negs = self.negatives()
        o = self.obj
        key = {
            "samples": samples.key,
            "negatives": hashlib.sha256(repr(negs).encode()).hexdigest(),
            "rollouts": int(o.rollouts),
            "temperature": float(o.rollout_temperature),
            "top_p": float(o.rollout_top_p),
            "max_new_tokens": int(o.max_new_tokens),
            "seed": int(self.cfg.seed),
            "early_stop": bool(o.early_stop),
            "keep_correct": int(o.keep_correct),
            "format": RECORD_FORMAT,
        }

        def build():
            items, stats = rollout_negatives(
                self.model,
                self.tokenizer,
                negs,
                [e.prompt for e in samples.examples],
                [e.answer for e in samples.examples],
                self.kind,
                **rollout_settings(o),
                seed=int(self.cfg.seed),
                early_stop=bool(o.early_stop),
                keep_correct=int(o.keep_correct),
            )
            log.info("rolled out %d negatives: %s", len(items), stats.as_dict())
            return [{"type": "summary", **stats.as_dict()}] + [
                {"type": "negative", **n.to_record()} for n in items
            ]

        built: list[bool] = []
        records = load_or_build(
            self.cache,
            "rollouts",
            key,
            lambda: built.append(True) or build(),
            meta={"sft_dir": str(self.dir)},
        )
        summary = next(r for r in records if r["type"] == "summary")
        items = [NegativeValues.from_record(r) for r in records if r["type"] == "negative"]
        stats = {k: v for k, v in summary.items() if k != "type"}
        stats["rollouts_cached"] = not built  # the time above is that of the pass that built them
        return items, stats

    def confirm_pits(self, rows, n: int) -> tuple[Callable[[int, tuple[int, ...]], bool], dict]:
        """A pit is confirmed when ``n`` more rollouts from the prefix that ends with the pit step
        (the negative's ids through it) are all wrong (M rollouts can miss a recoverable step);
        returns the check step_pairs uses, ``(problem, prefix ids) -> bool``, and counts. Seeded
        per (seed, prompt, prefix text): the same on every run."""
        examples = self.samples().examples
        tok = self.tokenizer
        keys = sorted(
            {(neg.problem, neg.prefix_ids(pit + 1)) for neg, _v, pit, _e in rows if pit is not None}
        )
        dead: dict[tuple[int, tuple[int, ...]], bool] = {}
        if keys:
            texts = [tok.decode(list(ids), skip_special_tokens=True) for _, ids in keys]
            seeds = [
                rollout_seed(int(self.cfg.seed), "confirm", examples[p].prompt, text)
                for (p, _), text in zip(keys, texts)
            ]
            conts = sample_continuations(
                self.model,
                [encode_prompt(tok, examples[p].prompt) + list(ids) for p, ids in keys],
                n,
                int(self.obj.max_new_tokens),
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=float(self.obj.rollout_temperature),
                top_p=float(self.obj.rollout_top_p),
                seeds=seeds,
                batch_size=int(self.obj.rollout_batch_size),
            )
            for (p, ids), samples in zip(keys, conts):
                full = tok.batch_decode([list(ids) + s for s in samples], skip_special_tokens=True)
                dead[(p, ids)] = not any(is_correct(t, examples[p].answer, self.kind) for t in full)
        stats = {
            "pits_checked": len(dead),
            "pits_confirmed": sum(dead.values()),
            "confirm_rollouts": n,
        }
        return (lambda p, ids: dead.get((p, tuple(ids)), False)), stats

    def release(self) -> None:
        """Free pi_sft once the data (and reference log-probs) are built."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> dict:
        """What every objective built on pi_sft adds to ``result.json``: the sample counts, where
        the samples came from, and the time from loading pi_sft to now (its data preparation)."""
        samples = self.samples()
        return {
            **sample_stats(samples),
            "sampling_time_s": samples.time_s,
            "samples_cached": samples.time_s is None,
            "sft_run": self.dir.parent.name,
            **(
                {"negatives_capped": self.negatives_capped}
                if self.negatives_capped is not None
                else {}
            ),
            **self.greedy_stats(),
            "prepare_time_s": round(time.perf_counter() - self._t0, 3),
        }

    def greedy_stats(self) -> dict:
        """With negatives_where=greedy_wrong: pi_sft's greedy accuracy on the sampling prompts
        (beside its T=1 sample_accuracy: the gap is the sampling tail) and the problems kept."""
        if self._greedy is None:
            return {}
        right = sum(r["correct"] for r in self._greedy)
        return {
            "greedy_train_accuracy": round(right / max(1, len(self._greedy)), 4),
            "greedy_wrong_problems": len(self._greedy) - right,
        }
