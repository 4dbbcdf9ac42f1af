"""Preference and weighted-regression losses, as pure tensor functions (closed forms in the tests).

Notation (TRL's): for a pair, logratio = log pi_theta(y|x) - log pi_ref(y|x), summed over the
completion tokens; Delta = chosen logratio - rejected logratio.

    sigmoid       -log sigma(beta * Delta)                      (DPO, Rafailov et al.; the paper's loss)
    ipo           (Delta_bar - 1/(2 beta))^2                    (IPO; Delta_bar from per-token MEAN logratios
                                                                 when token counts are given, as TRL does)
    hinge         max(0, 1 - beta * Delta)                      (SLiC)
    robust        [-(1-e) log sigma(beta Delta) + e log sigma(-beta Delta)] / (1 - 2e)   (rDPO, e = label_smoothing)
    sigmoid_norm  -log sigma(beta * Delta_bar)                  (length-normalised DPO, open-instruct dpo_norm)

An NLL term on the chosen side (RPO, TRL ``rpo_alpha``) is added by the module, see ``nll_term``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eightfold.config import LOSS_TYPES

# Loss types whose logratios are per-token means when token counts are passed.
LENGTH_NORMALISED = ("ipo", "sigmoid_norm")


def dpo_losses(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    *,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards ``beta * logratio`` of chosen and rejected.

    ``*_tokens`` (number of scored tokens per sequence) turn the logratios of the length-normalised
    types (ipo, sigmoid_norm) into per-token means; other types ignore them. The rewards are
    always the summed ones, so margins are comparable across loss types.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} is not valid: expected one of {', '.join(LOSS_TYPES)}"
        )
    if beta <= 0:
        raise ValueError(f"beta={beta!r} is not valid: expected a positive number, e.g. 0.1")
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    rewards = beta * chosen.detach(), beta * rejected.detach()
    if loss_type in LENGTH_NORMALISED and chosen_tokens is not None and rejected_tokens is not None:
        chosen = chosen / chosen_tokens.clamp(min=1).to(chosen.dtype)
        rejected = rejected / rejected_tokens.clamp(min=1).to(rejected.dtype)
    delta = chosen - rejected
    if loss_type in ("sigmoid", "sigmoid_norm"):
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # robust
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing={label_smoothing!r} is not valid for robust: expected 0 <= e < 0.5"
            )
        e = label_smoothing
        losses = (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (
            1 - 2 * e
        )
    return losses, rewards[0], rewards[1]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    **kwargs,
) -> torch.Tensor:
    """Mean DPO-family loss over the pairs, a scalar tensor (see ``dpo_losses`` for the variants)."""
    losses, _, _ = dpo_losses(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
        loss_type,
        **kwargs,
    )
    return losses.mean()


def nll_term(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """RPO's extra term: mean negative log-likelihood per scored chosen token, from each chosen
    sequence's summed log-prob and its number of scored tokens (padded or packed batches alike)."""
    return -chosen_logps.sum() / chosen_tokens.sum().clamp(min=1)


def awr_weights(advantages: torch.Tensor, beta: float, max_weight: float = 20.0) -> torch.Tensor:
    """exp(A / beta), clipped at ``max_weight`` (Peng et al. 2019); the optimum of the per-step
    KL-regularised objective is pi* ∝ pi_sft * exp(A / beta) (Setlur et al., Thm 6.1)."""
    if beta <= 0:
        raise ValueError(f"beta={beta!r} is not valid: expected a positive number, e.g. 0.1")
    return torch.exp(advantages / beta).clamp(max=max_weight)


def weighted_nll(
    token_logps: torch.Tensor,
    token_weights: torch.Tensor,
    mask: torch.Tensor,
    normalise: str = "tokens",
) -> torch.Tensor:
    """sum_t w_t * (-log p_t), divided by the number of scored tokens (``tokens``) or by
    sum_t |w_t| (``weights``: the step size then does not depend on how many large or negative
    weights a batch holds). A negative weight pushes that token's probability down."""
    total = -(token_logps * token_weights * mask).sum()
    if normalise == "weights":
        return total / (token_weights.abs() * mask).sum().clamp(min=1e-8)
    return total / mask.sum().clamp(min=1)
