"""objective=dpo: standard DPO against the frozen SFT model (paper §3.3, the control).

Data (``prepare``, before the trainer exists): pi_sft's self-generated samples
(``PiSft.samples``, shared with rft / step_dpo), the negatives selected by
``select_negatives``, each paired with a correct sample of the same problem (``plain_dpo_pairs``).
The policy starts from pi_sft's weights; pi_sft's reference log-probs are computed once and cached
(``preference.cached_reference_logps``); the frozen model is then dropped, training never calls it.
``prepare`` returns the pairs as a ``TrainData`` datamodule.

Training budget: ``objective.steps`` optimizer steps (conf/objective/common/budget.yaml), the
same as the matched control's (``dpo_control``: ``preference_weight: 0``, the NLL of the chosen
side alone), or ``objective.epochs`` passes over the pairs; ``train_steps`` tells train.py the
step limit (``trainer.max_steps`` keeps the SFT budget, so the SFT run this one starts from
resolves to the same directory). More passes than ``max_epochs`` over too few pairs are reported
(``budget_too_few_pairs``). The loss is ``preference_weight * DPO + nll_weight * NLL(chosen)``
(RPO with both at 1).

Reported: the mean log-ratio gap (chosen minus rejected, in nats, not times beta) and the reward
accuracy over the last epoch's steps, not the last batch.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from eightfold.objectives.base import (
    PolicyModule,
    TrainData,
    model_token_logps,
    sequence_sums,
    step_budget,
)
from eightfold.objectives.losses import LOSS_TYPES, dpo_losses, nll_term
from eightfold.objectives.preference import (
    PreferenceDataset,
    PreferencePair,
    cached_reference_logps,
    collate_preference,
    plain_dpo_pairs,
    tokenize_pair,
    within_context,
)

log = logging.getLogger("eightfold")


def falls_steadily(
    values: list[float], threshold: float, min_points: int = 5, fraction: float = 0.7
) -> bool:
    """True when ``values`` ended below ``-threshold`` and went down over most of the run: a
    smoothed series (window of 3) decreased in at least ``fraction`` of its steps."""
    if len(values) < min_points or values[-1] > -threshold:
        return False
    w = 3
    smooth = [
        sum(values[max(0, i - w + 1) : i + 1]) / len(values[max(0, i - w + 1) : i + 1])
        for i in range(len(values))
    ]
    downs = sum(b < a for a, b in zip(smooth, smooth[1:]))
    return downs >= fraction * (len(smooth) - 1)


class DPOModule(PolicyModule):
    name = "dpo"
    needs_pi_sft = True

    def __init__(
        self,
        model,
        tokenizer,
        lr: float = 3e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 2,
        min_lr_ratio: float = 0.0,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        nll_weight: float = 1.0,
        preference_weight: float = 1.0,
        batch_size: int = 32,
        ref_batch_size: int = 128,
        collapse_threshold: float = 1.0,
    ):
        super().__init__(model, tokenizer, lr, weight_decay, betas, warmup_steps, min_lr_ratio)
        if loss_type not in LOSS_TYPES:
            raise ValueError(
                f"objective.module.loss_type={loss_type!r} is not valid: expected one of {', '.join(LOSS_TYPES)}"
            )
        self.beta, self.loss_type, self.label_smoothing = (
            float(beta),
            loss_type,
            float(label_smoothing),
        )
        self.nll_weight, self.preference_weight = float(nll_weight), float(preference_weight)
        self.batch_size, self.ref_batch_size = int(batch_size), int(ref_batch_size)
        self.collapse_threshold = float(collapse_threshold)
        self.train_steps: int | None = None
        self._fields: dict = {}
        self._chosen_logratios: list[float] = []
        self._gaps: list[float] = []  # per step: mean (chosen - rejected) log-ratio, nats
        self._accuracies: list[float] = []  # per step: fraction of pairs with gap > 0
        self._steps_per_epoch = 1
        self._warned = False

    # -- data ---------------------------------------------------------------
    def build_pairs(self, cfg, pi_sft) -> tuple[list[PreferencePair], dict]:
        """Standard DPO pairs: (correct self-sample, incorrect self-sample) of the same problem."""
        negatives = pi_sft.negatives()
        pairs, stats = plain_dpo_pairs(pi_sft.samples(), negatives, int(cfg.seed))
        return pairs, {"negatives_used": len(negatives), **stats}

    def prepare(self, cfg, data, pi_sft) -> TrainData:
        # 1. the policy starts as pi_sft (the same object train.py evaluates afterwards)
        self.model.load_state_dict(pi_sft.model.state_dict())
        # 2. pairs from pi_sft's samples (step_dpo: from its rollouts), tokenised once
        pairs, stats = self.build_pairs(cfg, pi_sft)
        items, too_long = within_context(
            [tokenize_pair(self.tokenizer, p) for p in pairs],
            getattr(self.model.config, "max_position_embeddings", None),
        )
        # 3. reference log-probs under frozen pi_sft, cached; then pi_sft is not needed again
        ref, ref_stats = cached_reference_logps(
            pi_sft.model,
            items,
            self.tokenizer.pad_token_id,
            pi_sft.cache,
            pi_sft.fingerprint,
            self.ref_batch_size,
            chunk_size=self.logits_chunk_size,
        )
        pi_sft.release()
        # 4. the budget: the same steps as the matched control, whatever the number of pairs
        self.train_steps, budget = step_budget(cfg.objective, len(items), self.batch_size)
        self._steps_per_epoch = max(1, math.ceil(len(items) / self.batch_size))
        if not items:
            log.warning(
                "%s: no preference pairs could be built; the policy stays pi_sft", self.name
            )
        self._fields = {
            **stats,
            "pairs_skipped_too_long": too_long,
            "pairs": len(items),
            **budget,
            **ref_stats,
            **pi_sft.stats(),
        }
        collate = functools.partial(
            collate_preference, pad_id=self.tokenizer.pad_token_id, pack_length=self.pack_length
        )
        return TrainData(PreferenceDataset(items, ref), self.batch_size, int(cfg.seed), collate)

    def result_fields(self) -> dict:
        return dict(self._fields)

    # -- training ------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tok, mask = model_token_logps(self.model, batch, self.logits_chunk_size)
        seq, n_tok = sequence_sums(tok, batch), sequence_sums(mask.to(tok.dtype), batch)
        b = batch["ref_chosen_logps"].shape[0]
        pc, pr = seq[:b], seq[b:]
        ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        losses, rc, rr = dpo_losses(
            pc,
            pr,
            ref_c,
            ref_r,
            self.beta,
            self.loss_type,
            label_smoothing=self.label_smoothing,
            chosen_tokens=n_tok[:b],
            rejected_tokens=n_tok[b:],
        )
        loss = self.preference_weight * losses.mean()
        if self.nll_weight:
            loss = loss + self.nll_weight * nll_term(seq[:b], n_tok[:b])
        margin = (rc - rr).mean()
        gap = ((pc.detach() - ref_c) - (pr.detach() - ref_r)).mean()
        chosen_logratio = (pc.detach() - ref_c).mean()
        metrics = {
            "train/reward_margin": margin,
            "train/reward_accuracy": (rc > rr).float().mean(),
            "train/chosen_logp": pc.detach().mean(),
            "train/rejected_logp": pr.detach().mean(),
            "train/chosen_logratio": chosen_logratio,
        }
        self.log_dict(metrics, prog_bar=False, batch_size=b)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self._gaps.append(float(gap))
        self._accuracies.append(float((rc > rr).float().mean()))
        self._chosen_logratios.append(float(chosen_logratio))
        self._check_collapse()
        return loss

    def _check_collapse(self) -> None:
        if not self._warned and falls_steadily(self._chosen_logratios, self.collapse_threshold):
            self._warned = True
            log.warning(
                "%s: the chosen log-prob has fallen steadily (now %.2f nats below pi_sft per sequence after %d "
                "steps): the collapse in docs/objectives.md#collapse-guard (both log-probs fall, greedy output degenerates). "
                "Consider fewer epochs, a lower lr, or objective.module.nll_weight>0.",
                self.name,
                self._chosen_logratios[-1],
                len(self._chosen_logratios),
            )

    # The per-step statistics live in the checkpoint: a resumed run reports the same last-epoch
    # means and collapse verdict as the uninterrupted one.
    _STATS_KEY = "eightfold_dpo_stats"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[self._STATS_KEY] = {
            "gaps": list(self._gaps),
            "accuracies": list(self._accuracies),
            "chosen_logratios": list(self._chosen_logratios),
            "warned": self._warned,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stats = checkpoint.get(self._STATS_KEY)
        if stats is not None:
            self._gaps = list(stats["gaps"])
            self._accuracies = list(stats["accuracies"])
            self._chosen_logratios = list(stats["chosen_logratios"])
            self._warned = bool(stats["warned"])

    def on_train_end(self) -> None:
        # over the last epoch's steps (the last pass over every pair), not the last batch
        last = slice(-self._steps_per_epoch, None)
        lr, gaps, accs = self._chosen_logratios, self._gaps[last], self._accuracies[last]
        self._fields.update(
            {
                "logratio_gap_last_epoch": round(sum(gaps) / len(gaps), 4) if gaps else None,
                "reward_accuracy_last_epoch": round(sum(accs) / len(accs), 4) if accs else None,
                "chosen_logratio_first": lr[0] if lr else None,
                "chosen_logratio_final": lr[-1] if lr else None,
                "collapse_warning": self._warned or falls_steadily(lr, self.collapse_threshold),
            }
        )
