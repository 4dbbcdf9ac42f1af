"""D_syn: seed problems -> a teacher -> answer-verified positives, through the content-addressed cache.

Data sources (``data.source``), all scored on the same held-out test set of their task:

    procedural          the generator's clean solutions (``examples.procedural_split``, unchanged)
    procedural_teacher  generator problems solved by ``data.teacher`` (procedural / hf / openai)
    gsm8k_teacher       problems of ``data.train_file`` (GSM8K format) solved or rewritten by the teacher
    math_teacher        the same for a MATH-format file
    gsm8k, math         the real data of ``data.train_file`` (a seeded permutation, first ``size``)
    self                the SFT model's own samples: not a data source: objective=rft_self (``eightfold.objectives.pi_sft``)

How size n is a prefix of size 2n. The cache key of a teacher stream leaves the size out: the
entry ``teacher/<hash>.jsonl`` holds one record per seed problem, in stream order, and grows on
demand (``cache.load_prefix``). D_syn of size n is the first n positives of that stream, so it is
literally a prefix of D_syn of size 2n, and a data-size sweep generates max(n) problems once,
whatever order its runs start in (a run that needs more waits for the lock, then extends). This
holds even for a teacher whose sampling is not reproducible (an API), because the stored stream,
not a re-generation, is what every run reads. Each D_syn(n) is also written as its own small
file ``dsyn/<hash>.jsonl`` with its statistics, for inspection and provenance.

Labels (``data.label``). ``reference``: keep a sample only if its final answer matches the seed's
known answer (generator truth, or the file's answer) under the task's verifier -- the binary
reward. ``teacher``: the paper's synthetic setting, the teacher's answer IS the label (majority
answer over its samples); when a reference exists the disagreement is reported as label noise.
A rewritten (new) problem has no reference, so ``mode: rewrite`` requires ``label: teacher``.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import count, islice
from pathlib import Path
from typing import Any

from eightfold import __version__
from eightfold.data import cache
from eightfold.data.arithmetic import Problem, first_wrong_step, unneeded_steps
from eightfold.data.examples import Example, procedural_split
from eightfold.data.seeds import (
    Seed,
    load_seed_file,
    permuted,
    procedural_seed,
    procedural_stream,
    student_prompt,
)
from eightfold.data.teachers import (
    Task,
    Teacher,
    check_config,
    make_teacher,
    public_config,
    render,
    stable_int,
)
from eightfold.runfiles import fingerprint_path
from eightfold.verify import (
    MAX_COMPLETION_CHARS,
    extract_answer,
    is_correct,
    join_steps,
    split_steps,
)

log = logging.getLogger("eightfold.synthetic")

TEACHER_SOURCES = {
    "procedural_teacher": "procedural",
    "gsm8k_teacher": "gsm8k",
    "math_teacher": "math",
}
REAL_SOURCES = {"gsm8k": "gsm8k", "math": "math"}
# star_graph: the path-star task (eightfold.data.star_graph), built by the datamodule directly
SOURCES = ("procedural", *TEACHER_SOURCES, *REAL_SOURCES, "star_graph")
LABELS = ("reference", "teacher")
STREAM_NS, DSYN_NS = "teacher", "dsyn"

# Draw at most this many seed problems per D_syn example before giving up: a teacher whose yield
# is ~0 (an untrained model, a broken template) must fail with numbers, not generate forever.
MAX_DRAWS_PER_EXAMPLE = 50


# -----------------------------------------------------------------------------
# seed streams


class SeedStream:
    """Indexed seed problems. Procedural: the generator stream minus the test prompts. File: a
    seeded permutation of the file minus test questions; ``cycle`` (rewrite mode) starts a new
    permutation after each pass, since one seed can inspire many new problems."""

    def __init__(
        self,
        kind: str,
        seed: int,
        *,
        task: dict | None = None,
        exclude: set[str] = frozenset(),
        exclude_key: Any = None,
        train_file: str | None = None,
        cycle: bool = False,
    ):
        self.kind, self.seed, self.task, self.exclude, self.cycle = (
            kind,
            seed,
            dict(task or {}),
            exclude,
            cycle,
        )
        self.exclude_key = exclude_key
        self.train_file = train_file
        self._seeds: list[Seed] | None = None
        if kind != "procedural":
            if not train_file:
                raise ValueError(
                    f"data.train_file={train_file!r} is not valid: a {kind} source needs a local JSONL file"
                )
            self.file_hash = fingerprint_path(Path(train_file))

    def key(self) -> dict:
        if self.kind == "procedural":
            return {
                "kind": "procedural",
                "seed": self.seed,
                "task": self.task,
                "exclude": self.exclude_key,
            }
        return {
            "kind": self.kind,
            "file_sha256": self.file_hash,
            "seed": self.seed,
            "cycle": self.cycle,
            "exclude": self.exclude_key,
        }

    def _file_seeds(self) -> list[Seed]:
        if self._seeds is None:
            seeds = [
                s
                for s in load_seed_file(Path(self.train_file), self.kind)
                if s.question not in self.exclude
            ]
            if not seeds:
                raise ValueError(
                    f"data.train_file={self.train_file!r}: no seed problems left after removing test questions"
                )
            self._seeds = seeds
        return self._seeds

    def from_index(self, start: int) -> Iterator[tuple[int, Seed]]:
        if self.kind == "procedural":
            stream = procedural_stream(self.seed, exclude=self.exclude, **self.task)
            problems = islice(enumerate(stream), start, None)
            yield from ((i, procedural_seed(p, i)) for i, p in problems)
            return
        seeds = self._file_seeds()
        for rnd in count(start // len(seeds)) if self.cycle else [0]:
            order = permuted(seeds, self.seed, salt=f"round{rnd}")
            for j in range(max(0, start - rnd * len(seeds)), len(order)):
                yield rnd * len(seeds) + j, order[j]


# -----------------------------------------------------------------------------
# teacher stream records

_REWRITE = re.compile(r"problem\s*:\s*(?P<q>.+?)\n\s*solution\s*:\s*(?P<s>.+)", re.I | re.S)


def parse_rewrite(text: str) -> tuple[str, str] | None:
    """(new problem, solution) from ``Problem: ... Solution: ...`` output, or None."""
    m = _REWRITE.search(text.replace("**", ""))  # tolerate markdown bold around the markers
    if m is None:
        return None
    question, solution = m.group("q").strip(), m.group("s").strip()
    return (question, solution) if question and solution else None


def judge(
    question: str, text: str, reference: str | None, kind: str, problem: Problem | None
) -> dict:
    """One teacher sample -> its solution (in the one step format), answer and verdict.

    verdict: format_fail (no answer) | unverified (no reference) | wrong | spurious (right answer,
    a wrong or an unneeded step: procedural only, exact) | clean (right answer, every step right
    and needed) | correct (right answer, steps not checkable).
    """
    solution = join_steps(split_steps(text)) if len(text) <= MAX_COMPLETION_CHARS else ""
    answer = extract_answer(solution, kind) if solution else None
    out: dict = {
        "question": question,
        "solution": solution,
        "answer": answer,
        "correct": None,
        "first_wrong_step": None,
    }
    if answer is None:
        verdict = "format_fail"
    elif reference is None:
        verdict = "unverified"
    else:
        out["correct"] = is_correct(solution, reference, kind)
        if problem is not None:
            out["first_wrong_step"] = first_wrong_step(problem, solution)
        if not out["correct"]:
            verdict = "wrong"
        elif problem is None:
            verdict = "correct"
        else:
            # an unneeded step (a distractor computed) is spurious too; none on the base task
            clean = out["first_wrong_step"] is None and not unneeded_steps(problem, solution)
            verdict = "clean" if clean else "spurious"
    out["verdict"] = verdict
    return out


def stream_builder(
    seeds: SeedStream, teacher_factory: Callable[[], Teacher], kind: str, seed: int
) -> Callable[[int], Iterator[dict]]:
    """``build_from(start)`` for the cache: one record per seed problem from index ``start``."""

    def build_from(start: int) -> Iterator[dict]:
        teacher = teacher_factory()
        template, mode = (
            getattr(teacher, "prompt_template", "{question}"),
            getattr(teacher, "mode", "solve"),
        )
        first = start - start % teacher.batch_size if teacher.aligned else start
        items = seeds.from_index(first)
        while batch := list(islice(items, teacher.batch_size)):
            tasks = [
                Task(i, render(template, s.question, kind, s.solution), s.question, s.problem)
                for i, s in batch
            ]
            # aligned teachers sample a batch from one RNG stream seeded by the batch's start index
            batch_seed = stable_int(seed, batch[0][0]) if teacher.aligned else seed
            for (i, s), samples in zip(batch, teacher.generate(tasks, batch_seed), strict=True):
                if i >= start:
                    yield make_record(i, s, samples, kind, mode)

    return build_from


def make_record(index: int, seed: Seed, samples: list[dict], kind: str, mode: str) -> dict:
    judged = []
    for sample in samples:
        text = sample.get("text") or ""
        extra = {k: v for k, v in sample.items() if k != "text"}
        if mode == "rewrite":
            parsed = parse_rewrite(text)
            question, body = parsed if parsed else ("", "")
            judged.append({**judge(question, body, None, kind, None), **extra, "raw": text})
        else:
            judged.append({**judge(seed.question, text, seed.answer, kind, seed.problem), **extra})
    return {
        "index": index,
        "seed_id": seed.id,
        "question": seed.question,
        "reference": seed.answer,
        "samples": judged,
    }


# -----------------------------------------------------------------------------
# D_syn selection


def select(raw: list[dict], size: int, label: str, mode: str) -> tuple[list[dict], dict]:
    """The first ``size`` D_syn examples of a stream prefix, and statistics over what was read."""
    out: list[dict] = []
    verdicts: Counter = Counter()
    problems = 0
    for rec in raw:
        if len(out) >= size:
            break
        problems += 1
        verdicts.update(s["verdict"] for s in rec["samples"])
        for k, sample, answer in _positives(rec, label, mode):
            out.append(
                {
                    "index": rec["index"],
                    "sample": k,
                    "question": sample["question"],
                    "solution": sample["solution"],
                    "answer": answer,
                    "reference": rec["reference"] if mode == "solve" else None,
                    "verdict": sample["verdict"],
                    "first_wrong_step": sample["first_wrong_step"],
                    **({"injected": sample["injected"]} if "injected" in sample else {}),
                }
            )
            if len(out) >= size:
                break
    kept = Counter(e["verdict"] for e in out)
    n = max(len(out), 1)
    stats = {
        "problems_read": problems,
        "samples_read": sum(verdicts.values()),
        "sample_verdicts": dict(sorted(verdicts.items())),
        "examples": len(out),
        "example_verdicts": dict(sorted(kept.items())),
        "yield": len(out) / max(problems, 1),
        # teacher label disagrees with the true answer (only with label=teacher and a reference)
        "label_noise": kept["wrong"] / n,
        # right final answer through a wrong step: survives any answer-based filter
        "spurious_fraction": kept["spurious"] / n,
    }
    return out, stats


def _positives(rec: dict, label: str, mode: str) -> Iterator[tuple[int, dict, str]]:
    samples = rec["samples"]
    if mode == "rewrite":  # every well-formed sample is its own new problem, labelled by itself
        yield from (
            (k, s, s["answer"])
            for k, s in enumerate(samples)
            if s["answer"] is not None and s["question"]
        )
        return
    if label == "reference":
        hit = next(((k, s) for k, s in enumerate(samples) if s["correct"]), None)
        if hit:
            yield hit[0], hit[1], rec["reference"]
        return
    answers = [s["answer"] for s in samples if s["answer"] is not None]
    if answers:  # majority answer (ties: the earliest); its first sample is the example
        top = Counter(answers).most_common()
        best = next(a for a in answers if Counter(answers)[a] == top[0][1])
        k = next(k for k, s in enumerate(samples) if s["answer"] == best)
        yield k, samples[k], best


# -----------------------------------------------------------------------------
# splits


def build_split(
    *,
    source: str,
    kind: str,
    size: int,
    seed: int,
    test_size: int,
    test_seed: int,
    task: dict | None = None,
    teacher: dict | None = None,
    train_file: str | None = None,
    test_file: str | None = None,
    label: str = "reference",
    cache_dir: str | None = None,
    **options: Any,
) -> tuple[list, list, dict]:
    """(train examples, test examples, info) for every non-procedural source."""
    expected = {**TEACHER_SOURCES, **REAL_SOURCES}.get(source)
    if expected is None:
        raise ValueError(
            f"data.source={source!r} is not valid: expected one of {', '.join(SOURCES)}"
        )
    if kind != expected:
        raise ValueError(
            f"data.kind={kind!r} does not fit data.source={source!r}: expected data.kind={expected}"
        )

    # the test set: identical to the procedural source's, or the test file
    if kind == "procedural":
        _, test = procedural_split(0, seed, test_size, test_seed, **(task or {}))
        exclude = {e.prompt for e in test}
        exclude_key = {"test_size": test_size, "test_seed": test_seed}
    else:
        test = [_example(s, s.solution, s.answer) for s in _test_seeds(test_file, kind, test_size)]
        exclude = {e.meta["question"] for e in test}
        exclude_key = {
            "test_file_sha256": fingerprint_path(Path(test_file)),
            "test_size": test_size,
        }

    if source in REAL_SOURCES:
        seeds = SeedStream(
            kind, seed, exclude=exclude, exclude_key=exclude_key, train_file=train_file
        )
        pool = seeds._file_seeds()
        if size > len(pool):
            raise ValueError(
                f"data.size={size} is larger than data.train_file={train_file!r} ({len(pool)} problems)"
            )
        train = [
            _example(s, s.solution, s.answer) for s in permuted(pool, seed, salt="round0")[:size]
        ]
        return train, test, {"source": source, "train_file": train_file, "examples": len(train)}

    records, info = synthetic_dataset(
        kind=kind,
        size=size,
        seed=seed,
        task=task,
        teacher=teacher,
        train_file=train_file,
        label=label,
        cache_dir=cache_dir,
        exclude=exclude,
        exclude_key=exclude_key,
    )
    problems: dict[int, Problem] = {}
    if kind == "procedural":
        last = max((r["index"] for r in records), default=-1)
        problems = dict(
            enumerate(islice(procedural_stream(seed, exclude=exclude, **(task or {})), last + 1))
        )
    train = []
    for r in records:
        s = Seed(str(r["index"]), r["question"], None, r["answer"], kind, problems.get(r["index"]))
        ex = _example(s, r["solution"], r["answer"])
        ex.meta.update(
            {
                k: r[k]
                for k in ("index", "sample", "verdict", "first_wrong_step", "injected")
                if k in r
            }
        )
        train.append(ex)
    return train, test, info


def _example(seed: Seed, solution: str, answer: str) -> Example:
    return Example(
        student_prompt(seed),
        solution,
        str(answer),
        seed.problem,
        {"question": seed.question, "id": seed.id},
    )


def _test_seeds(test_file: str | None, kind: str, test_size: int) -> list[Seed]:
    if not test_file:
        raise ValueError(
            f"data.test_file={test_file!r} is not valid: a {kind} source needs a local test JSONL file"
        )
    seeds = load_seed_file(Path(test_file), kind)
    if test_size > len(seeds):
        raise ValueError(
            f"data.test_size={test_size} is larger than data.test_file={test_file!r} ({len(seeds)} problems)"
        )
    return seeds[:test_size]  # file order: every run of a study scores the same problems


def synthetic_dataset(
    *,
    kind: str,
    size: int,
    seed: int,
    teacher: dict | None,
    label: str = "reference",
    task: dict | None = None,
    train_file: str | None = None,
    cache_dir: str | None = None,
    exclude: set[str] = frozenset(),
    exclude_key: Any = None,
    teacher_factory: Callable[[], Teacher] | None = None,
) -> tuple[list[dict], dict]:
    """D_syn of ``size`` examples (records) and its statistics + provenance.

    ``teacher_factory`` overrides building the teacher from its config (tests and benchmarks pass
    an in-memory model); ``teacher`` must still describe it, since its key names the cache entry.
    """
    teacher_cfg = dict(teacher or {})
    name = check_config(teacher_cfg)
    built: list[Teacher] = []

    def factory() -> Teacher:  # one teacher per call; models and API keys load lazily inside it
        if not built:
            built.append(teacher_factory() if teacher_factory else make_teacher(teacher_cfg))
        return built[0]

    mode = getattr(factory(), "mode", "solve")
    if label not in LABELS:
        raise ValueError(f"data.label={label!r} is not valid: expected one of {', '.join(LABELS)}")
    if mode == "rewrite" and label != "teacher":
        raise ValueError(
            "data.teacher.mode=rewrite writes new problems with no reference answer: use data.label=teacher"
        )
    if name == "procedural" and kind != "procedural":
        raise ValueError(
            f"data.teacher.name=procedural only solves procedural problems, not data.kind={kind!r}"
        )

    seeds = SeedStream(
        kind,
        seed,
        task=task,
        exclude=exclude,
        exclude_key=exclude_key,
        train_file=train_file,
        cycle=mode == "rewrite",
    )
    # The key is the teacher's own key() (what decides its outputs), so knobs like concurrency
    # never split the cache.
    key = {
        "dataset": "teacher_stream",
        "kind": kind,
        "seeds": seeds.key(),
        "teacher": factory().key(),
        "seed": seed,
    }
    meta = {
        "teacher_config": public_config(teacher_cfg),
        "train_file": train_file,
        "eightfold": __version__,
    }
    build_from = stream_builder(seeds, factory, kind, seed)

    def prefix(m: int) -> list[dict]:
        if factory().aligned:  # whole batches: a batch is computed at once, store all of it
            m = -(-m // factory().batch_size) * factory().batch_size
        if cache_dir is None:  # no cache configured: generate in memory (tests, one-off calls)
            return list(islice(build_from(0), m))
        return cache.load_prefix(Path(cache_dir), STREAM_NS, key, m, build_from, meta=meta)

    want = (
        size
        if name != "procedural" or label == "teacher"
        else math.ceil(size / max(1e-3, 1 - teacher_cfg.get("error_rate", 0)))
    )
    while True:
        raw = prefix(want)
        records, stats = select(raw, size, label, mode)
        if len(records) >= size or len(raw) < want:  # enough, or the seed stream ended
            break
        if len(raw) >= MAX_DRAWS_PER_EXAMPLE * size + 1000:
            raise ValueError(
                f"teacher yield too low: {len(records)} D_syn examples from {len(raw)} problems"
                f" (verdicts {stats['sample_verdicts']}); check data.teacher and data.label={label!r}"
            )
        rate = max(len(records) / len(raw), 1 / MAX_DRAWS_PER_EXAMPLE)
        want = len(raw) + math.ceil((size - len(records)) / rate * 1.1) + 1
    if len(records) < size:
        raise ValueError(
            f"data.size={size} is not valid: the seed stream ends after {len(raw)} problems, giving"
            f" {len(records)} D_syn examples; use data.size<={len(records)} (or mode=rewrite to reuse seeds)"
        )

    stream_hash = cache.key_hash(key)
    info = {
        "source": f"{kind}_teacher",
        "teacher": name,
        "label": label,
        "stream": stream_hash,
        **stats,
    }
    if cache_dir is not None:
        dkey = {
            "dataset": "dsyn",
            "stream": stream_hash,
            "size": size,
            "label": label,
            "mode": mode,
        }
        records = cache.load_or_build(
            Path(cache_dir),
            DSYN_NS,
            dkey,
            lambda: records,
            meta={**meta, "stream_key": key, "stats": info},
        )
    log.info(
        "D_syn: %d examples from %d problems (%s)",
        len(records),
        stats["problems_read"],
        stats["example_verdicts"],
    )
    return records, info
