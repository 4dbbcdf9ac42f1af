"""Spurious steps on positives (paper §5): per-step advantages from Monte Carlo rollouts label a
step that lowers the chance of success, the generator's labels match the steps the teacher
injected, and the opt-in analysis writes its result fields only when it is on.

The Monte Carlo test runs the project's rollout engine on a constructed policy: a distribution
over whole solutions of one real arithmetic problem, served token by token through a model
interface, so every value has a closed form.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from omegaconf import OmegaConf

from eightfold.data.arithmetic import first_wrong_step, generate_problems, unneeded_steps
from eightfold.data.examples import Example
from eightfold.data.synthetic import build_split
from eightfold.data.teachers import ProceduralTeacher, Task, extra_step
from eightfold.models import char_tokenizer
from eightfold.objectives.pi_sft import SampleSet, sample_stats
from eightfold.objectives.rft import rft_positives
from eightfold.objectives.spurious import (
    generator_spurious_steps,
    teacher_spurious_kind,
    unneeded_step_outcomes,
)
from eightfold.objectives.step_values import (
    positive_step_labels,
    spurious_analysis,
    spurious_report,
)
from eightfold.rollouts import rollout_negatives
from eightfold.rundir import config_hash, run_dir
from eightfold.runfiles import RESULT
from eightfold.train import run
from eightfold.verify import is_correct, join_steps, split_steps
from tests.helpers import compose_cfg

CHOICE = dict(chains=1, steps=4, modulus=11, distractors=2, siblings=True)  # cpu_choice


# -----------------------------------------------------------------------------
# a constructed policy: a distribution over whole completions of each prompt


class _History:
    """The KV cache stand-in: each row's tokens so far (the engine repeats and selects rows)."""

    def __init__(self, rows):
        self.rows = rows

    def batch_repeat_interleave(self, m):
        self.rows = [r for r in self.rows for _ in range(m)]

    def batch_select_indices(self, keep):
        self.rows = [self.rows[i] for i in keep.tolist()]


class Scripted(torch.nn.Module):
    """Next token = the mass of the scripted completions that continue the text so far with it
    (EOS where one ends), so the value of a prefix is the mass of the correct completions
    through it over the mass of all completions through it."""

    def __init__(self, tokenizer, script: dict[str, list[tuple[str, float]]]):
        super().__init__()
        self.tok, self.script = tokenizer, script
        self.config = type("Config", (), {"max_position_embeddings": 512})()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the callers

    def next_logprobs(self, ids: list[int]) -> torch.Tensor:
        out = torch.full((len(self.tok),), -1e9)
        text = self.tok.decode(ids, skip_special_tokens=True)
        prompt = next((p for p in self.script if text.startswith(p)), None)
        mass: dict[str, float] = {}
        if prompt is not None:
            done = text[len(prompt) :]
            for completion, w in self.script[prompt]:
                if completion.startswith(done):
                    nxt = completion[len(done)] if len(completion) > len(done) else "<eos>"
                    mass[nxt] = mass.get(nxt, 0.0) + w
        for token, w in (mass or {"<eos>": 1.0}).items():
            out[self.tok.convert_tokens_to_ids(token)] = math.log(w)
        return out

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kw):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        cache = kw.get("past_key_values")
        if cache is None:  # the prefill: only the last position is read by the sampler
            rows = [
                [t for t, k in zip(r.tolist(), m.tolist()) if k] for r, m in zip(input_ids, mask)
            ]
            cache = _History(rows)
            logits = torch.zeros(*input_ids.shape, len(self.tok))
            logits[:, -1] = torch.stack([self.next_logprobs(r) for r in rows])
        else:
            cache.rows = [r + [t] for r, t in zip(cache.rows, input_ids[:, -1].tolist())]
            logits = torch.stack([self.next_logprobs(r) for r in cache.rows]).unsqueeze(1)
        return type("Out", (), {"logits": logits, "past_key_values": cache})()


def spurious_case():
    """A real problem, its clean solution, the same with a useless extra step in the middle, and
    that spurious solution with a wrong answer line: the policy that wrote the extra step mostly
    ends wrong after it."""
    problem = generate_problems(1, 5, chains=1, steps=3, modulus=7)[0]
    clean = problem.solution(random.Random(0))
    for seed in range(100):  # an extra step strictly inside the trace (not first, not last)
        spurious, step = extra_step(problem, clean, random.Random(seed))
        if 0 < step < len(split_steps(spurious)) - 1:
            break
    lines = split_steps(spurious)
    wrong = join_steps(lines[:-1] + [f"#{(problem.answer + 1) % problem.modulus}"])
    return problem, clean, spurious, wrong, step


def test_a_middle_step_that_lowers_success_is_spurious_and_a_clean_positive_is_not():
    tok = char_tokenizer()
    problem, clean, spurious, wrong, step = spurious_case()
    assert is_correct(spurious, str(problem.answer), "procedural")
    assert not is_correct(wrong, str(problem.answer), "procedural")
    # V(prompt) = V(after the shared first steps) = 0.55; after the extra step 0.05 / 0.5 = 0.1
    policy = Scripted(tok, {problem.prompt: [(clean, 0.5), (spurious, 0.05), (wrong, 0.45)]})
    example = Example(
        problem.prompt, spurious, str(problem.answer), problem, {"injected": "spurious:extra_step"}
    )
    items, stats = rollout_negatives(
        policy,
        tok,
        [(0, clean), (0, spurious)],
        [example.prompt],
        [example.answer],
        "procedural",
        rollouts=128,
        max_new_tokens=64,
        seed=0,
        early_stop=False,
        keep_correct=0,
    )
    pos_clean, pos_spurious = items
    assert len(pos_clean.counts) == len(pos_clean.steps)  # every prefix scored, no early stop
    for estimator in ("mean", "bok"):
        values, adv, labels = positive_step_labels(pos_spurious, estimator, 5, margin=0.2)
        assert labels == [step] and values[-1] == 1.0 and adv[step] < -0.2
        if estimator == "mean":  # the closed form, within Monte Carlo noise
            assert values[step] == pytest.approx(0.55, abs=0.15)
            assert values[step + 1] == pytest.approx(0.1, abs=0.1)
        values, adv, labels = positive_step_labels(pos_clean, estimator, 5, margin=0.2)
        assert labels == [] and min(adv) > -0.2
    # the generator and the teacher say the same of the two
    assert generator_spurious_steps(problem, spurious) == [step]
    assert generator_spurious_steps(problem, clean) == []
    out = spurious_analysis(items, [example], 0.2, "bok", 5)
    assert out["spurious_analysed"] == 2 and out["spurious_mc_positives"] == 1
    assert out["spurious_generator_positives"] == 1 and out["spurious_both"] == 1
    assert out["spurious_agreement"] == 1.0
    assert out["spurious_step_precision"] == out["spurious_step_recall"] == 1.0
    assert out["spurious_teacher_positives"] == 1 and out["spurious_teacher_kinds"] == {
        "extra_step": 1
    }
    assert out["spurious_teacher_mc"] == 1
    # a margin above the drop labels nothing: the margin is the rule's only threshold
    assert positive_step_labels(pos_spurious, "mean", 5, margin=0.95)[2] == []
    with pytest.raises(ValueError, match="margin=-0.1 is not valid: expected a number >= 0"):
        positive_step_labels(pos_spurious, "mean", 5, margin=-0.1)


@pytest.mark.parametrize("kind", ["wrong_value", "extra_step", "distractor"])
def test_generator_labels_are_the_steps_the_teacher_injected(kind):
    teacher = ProceduralTeacher(spurious_rate=1.0, spurious_kinds=[kind])
    problems = generate_problems(60, 11, **CHOICE)
    tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
    for p, (s,) in zip(problems, teacher.generate(tasks, seed=11), strict=True):
        assert s["injected"] == f"spurious:{kind}" and is_correct(
            s["text"], str(p.answer), "procedural"
        )
        assert generator_spurious_steps(p, s["text"]) == [s["injected_step"]]
        # a wasted step is unneeded (right or wrong); a recovered wrong value is a wrong step
        if kind == "wrong_value":
            assert (
                unneeded_steps(p, s["text"]) == []
                and first_wrong_step(p, s["text"]) == s["injected_step"]
            )
        else:
            assert unneeded_steps(p, s["text"]) == [s["injected_step"]]
        clean = p.solution(random.Random(0))
        assert generator_spurious_steps(p, clean) == []


def test_teacher_data_records_its_spurious_kinds_and_the_generator_agrees(tmp_path):
    """D_syn of data=teacher with spurious_rate > 0 keeps the injected kind per example, and the
    generator labels exactly the injected ones (one step each)."""
    train, _, _ = build_split(
        source="procedural_teacher",
        kind="procedural",
        size=60,
        seed=4,
        test_size=10,
        test_seed=99,
        task=CHOICE,
        teacher={
            "name": "procedural",
            "spurious_rate": 0.5,
            "spurious_kinds": ["wrong_value", "extra_step", "distractor"],
        },
        cache_dir=str(tmp_path),
    )
    kinds = [teacher_spurious_kind(e, e.solution) for e in train]
    assert {e.meta["injected"] for e in train} == {"clean"} | {f"spurious:{k}" for k in kinds if k}
    assert set(kinds) == {None, "wrong_value", "extra_step", "distractor"}
    for e, k in zip(train, kinds):
        labels = generator_spurious_steps(e.problem, e.solution)
        assert len(labels) == (1 if k else 0), (e.meta["injected"], e.solution)
    # a positive that is not the teacher's solution (here: a clean one) gets no teacher label
    e = next(e for e, k in zip(train, kinds) if k)
    assert teacher_spurious_kind(e, e.problem.solution(random.Random(0))) is None


# -----------------------------------------------------------------------------
# the switch: off by default (no field, no hash change), on in step_dpo's result.json


def _cfg(root, *extra):
    return compose_cfg(
        [
            "experiment=smoke",
            "data=teacher",
            "data.size=64",
            "data.test_size=32",
            "data.task.chains=2",
            "data.task.steps=1",
            "data.teacher.spurious_rate=0.5",
            f"paths.root={root}",
            "trainer.enable_progress_bar=false",
            "checkpoint_every_n_steps=100000",
            "trainer.max_steps=150",  # pi_sft writes well-formed solutions, some right
            "objective=step_dpo",
            "objective.k=4",
            "objective.steps=2",
            "objective.rollouts=4",
            "objective.max_negatives=16",
            *extra,
        ]
    )


def test_the_analysis_writes_its_fields_only_when_on_and_off_moves_no_hash(tmp_path):
    torch.set_num_threads(1)
    off = _cfg(tmp_path)
    on = _cfg(tmp_path, "objective.spurious_analysis.positives=12")
    # off: the key leaves the hash where it was before it existed; on: a run of its own
    tree = OmegaConf.to_container(off, resolve=True)
    assert tree["objective"].pop("spurious_analysis") == {"positives": None, "margin": 0.2}
    assert config_hash(off) == config_hash(tree)
    assert config_hash(on) != config_hash(off)
    assert spurious_report(None, off.objective, 0) == {}  # off: nothing is asked of pi_sft
    run(on)
    run(off)
    got = json.loads((run_dir(on) / RESULT).read_text())
    assert got["spurious_analysed"] == min(12, got["spurious_available"]) > 0
    assert got["spurious_available"] == got["positives"]  # RFT's positives: unique correct samples
    assert 0 <= got["spurious_mc_positives"] <= got["spurious_analysed"]
    assert 0 <= got["spurious_generator_positives"] <= got["spurious_analysed"]
    assert 0 <= got["spurious_agreement"] <= 1 and got["spurious_margin"] == 0.2
    assert got["spurious_rollouts"] > 0 and got["spurious_rollouts_cached"] is False
    assert set(got["spurious_teacher_kinds"]) <= {"wrong_value", "extra_step"}
    plain = json.loads((run_dir(off) / RESULT).read_text())
    assert not [k for k in plain if k.startswith("spurious_") and k != "spurious_positives"]
    assert plain["positives"] == got["positives"]  # the same pi_sft and samples
    bad = _cfg(tmp_path, "objective.spurious_analysis.positives=0")
    with pytest.raises(ValueError, match="positives=0 is not valid: expected a positive integer"):
        spurious_report(None, bad.objective, 0)


def test_a_wasted_distractor_step_counts_as_a_spurious_positive():
    """pi_sft's spurious_positives and rft's rft_kept_spurious: a right answer through a wrong
    step or through a wasted one (a distractor computed right, which first_wrong_step accepts)."""
    teacher = ProceduralTeacher(spurious_rate=1.0, spurious_kinds=["distractor"])
    problems = generate_problems(3, 2, **CHOICE)
    tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
    wasted = [s["text"] for (s,) in teacher.generate(tasks, seed=2)]
    examples = [Example(p.prompt, p.solution(random.Random(0)), str(p.answer), p) for p in problems]
    records = [
        {
            "problem": i,
            "j": 0,
            "completion": text,
            "ids": [],
            "correct": True,
            "first_wrong_step": first_wrong_step(problems[i], text),
            "teacher": False,
        }
        for i, text in enumerate([wasted[0], wasted[1], examples[2].solution])
    ]
    assert [r["first_wrong_step"] for r in records] == [None, None, None]
    samples = SampleSet(examples, records, {})
    assert sample_stats(samples)["spurious_positives"] == 2
    assert rft_positives(samples, None)[1]["rft_kept_spurious"] == 2


def test_unneeded_step_outcomes_split_accuracy_by_a_wasted_step():
    teacher = ProceduralTeacher(spurious_rate=1.0, spurious_kinds=["distractor"])
    problems = generate_problems(4, 2, **CHOICE)
    tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
    wasted = [s["text"] for (s,) in teacher.generate(tasks, seed=2)]
    examples = [Example(p.prompt, p.solution(random.Random(0)), str(p.answer), p) for p in problems]
    wrong = examples[3].solution.rsplit("#", 1)[0] + f"#{(problems[3].answer + 1) % 11}"
    texts = [
        wasted[0],
        wasted[1],
        examples[2].solution,
        wrong,
    ]  # 2 wasted (right), 1 clean, 1 wrong
    out = unneeded_step_outcomes(examples, texts)
    assert out["outputs"] == 4 and out["unneeded_step_rate"] == 0.5
    assert out["accuracy_with_unneeded"] == 1.0 and out["accuracy_without_unneeded"] == 0.5
    assert out["accuracy"] == 0.75


def test_the_fixed_epoch_preset_is_cpu_spurious_with_sft_steps_proportional_to_n():
    """experiment=cpu_spurious_epochs: 64 SFT epochs at every size; at n=1000 that is
    cpu_spurious's 2000 steps, so those runs (and their caches) are the same run hashes."""
    at = {
        n: compose_cfg(["experiment=cpu_spurious_epochs", f"data.size={n}", "paths.root=/tmp/x"])
        for n in (250, 1000, 2000)
    }
    assert [at[n].trainer.max_steps for n in (250, 1000, 2000)] == [500, 2000, 4000]
    for objective in ("sft", "step_dpo"):
        fixed, plain = (
            compose_cfg(
                [f"experiment={e}", f"objective={objective}", "data.size=1000", "paths.root=/tmp/x"]
            )
            for e in ("cpu_spurious_epochs", "cpu_spurious")
        )
        assert run_dir(fixed) == run_dir(plain)
    assert run_dir(at[2000]) != run_dir(
        compose_cfg(["experiment=cpu_spurious", "data.size=2000", "paths.root=/tmp/x"])
    )
