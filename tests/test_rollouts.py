"""Step values, first pit, and the rollout engine: prefix reuse == naive rollouts under one seed."""

from __future__ import annotations

import functools

import pytest
import torch

from eightfold.data.datamodule import TokenizedPairs, collate_sft
from eightfold.data.examples import procedural_split
from eightfold.generation import Completion, encode_prompt, generate
from eightfold.models import char_tokenizer, tiny_gpt
from eightfold.objectives.base import token_logps
from eightfold.objectives.step_values import advantages, first_pit, prefix_values, step_value
from eightfold.rollouts import (
    NegativeValues,
    prefix_text,
    rollout_negatives,
    sample_continuations,
    step_cuts,
)
from eightfold.verify import is_correct, split_steps


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models on a shared 2-core box: one thread is ~10x faster than two under load
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- pure functions ----------------------------------------------------------------


def test_step_value_estimators():
    assert step_value(2, 8, "mean") == 0.25
    assert step_value(2, 8, "bok", k=5) == pytest.approx(1 - 0.75**5)
    assert step_value(0, 8, "bok", k=5) == 0.0 and step_value(8, 8, "bok", k=5) == 1.0
    flags = [False] * 4 + [True] + [False] * 5  # groups of 5: [F F F F T] [F F F F F]
    assert step_value(1, 10, "bok_any", k=5, correct_flags=flags) == 0.5
    with pytest.raises(ValueError, match="estimator"):
        step_value(1, 8, "max")


@pytest.mark.parametrize(
    "values, rule, threshold, pit",
    [
        ([0.9, 0.8, 0.0, 0.0, 0.0], "first_zero", 0.0, 1),  # V_1 > 0, V_2 = 0: step index 1
        ([0.5, 0.0, 0.0], "first_zero", 0.0, 0),  # the first step kills it
        ([0.9, 0.9, 0.9, 0.0], "first_zero", 0.0, 2),  # only the (wrong) answer line is the pit
        ([0.0, 0.3, 0.0], "first_zero", 0.0, None),  # V(prompt) = 0: no pit (needs V_0 > 0)
        ([0.9, 0.2, 0.1, 0.0], "first_zero", 0.0, 2),  # soft drops before the collapse do not count
        ([0.9, 0.2, 0.1, 0.0], "argmin_advantage", 0.0, 0),  # but the largest drop is step 0
        ([0.5, 0.5, 0.5, 0.0], "argmin_advantage", 0.0, 2),
        ([0.5, 0.6, 0.6, 0.6], "argmin_advantage", 0.0, None),  # never drops
        (
            [0.4, 0.6, 0.2, 0.0],
            "argmin_advantage",
            0.0,
            1,
        ),  # first index attaining the min (-0.4, -0.2)
        ([0.9, 0.7, 0.1, 0.0], "first_drop", 0.5, 1),
        ([0.9, 0.7, 0.5, 0.3], "first_drop", 0.5, None),
    ],
)
def test_first_pit_on_constructed_values(values, rule, threshold, pit):
    assert first_pit(values, rule, threshold) == pit


def test_advantages_and_bad_rules():
    assert advantages([1.0, 0.5, 0.5, 0.0]) == [-0.5, 0.0, -0.5]
    with pytest.raises(ValueError, match="pit rule"):
        first_pit([1.0, 0.0], "nope")
    with pytest.raises(ValueError, match="positive pit_threshold"):
        first_pit([1.0, 0.0], "first_drop", 0.0)


def test_values_fill_dead_and_terminal_prefixes_with_zero():
    n = NegativeValues(
        0,
        "x",
        ["s1", "s2", "s3", "#1"],
        counts=[4, 2, 0],
        flags=[[True] * 4 + [False] * 4, [True] * 2 + [False] * 6, [False] * 8],
        m=8,
    )
    assert prefix_values(n, "mean") == [0.5, 0.25, 0.0, 0.0, 0.0]
    assert first_pit(prefix_values(n, "bok", 5)) == 1
    assert NegativeValues.from_record(n.to_record()) == n


# -- the engine on a tiny trained model ---------------------------------------------


@pytest.fixture(scope="module")
def policy():
    """A 1-layer model trained for 200 steps on 2-step problems: right answers sometimes."""
    train, _ = procedural_split(100, 0, 20, 1, chains=1, steps=2, modulus=7)
    model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0)
    ds = TokenizedPairs(tok, [(e.prompt, e.solution) for e in train])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(
        ds,
        32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=functools.partial(collate_sft, pad_id=tok.pad_token_id),
    )
    step = 0
    while step < 200:
        for b in loader:
            lp, m = token_logps(
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                b["labels"],
            )
            (-lp.sum() / m.sum()).backward()
            opt.step()
            opt.zero_grad()
            step += 1
    model.eval()
    samples = generate(
        model, tok, [e.prompt for e in train[:30]], 40, do_sample=True, num_samples=2, seed=0
    )
    negatives = [
        (i, c)
        for i, cs in enumerate(samples)
        for c in cs
        if not is_correct(c, train[i].answer, "procedural")
    ]
    return model, tok, train[:30], negatives


def test_greedy_decoding_matches_the_project_decoder(policy):
    model, tok, examples, _ = policy
    prompts = [e.prompt for e in examples[:12]]
    ours = sample_continuations(
        model,
        [encode_prompt(tok, p) for p in prompts],
        1,
        40,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        temperature=0.0,
    )
    theirs = generate(model, tok, prompts, 40)
    assert [tok.decode(o[0], skip_special_tokens=True) for o in ours] == [t[0] for t in theirs]


def test_shared_prefix_equals_naive_token_for_token(policy):
    model, tok, examples, negatives = policy
    prefixes = [
        encode_prompt(tok, examples[p].prompt)
        + tok(prefix_text(text.split("\n"), 1), add_special_tokens=False)["input_ids"]
        for p, text in negatives[:6]
    ] + [encode_prompt(tok, e.prompt) for e in examples[:4]]
    kw = dict(
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        seeds=list(range(len(prefixes))),
    )
    shared = sample_continuations(model, prefixes, 8, 40, share_prefix=True, **kw)
    naive = sample_continuations(model, prefixes, 8, 40, share_prefix=False, batch_size=24, **kw)
    assert shared == naive
    # batch composition does not matter either: each rollout owns its noise stream
    alone = sample_continuations(
        model,
        prefixes[3:4],
        8,
        40,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        seeds=[3],
    )
    assert alone[0] == shared[3]
    assert len({tuple(x) for x in shared[0]}) > 1  # it really samples


def test_prefix_reuse_gives_the_same_step_values_as_naive_rollouts(policy):
    model, tok, examples, negatives = policy
    assert len(negatives) >= 10
    args = (
        model,
        tok,
        negatives[:12],
        [e.prompt for e in examples],
        [e.answer for e in examples],
        "procedural",
    )
    kw = dict(rollouts=6, max_new_tokens=40, seed=7)
    fast, fast_stats = rollout_negatives(*args, share_prefix=True, **kw)
    slow, slow_stats = rollout_negatives(*args, share_prefix=False, batch_size=16, **kw)
    assert [n.counts for n in fast] == [n.counts for n in slow]
    assert [prefix_values(n, "bok", 5) for n in fast] == [prefix_values(n, "bok", 5) for n in slow]
    assert [n.correct for n in fast] == [n.correct for n in slow]
    assert sum(map(sum, (n.counts for n in fast))) > 0  # not the trivial all-zero case
    assert fast_stats.rollouts == slow_stats.rollouts
    # early stop + shared prefixes cost fewer rollouts than every prefix x M
    assert fast_stats.rollouts < fast_stats.naive_rollouts
    for n in fast:  # scoring stopped at the first dead prefix
        assert all(c > 0 for c in n.counts[:-1])
    # without early stop every non-terminal prefix is scored
    full, _ = rollout_negatives(*args, early_stop=False, **kw)
    assert [len(n.counts) for n in full] == [len(n.steps) for n in full]
    for a, b in zip(fast, full):  # the prefixes both scored have identical counts
        assert b.counts[: len(a.counts)] == a.counts


def test_rollouts_continue_from_the_sampled_ids_not_the_text(policy):
    """A negative whose ids hold a token its text does not show (<unk>, dropped by decoding):
    its prefixes, and so its rollouts, are cut from the ids; re-encoding the text would lose it."""
    model, tok, examples, negatives = policy
    p, text = negatives[0]
    steps = split_steps(text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = ids[:1] + [tok.unk_token_id] + ids[1:]
    sampled = Completion(tuple(ids), tok.decode(ids, skip_special_tokens=True))
    (neg,), _ = rollout_negatives(
        model,
        tok,
        [(p, sampled)],
        [e.prompt for e in examples],
        [e.answer for e in examples],
        "procedural",
        rollouts=4,
        max_new_tokens=40,
        early_stop=False,
    )
    assert neg.ids == sampled.ids and neg.steps == steps and neg.cuts[-1] == len(ids)
    assert tok.unk_token_id in neg.prefix_ids(1) and neg.cuts[1] == len(prefix_text(steps, 1)) + 1
    for cs in neg.correct:  # kept continuations: their sampled ids, their text the decoding
        assert all(c.text == tok.decode(list(c.ids), skip_special_tokens=True) for c in cs)


@pytest.mark.parametrize(
    "text, cuts",
    [
        ("a=1\nb=2\n#3", [0, 4, 8, 10]),  # one token per character: prefix_text's lengths
        ("a=1\n\nb=2 \n#3\n", [0, 4, 10, 13]),  # a blank line goes with the next step
        ("#3", [0, 2]),
        ("", [0]),
    ],
)
def test_step_cuts_end_each_prefix_at_the_newline_of_its_last_step(text, cuts):
    tok = char_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    steps = split_steps(text)
    assert step_cuts(tok, ids, len(steps)) == cuts
    for i in range(len(steps)):  # a solution written one step per line: exactly today's prefixes
        assert split_steps(tok.decode(ids[: cuts[i]])) == steps[:i]
