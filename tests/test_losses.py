"""DPO-family losses against closed forms computed by hand; prompt masking; AWR weights."""

from __future__ import annotations

import math

import pytest
import torch

from eightfold.data.datamodule import collate_sft
from eightfold.models import tiny_gpt
from eightfold.objectives.base import token_logps
from eightfold.objectives.losses import (
    LOSS_TYPES,
    awr_weights,
    dpo_loss,
    dpo_losses,
    nll_term,
    weighted_nll,
)
from eightfold.objectives.preference import TokenizedPair, collate_pairs


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


# One pair: policy chosen -1, rejected -3; reference -2, -2; beta 0.5.
# chosen logratio +1, rejected logratio -1, Delta = 2, beta*Delta = 1.
PC, PR, RC, RR, BETA = t(-1.0), t(-3.0), t(-2.0), t(-2.0), 0.5


def test_sigmoid_closed_form():
    # -log sigma(1) = log(1 + e^-1)
    assert dpo_loss(PC, PR, RC, RR, BETA).item() == pytest.approx(0.31326168751822286, abs=1e-12)
    assert dpo_loss(PC, PR, RC, RR, BETA, "sigmoid").item() == pytest.approx(
        softplus(-1.0), abs=1e-12
    )


def test_ipo_closed_form_summed_and_length_normalised():
    # without token counts: (Delta - 1/(2 beta))^2 = (2 - 1)^2
    assert dpo_loss(PC, PR, RC, RR, BETA, "ipo").item() == pytest.approx(1.0, abs=1e-12)
    # TRL's IPO: per-token mean logratios, chosen 1/2 tokens, rejected -1/4 tokens -> (0.75 - 1)^2
    loss = dpo_loss(PC, PR, RC, RR, BETA, "ipo", chosen_tokens=t(2), rejected_tokens=t(4))
    assert loss.item() == pytest.approx(0.0625, abs=1e-12)


def test_hinge_robust_sigmoid_norm_closed_forms():
    assert dpo_loss(PC, PR, RC, RR, BETA, "hinge").item() == pytest.approx(
        0.0, abs=1e-12
    )  # max(0, 1 - 1)
    assert dpo_loss(PC, PR, RC, RR, 0.25, "hinge").item() == pytest.approx(
        0.5, abs=1e-12
    )  # max(0, 1 - 0.5)
    e = 0.1  # [-(1-e) log s(1) + e log s(-1)] / (1 - 2e)
    expected = ((1 - e) * softplus(-1.0) - e * softplus(1.0)) / (1 - 2 * e)
    assert expected == pytest.approx(0.18826168751822285, abs=1e-12)
    assert dpo_loss(PC, PR, RC, RR, BETA, "robust", label_smoothing=e).item() == pytest.approx(
        expected, abs=1e-12
    )
    assert dpo_loss(PC, PR, RC, RR, BETA, "robust", label_smoothing=0.0).item() == pytest.approx(
        softplus(-1.0)
    )
    # length-normalised DPO: -log sigma(beta * 0.75)
    loss = dpo_loss(PC, PR, RC, RR, BETA, "sigmoid_norm", chosen_tokens=t(2), rejected_tokens=t(4))
    assert loss.item() == pytest.approx(softplus(-0.375), abs=1e-12)


def test_mean_over_pairs_rewards_and_gradient_sign():
    pc = t(-1.0, -5.0).requires_grad_()
    pr = t(-3.0, -4.0)
    rc, rr = t(-2.0, -5.0), t(-2.0, -5.0)
    losses, chosen_r, rejected_r = dpo_losses(pc, pr, rc, rr, 0.5)
    # pair 2: Delta = 0 - 1 = -1 -> -log sigma(-0.5)
    assert losses.tolist() == pytest.approx([softplus(-1.0), softplus(0.5)])
    assert dpo_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx(
        (softplus(-1.0) + softplus(0.5)) / 2
    )
    assert chosen_r.tolist() == pytest.approx([0.5, 0.0]) and rejected_r.tolist() == pytest.approx(
        [-0.5, 0.5]
    )
    dpo_loss(pc, pr, rc, rr, 0.5).backward()
    assert (pc.grad < 0).all()  # raising the chosen log-prob lowers the loss
    # d/dpc of mean(-log s(beta*Delta)) = -beta * s(-beta*Delta) / 2
    assert pc.grad.tolist() == pytest.approx(
        [-0.5 * (1 / (1 + math.e)) / 2, -0.5 * (1 / (1 + math.exp(-0.5))) / 2]
    )


def test_every_variant_is_finite_scalar_and_validated():
    for lt in LOSS_TYPES:
        kw = {"label_smoothing": 0.2} if lt == "robust" else {}
        loss = dpo_loss(PC, PR, RC, RR, BETA, lt, chosen_tokens=t(3), rejected_tokens=t(3), **kw)
        assert torch.isfinite(loss) and loss.dim() == 0
    with pytest.raises(ValueError, match="loss_type='nope' is not valid"):
        dpo_loss(PC, PR, RC, RR, BETA, "nope")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(PC, PR, RC, RR, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, BETA, "robust", label_smoothing=0.5)


def test_nll_term_and_awr_weights():
    logps = torch.tensor([[-1.0, -3.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    # two chosen sequences: log-prob sums -4 (2 tokens) and -2 (3 tokens) -> 6 nats over 5 tokens
    assert nll_term(torch.tensor([-4.0, -2.0]), torch.tensor([2.0, 3.0])).item() == pytest.approx(
        1.2
    )
    w = awr_weights(torch.tensor([0.0, -0.2, 0.1, 1.0]), beta=0.1, max_weight=20.0)
    assert w.tolist() == pytest.approx([1.0, math.exp(-2), math.exp(1), 20.0])
    weights = torch.tensor([[2.0, 0.5, 7.0]])
    assert weighted_nll(logps, weights, mask).item() == pytest.approx((2 * 1 + 0.5 * 3) / 2)


def test_masked_prompt_contributes_nothing_to_the_gradient():
    model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0)
    prompt = [tok.bos_token_id] + tok("a=3,b=a+2?b|", add_special_tokens=False)["input_ids"]
    chosen = tok("b=a+2=3+2=5\n#5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rejected = tok("b=a+2=3+2=6\n#6", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    short = [tok.bos_token_id] + tok("a=1?a|", add_special_tokens=False)["input_ids"]
    items = [
        TokenizedPair(prompt, chosen, rejected),
        TokenizedPair(short, chosen[:5], rejected[:7]),
    ]
    batch = collate_pairs(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # chosen rows then rejected rows: one forward pass
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    leaf = logits.detach().requires_grad_()

    def loss_of(lg: torch.Tensor) -> torch.Tensor:
        seq = token_logps(lg, batch["labels"])[0].sum(-1)
        return dpo_loss(seq[:2], seq[2:], torch.zeros(2), torch.zeros(2), 0.1)

    loss = loss_of(leaf)
    loss.backward()
    for row, p in enumerate([len(prompt), len(short)] * 2):
        # logits at positions 0..p-2 predict prompt tokens 1..p-1: masked, exactly zero gradient
        assert torch.count_nonzero(leaf.grad[row, : p - 1]) == 0
        assert torch.count_nonzero(leaf.grad[row, p - 1]) > 0  # the first response token is scored
    # and changing what the model says about the prompt (or the padding) changes nothing
    noisy = leaf.detach().clone()
    scored = batch["labels"][:, 1:] != -100
    noisy[:, :-1][~scored] += torch.randn_like(noisy[:, :-1][~scored]) * 10
    assert not torch.equal(noisy, leaf.detach())
    assert loss_of(noisy).item() == loss.item()
    # the same rows through collate_sft (the SFT path) carry identical labels: one masking rule
    sft = collate_sft([(prompt, chosen)], tok.pad_token_id)
    assert torch.equal(sft["labels"][0], batch["labels"][0, : sft["labels"].shape[1]])


def test_pairs_longer_than_the_context_are_dropped_before_scoring():
    """A rollout stops at the model's context and a complete side gets EOS appended, so a side can
    be one token past the last position embedding: such a pair is dropped (and counted), the
    rest are scored; without the filter the reference pass fails (index out of range)."""
    from eightfold.objectives.preference import reference_logps, within_context

    model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=16)
    context = model.config.max_position_embeddings
    assert context == 16
    fits = TokenizedPair([1] * 6, [2] * 10, [3] * 4)  # 16 tokens: the last position
    over = TokenizedPair([1] * 6, [2] * 4, [3] * 11)  # 17 tokens on the rejected side
    kept, dropped = within_context([fits, over, fits], context)
    assert kept == [fits, fits] and dropped == 1
    assert within_context([over], None) == ([over], 0)  # a model with no context length
    ref = reference_logps(model, kept, tok.pad_token_id)
    assert len(ref) == 2 and all(math.isfinite(x) for pair in ref for x in pair)
    with pytest.raises(IndexError):
        reference_logps(model, [over], tok.pad_token_id)
