"""Objectives: what a run trains, each a LightningModule that follows one written contract.

The contract (in the spirit of torchtune's recipe interface: it documents, it shares no code):
``train.py`` reads nothing of an objective but what :class:`Objective` lists, in this order::

    module = instantiate(cfg.objective.module, model=model, tokenizer=tokenizer)
    pi_sft = PiSft(cfg, data, ensure_sft_model(cfg)) if module.needs_pi_sft else None
    train_data = module.prepare(cfg, data, pi_sft) or data
    trainer = Trainer(..., max_steps=module.train_steps or cfg.trainer.max_steps)
    trainer.fit(module, datamodule=train_data)
    result = {..., **module.result_fields()}

Adding an objective is one module here and one config file (``conf/objective/x.yaml``, whose
``module._target_`` names the class): docs/contributing.md has the checklist. The modules:

    sft        SFTModule     teacher solutions, next-token loss (the baseline; pi_sft itself)
    rft        RFTModule     pi_sft's verified-correct samples, SFT loss (paper §3.2)
    dpo        DPOModule     (correct, incorrect) self-samples, DPO vs frozen pi_sft (§3.3)
    step_dpo   StepDPOModule pairs at the first pit of each negative, DPO (§4, Algorithm 1)
    awr        AWRModule     the same steps weighted by exp(A/beta) (the optimum of Thm 6.1)

Shared pieces, imported by the modules above and by nothing below them: ``base`` (the policy,
AdamW schedule, token log-probs, :class:`~eightfold.objectives.base.TrainData`), ``losses``,
``pi_sft`` (pi_sft with its cached samples and rollouts), ``preference`` (pairs, reference
log-probs), ``step_values`` (values, first pit, per-step pairs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the package stays cheap
    import lightning as L
    from omegaconf import DictConfig

    from eightfold.data.datamodule import MathDataModule
    from eightfold.objectives.pi_sft import PiSft


@runtime_checkable
class Objective(Protocol):
    """What ``train.py`` needs of an objective (a ``LightningModule`` built from
    ``cfg.objective.module``)."""

    name: str
    """Its name in run directories and ``result.json`` (``objective.name`` in the config wins)."""

    needs_pi_sft: bool
    """True: ``train.py`` trains or finds the SFT run of the same (data, model, seed) first and
    passes it to :meth:`prepare` as a :class:`~eightfold.objectives.pi_sft.PiSft`."""

    train_steps: int | None
    """Optimizer steps to train for, set by :meth:`prepare` (``None``: ``trainer.max_steps``)."""

    def prepare(
        self, cfg: DictConfig, data: MathDataModule, pi_sft: PiSft | None
    ) -> L.LightningDataModule | None:
        """Build this objective's training data before the trainer exists (load pi_sft's weights
        into the policy, sample, roll out, pair, cache reference log-probs). Return the datamodule
        to train on, or ``None`` to train on ``data`` as it is (SFT)."""
        ...

    def result_fields(self) -> dict:
        """Fields merged into ``result.json`` after training (data counts, budget, statistics)."""
        ...
