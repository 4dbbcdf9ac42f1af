"""A real-architecture model end to end on CPU: a tiny Llama with a byte-level BPE tokenizer
trained on the task's text (tests/real_model.py), through ``model=hf model.name=<folder>``:
sft -> rft -> dpo -> step_dpo, each evaluated.

What it guards: every objective scores the token ids pi_sft sampled. The BPE tokenizer merges
across digits, ``=`` and newlines, so a sampled completion is often not the tokenisation its text
would get again (the test checks that this really happens here); encoding text again, or
encoding prompt, prefix and side piecewise, would score other tokens than were sampled.

How it looks: the real run in this process, with recording wrappers (the wrapped functions
still run) around the three places ids pass: pi_sft's sampling (``generate_ids``), the rollout
engine (``sample_continuations``) and the pairs as the DPO objectives tokenise them for scoring
(``tokenize_pair``); RFT's training pairs are read from the datamodule its ``prepare`` returns.

That a tiny lr still changes this Llama's fp32 master weights (loaded in bf16) is checked in
tests/test_precision.py, beside the same check on GPT-2.
"""

from __future__ import annotations

import json

import pytest
import torch

import eightfold.objectives.dpo as dpo
import eightfold.objectives.pi_sft as pi_sft
import eightfold.rollouts as rollouts
from eightfold.generation import encode_prompt
from eightfold.objectives.rft import RFTModule
from eightfold.rundir import run_dir
from eightfold.runfiles import RESULT
from eightfold.train import run
from tests.helpers import compose_cfg
from tests.real_model import save_tiny_llama, task_texts, train_bpe_tokenizer

pytestmark = pytest.mark.slow

TASK = {"chains": 2, "steps": 1, "modulus": 7}  # experiment=smoke's task


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def starts_with(seq, prefix) -> bool:
    return tuple(seq[: len(prefix)]) == tuple(prefix)


def test_every_objective_scores_the_ids_pi_sft_sampled(tmp_path, monkeypatch):
    tokenizer = train_bpe_tokenizer(task_texts(**TASK))
    folder = save_tiny_llama(tmp_path / "llama", tokenizer)
    eos = tokenizer.eos_token_id

    # 1. recording wrappers around the real functions
    sampled: dict[str, list[tuple[int, ...]]] = {}  # prompt -> its sampled completions' ids
    rolled: dict[tuple[int, ...], list[tuple[int, ...]]] = {}  # rollout input ids -> outputs
    scored: dict[str, list] = {"dpo": [], "step_dpo": []}  # (pair, what is scored)
    rft_pairs: list = []

    def spy_generate(model, tok, prompts, *args, **kwargs):
        outs = generate_ids(model, tok, prompts, *args, **kwargs)
        for p, cs in zip(prompts, outs):
            sampled.setdefault(p, []).extend(c.ids for c in cs)
        return outs

    def spy_continuations(model, prefixes, *args, **kwargs):
        outs = sample_continuations(model, prefixes, *args, **kwargs)
        for p, cs in zip(prefixes, outs):
            rolled.setdefault(tuple(p), []).extend(tuple(c) for c in cs)
        return outs

    def spy_tokenize(tok, pair):
        out = tokenize_pair(tok, pair)
        scored[current].append((pair, out))
        return out

    def spy_prepare(self, cfg, data, pi):
        out = prepare(self, cfg, data, pi)
        rft_pairs.extend(out.train_pairs())
        return out

    generate_ids, sample_continuations = pi_sft.generate_ids, rollouts.sample_continuations
    tokenize_pair, prepare = dpo.tokenize_pair, RFTModule.prepare
    monkeypatch.setattr(pi_sft, "generate_ids", spy_generate)
    monkeypatch.setattr(rollouts, "sample_continuations", spy_continuations)
    monkeypatch.setattr(dpo, "tokenize_pair", spy_tokenize)
    monkeypatch.setattr(RFTModule, "prepare", spy_prepare)

    # 2. sft -> rft -> dpo -> step_dpo through model=hf (smoke sizes; the SFT run trains first)
    results = {}
    for current in ("rft", "dpo", "step_dpo"):
        cfg = compose_cfg(
            [
                "model=hf",
                f"model.name={folder}",
                f"objective={current}",
                f"paths.root={tmp_path / 'runs'}",
                "data.size=64",
                "data.test_size=64",
                *(f"data.task.{k}={v}" for k, v in TASK.items()),
                "trainer.max_steps=300",
                "checkpoint_every_n_steps=100000",
                "trainer.enable_progress_bar=false",
                "objective.k=8",
                "objective.steps=5",
            ]
        )
        run(cfg)
        results[current] = json.loads((run_dir(cfg) / RESULT).read_text())
    for name, r in results.items():  # each trained its steps and was evaluated
        assert r["objective"] == name and 0.0 <= r["test_accuracy"] <= 1.0
        assert r["sft_run"] == results["rft"]["sft_run"]  # one pi_sft, one sampling pass
    assert sum(map(len, sampled.values())) == 8 * 64

    # 3. some samples are not the tokenisation their text gets again (8 of 512 when written)
    assert any(
        ids != tuple(tokenizer(tokenizer.decode(list(ids)), add_special_tokens=False)["input_ids"])
        for ids_list in sampled.values()
        for ids in ids_list
    )

    # 4. RFT trains on sampled completions (ids), the teacher's solutions as text
    own = [(p, r) for p, r in rft_pairs if not isinstance(r, str)]
    assert len(own) == results["rft"]["rft_self_added"] > 0
    assert all(tuple(r) in sampled[p] for p, r in own)

    # 5. DPO: prompt as sampled from, both sides a sampled completion (+ EOS) of that prompt
    assert len(scored["dpo"]) == results["dpo"]["pairs"] > 0
    for pair, it in scored["dpo"]:
        assert it.prompt == encode_prompt(tokenizer, pair.prompt) and pair.prefix.ids == ()
        assert it.chosen == [*pair.chosen.ids, eos] and it.rejected == [*pair.rejected.ids, eos]
        assert pair.chosen.ids in sampled[pair.prompt] and pair.rejected.ids in sampled[pair.prompt]

    # 6. per-step DPO: every rollout starts from the prompt + a step prefix of a sampled negative;
    #    a pair's shared prefix is such a rollout input, its chosen side one of that input's
    #    rollouts, its rejected side the negative's own next tokens
    prompt_ids = {p: tuple(encode_prompt(tokenizer, p)) for p in sampled}
    for start in rolled:
        assert any(
            starts_with(start, prompt_ids[p]) and starts_with(c, start[len(prompt_ids[p]) :])
            for p in sampled
            for c in sampled[p]
        )
    assert len(scored["step_dpo"]) == results["step_dpo"]["pairs"] > 0
    for pair, it in scored["step_dpo"]:
        start = prompt_ids[pair.prompt] + pair.prefix.ids
        assert tuple(it.prompt) == start and start in rolled
        assert pair.chosen.ids in rolled[start] and it.chosen == [*pair.chosen.ids, eos]
        negative = pair.prefix.ids + pair.rejected.ids
        assert any(starts_with(c, negative) for c in sampled[pair.prompt])
        assert it.rejected == [*pair.rejected.ids, *([eos] if pair.rejected_eos else [])]

    # what encoding the texts piecewise would have scored instead differs for some pairs (14/82)
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    differ = [
        list(p.prefix.ids) != encode(p.prefix.text)
        or list(p.chosen.ids) != encode(p.chosen.text)
        or list(p.rejected.ids) != encode(p.rejected.text)
        for p, _ in scored["dpo"] + scored["step_dpo"]
    ]
    assert any(differ)
