"""Preference pairs: construction from samples, tokenisation, collation, cached reference log-probs.

A ``PreferencePair`` is (prompt, prefix, chosen, rejected). The prefix is solution shared by both
sides (per-step DPO: the steps before the pit); prompt + prefix are masked (labels -100), only
chosen / rejected tokens are scored. Prefix, chosen and rejected are ``Completion``s: the token
ids pi_sft sampled (scored as they are, never re-encoded from text) and their text (logs). Chosen and rejected rows go through ONE forward pass:
the batch is ``[chosen_1..chosen_B, rejected_1..rejected_B]`` (TRL's layout), right-padded, built
by the same ``collate_sft`` the SFT objective uses.

Reference log-probs (frozen pi_sft) are computed once per pair set, before training, and cached
under ``<cache>/ref_logps/`` keyed by pi_sft's fingerprint and the sha256 of the token ids: a
second epoch reads them from the dataset, a second run (another beta, loss type, lr) from disk.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from eightfold.data.cache import load_or_build
from eightfold.data.datamodule import collate_sft
from eightfold.generation import Completion, encode_prompt
from eightfold.objectives.base import sequence_logps
from eightfold.objectives.pi_sft import sample_completion
from eightfold.verify import split_steps

log = logging.getLogger(__name__)


NONE = Completion((), "")  # no shared prefix: a whole-solution pair


@dataclass
class PreferencePair:
    problem: int
    prompt: str
    prefix: Completion  # shared solution tokens after the prompt (masked), NONE for whole solutions
    chosen: Completion
    rejected: Completion
    chosen_eos: bool = True  # a complete solution ends with EOS
    rejected_eos: bool = True  # a negative cut after its pit does not
    meta: dict = field(default_factory=dict)


@dataclass
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def tokenize_pair(tokenizer, pair: PreferencePair) -> TokenizedPair:
    """The ids pi_sft sampled from: ``encode_prompt`` (the prompt as ``generate_ids`` and the
    rollouts encoded it) + the prefix's sampled ids; each side's sampled ids, + EOS when the side
    is a complete solution (SFT's rule; the one token that may not have been sampled, where a
    sample reached max_new_tokens)."""
    eos = [tokenizer.eos_token_id]
    return TokenizedPair(
        encode_prompt(tokenizer, pair.prompt) + list(pair.prefix.ids),
        list(pair.chosen.ids) + (eos if pair.chosen_eos else []),
        list(pair.rejected.ids) + (eos if pair.rejected_eos else []),
    )


def within_context(
    items: Sequence[TokenizedPair], context: int | None
) -> tuple[list[TokenizedPair], int]:
    """The pairs whose both sides fit the model's context (prompt + side <= context tokens), and
    how many did not. Generation and rollouts stop at the context, and a complete side gets its
    EOS appended after that (``tokenize_pair``), so a side can be one token too long to score."""
    if not context:
        return list(items), 0
    kept = [it for it in items if len(it.prompt) + max(len(it.chosen), len(it.rejected)) <= context]
    return kept, len(items) - len(kept)


def pairs_digest(items: Sequence[TokenizedPair]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(repr((it.prompt, it.chosen, it.rejected)).encode())
    return h.hexdigest()


def collate_pairs(
    items: Sequence[TokenizedPair], pad_id: int, pack_length: int | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask``/``labels`` of shape [2B, W]: chosen rows, then rejected rows
    (packed: sequences 0..B-1 chosen, B..2B-1 rejected, see ``collate_sft``)."""
    rows = [(it.prompt, it.chosen) for it in items] + [(it.prompt, it.rejected) for it in items]
    return collate_sft(rows, pad_id, pack_length)


class PreferenceDataset(Dataset):
    """Tokenised pairs with their cached reference log-probs."""

    def __init__(self, items: Sequence[TokenizedPair], ref: Sequence[tuple[float, float]]):
        if len(items) != len(ref):
            raise ValueError(f"{len(items)} pairs but {len(ref)} reference log-probs")
        self.items, self.ref = list(items), [tuple(map(float, r)) for r in ref]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[TokenizedPair, tuple[float, float]]:
        return self.items[i], self.ref[i]


def collate_preference(
    batch, pad_id: int, pack_length: int | None = None
) -> dict[str, torch.Tensor]:
    items = [b[0] for b in batch]
    out = collate_pairs(items, pad_id, pack_length)
    out["ref_chosen_logps"] = torch.tensor([b[1][0] for b in batch], dtype=torch.float32)
    out["ref_rejected_logps"] = torch.tensor([b[1][1] for b in batch], dtype=torch.float32)
    return out


@torch.no_grad()
def reference_logps(
    model,
    items: Sequence[TokenizedPair],
    pad_id: int,
    batch_size: int = 128,
    chunk_size: int | None = None,
) -> list[tuple[float, float]]:
    """Summed log-probs of chosen and rejected under ``model`` (frozen pi_sft), one pass."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        seq = sequence_logps(model, batch, chunk_size).float().cpu()
        b = len(chunk)
        out += list(zip(seq[:b].tolist(), seq[b:].tolist()))
    model.train(was_training)
    return out


def cached_reference_logps(
    model,
    items: Sequence[TokenizedPair],
    pad_id: int,
    cache_dir: Path,
    model_key: dict,
    batch_size: int = 128,
    chunk_size: int | None = None,
) -> tuple[list[tuple[float, float]], dict]:
    """``reference_logps`` through the dataset cache: computed at most once per (pi_sft, pairs)."""
    key = {"model": model_key, "pairs": pairs_digest(items), "n": len(items)}
    built: dict = {}

    def build():
        t0 = time.perf_counter()
        ref = reference_logps(model, items, pad_id, batch_size, chunk_size)
        built["time_s"] = round(time.perf_counter() - t0, 3)
        return [{"chosen": c, "rejected": r} for c, r in ref]

    records = load_or_build(
        cache_dir,
        "ref_logps",
        key,
        build,
        meta={"what": "summed completion log-probs under pi_sft"},
    )
    stats = {"ref_logps_cached": not built, "ref_logps_time_s": built.get("time_s")}
    return [(r["chosen"], r["rejected"]) for r in records], stats


def correct_solutions(samples) -> dict[int, list[Completion]]:
    """Problem index -> its correct self-samples, unique by their steps (the first sample of
    each), in sampling order; problems without one are absent."""
    positives: dict[int, list[Completion]] = {}
    for p, recs in samples.by_problem.items():
        uniq: dict[tuple[str, ...], Completion] = {}
        for r in recs:
            if r["correct"]:
                uniq.setdefault(tuple(split_steps(r["completion"])), sample_completion(r))
        if uniq:
            positives[p] = list(uniq.values())
    return positives


def plain_dpo_pairs(
    samples, negatives: Sequence[tuple[int, Completion]], seed: int
) -> tuple[list[PreferencePair], dict]:
    """Standard DPO (paper §3.3): chosen = a correct self-sample of the same problem, rejected =
    the whole negative; problems without a correct sample give no pair (no teacher fallback: it
    would add teacher positives through the back door, docs/objectives.md#where-the-defaults-come-from)."""
    rng = random.Random(f"dpo-pairs-{seed}")
    positives = correct_solutions(samples)
    pairs, skipped, cursor = [], 0, {}
    for p, neg in negatives:
        if p not in positives:
            skipped += 1
            continue
        options = positives[p]
        i = cursor.get(p, rng.randrange(len(options)))
        cursor[p] = (i + 1) % len(options)  # cycle through the positives of a problem
        ex = samples.examples[p]
        pairs.append(PreferencePair(p, ex.prompt, NONE, options[i], neg))
    return pairs, {"pairs_skipped_no_chosen": skipped}
