"""Per-step pairs contrast the error, and AWR with signed advantages pushes the pit step down.

Constructed examples, no sampling: a negative of a known arithmetic trace, its pit, and correct
continuations of the pre-pit prefix written in both operand orders (the only alternatives a
single-chain trace has for a commutative step). The texts are tokenised once, as a sampler's ids
would be, and every side of a pair is cut from those ids.
"""

from __future__ import annotations

import random

import pytest
import torch

from eightfold.data.datamodule import collate_sft
from eightfold.data.examples import Example
from eightfold.generation import Completion
from eightfold.models import char_tokenizer, tiny_gpt
from eightfold.objectives.awr import awr_items, collate_weighted
from eightfold.objectives.base import model_token_logps
from eightfold.objectives.losses import weighted_nll
from eightfold.objectives.step_values import shared_prefix_length, step_pairs
from eightfold.rollouts import negative_values

TOK = char_tokenizer()


def decode(ids) -> str:
    return TOK.decode(list(ids), skip_special_tokens=True)


def first_divergence(a: list[int], b: list[int]) -> int:
    return shared_prefix_length(a, b)


def constructed(seed: int):
    """A negative whose step 1 writes a wrong value; correct continuations in both orders."""
    rng = random.Random(seed)
    x, y, m = rng.randrange(2, 10), rng.randrange(2, 10), 11
    a = (x + y) % m
    right = (a * y) % m
    wrong = (right + rng.randrange(1, m)) % m
    steps = [f"a=x+y={x}+{y}={a}", f"b=a*y={a}*{y}={wrong}", f"#{wrong}"]
    same_order = f"b=a*y={a}*{y}={right}\n#{right}"
    swapped = f"b=y*a={y}*{a}={right}\n#{right}"
    options = [swapped, same_order] if seed % 2 else [same_order, swapped]
    neg = negative_values(TOK, 0, "\n".join(steps), 8)
    neg.counts, neg.flags = [8, 8, 0], [[True] * 8, [True] * 8, [False] * 8]
    neg.correct = [[], [Completion.of_text(TOK, c) for c in options], []]
    example = Example(f"x={x} y={y} mod {m}?", "", str(right))
    return neg, example, steps[1]


@pytest.mark.parametrize("seed", range(12))
def test_longest_prefix_chosen_diverges_from_the_pit_at_its_first_wrong_token(seed):
    _model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    neg, example, pit_step = constructed(seed)
    rows = [(neg, [1.0, 1.0, 0.0, 0.0], 1, 1)]
    pairs, stats = step_pairs(
        rows, [example], "pit", seed, chosen_rule="longest_prefix", decode=decode
    )
    (pair,) = pairs
    chosen, rejected = list(pair.chosen.ids), list(pair.rejected.ids)
    assert chosen == ids(pair.chosen.text) and rejected == ids(pit_step + "\n")
    # the wrong value's first token: where the pit step leaves the correct same-order step
    first_wrong = pit_step.rindex("=") + 1
    while pit_step[first_wrong] == pair.chosen.text[first_wrong]:
        first_wrong += 1
    assert first_divergence(chosen, rejected) == len(ids(pit_step[:first_wrong]))
    assert stats["chosen_rule"] == "longest_prefix" and pair.prefix.text.startswith("a=x+y=")
    assert pair.prefix.ids == neg.prefix_ids(1)  # the negative's own tokens up to the pit


def test_random_chosen_can_start_the_contrast_at_the_operand_order():
    _model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2)
    starts = set()
    for seed in range(12):
        neg, example, _ = constructed(seed)
        (pair,), _ = step_pairs([(neg, [1.0, 1.0, 0.0, 0.0], 1, 1)], [example], "pit", seed)
        starts.add(shared_prefix_length(pair.chosen.ids, pair.rejected.ids))
    assert 2 in starts  # "b=" then "y*a" vs "a*y": the contrast is an operand choice


def test_paper_pair_form_is_a_full_solution_against_the_negative_cut_after_its_pit():
    neg, example, pit_step = constructed(0)
    full = "a=x+y=1+1=2\nb=a*y=2*1=2\n#2"
    (pair,), stats = step_pairs(
        [(neg, [1.0, 1.0, 0.0, 0.0], 1, 1)],
        [example],
        "pit",
        0,
        pair_form="paper",
        positives={0: [Completion.of_text(TOK, full)]},
        decode=decode,
    )
    assert pair.prefix.ids == () and pair.chosen.text == full and pair.chosen_eos
    assert pair.rejected.text == neg.steps[0] + "\n" + pit_step + "\n" and not pair.rejected_eos
    assert pair.rejected.ids == neg.prefix_ids(2)
    assert stats["pair_form"] == "paper"


def test_unconfirmed_pits_give_no_pair():
    neg, example, _ = constructed(1)
    pairs, stats = step_pairs(
        [(neg, [1.0, 1.0, 0.0, 0.0], 1, 1)], [example], "pit", 0, confirmed=lambda p, ids: False
    )
    assert pairs == [] and stats["pairs_skipped_unconfirmed"] == 1


def test_signed_awr_lowers_the_pit_steps_probability():
    torch.manual_seed(0)
    model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2, seed=0)
    neg, example, pit_step = constructed(3)
    values = [1.0, 1.0, 0.0, 0.0]  # A(pit) = -1, the chosen continuation's advantage 1 - V = 0
    rows = [(neg, values, 1, 1)]
    pairs, _ = step_pairs(rows, [example], "pit", 0, chosen_rule="longest_prefix")
    items, stats = awr_items(tok, rows, pairs, beta=0.1, max_weight=20.0, weighting="signed")
    assert stats["awr_negative_weights"] == 1  # the pit step, and nothing else, is pushed down
    batch = collate_weighted(items, tok.pad_token_id)
    negative = items[0]
    pit_ids = tok(pit_step + "\n", add_special_tokens=False)["input_ids"]
    start = len(negative.prompt) + len(negative.response) - len(pit_ids)

    def pit_logp() -> float:
        with torch.no_grad():
            one = collate_sft([(negative.prompt, negative.response)], tok.pad_token_id)
            logps, _ = model_token_logps(model, one)
        return float(logps[0, start - 1 : start - 1 + len(pit_ids)].sum())

    before = pit_logp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        tok_logps, mask = model_token_logps(model, batch)
        loss = weighted_nll(tok_logps, batch["weights"][:, 1:], mask, "weights")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert pit_logp() < before - 0.1


def test_exp_awr_never_gives_a_negative_weight():
    neg, example, _ = constructed(3)
    _model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2)
    rows = [(neg, [1.0, 1.0, 0.0, 0.0], 1, 1)]
    pairs, _ = step_pairs(rows, [example], "pit", 0)
    items, stats = awr_items(tok, rows, pairs, beta=0.1, max_weight=20.0, weighting="exp")
    assert stats["awr_negative_weights"] == 0 and min(min(it.weights) for it in items) >= 0
    control, cstats = awr_items(tok, rows, pairs, 0.1, 20.0, weighting="chosen_only")
    assert len(control) == 1 and control[0].weights == [1.0] * len(control[0].response)
