"""Batched decoding with a KV cache: evaluation, pi_sft's samples and model teachers decode here;
rollouts use the prefix-sharing engine in :mod:`eightfold.rollouts` with the same padding and
token rules.

Token ids are the record of what a model sampled: ``generate_ids`` returns each completion's ids
with its text, and every objective trains on those ids (a BPE tokenizer need not give the same
ids back when the text is encoded again, least of all at the join of prompt and completion).
The text is for the verifier, logs and caches (docs/objectives.md#token-ids-what-is-scored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt token ids, with BOS in front when the tokenizer has one (one rule for train and decode)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str | Sequence[int]) -> list[int]:
    """Response ids + EOS: text (a teacher's solution) is tokenised; ids (a sampled completion)
    are kept as they were sampled."""
    ids = (
        tokenizer(response, add_special_tokens=False)["input_ids"]
        if isinstance(response, str)
        else list(response)
    )
    return ids + [tokenizer.eos_token_id]


@dataclass(frozen=True)
class Completion:
    """Sampled tokens after a prompt (or a prefix): ``ids`` as drawn (EOS excluded) and ``text``,
    their decoding (special tokens skipped), which is what the verifier reads."""

    ids: tuple[int, ...]
    text: str

    @classmethod
    def of_ids(cls, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> Completion:
        return cls(tuple(ids), tokenizer.decode(list(ids), skip_special_tokens=True))

    @classmethod
    def of_text(cls, tokenizer: PreTrainedTokenizerBase, text: str) -> Completion:
        """A completion written as text (a test's or a benchmark's negative): tokenised once."""
        return cls(tuple(tokenizer(text, add_special_tokens=False)["input_ids"]), text)


def completion_ids(row: Sequence[int], eos_id: int) -> list[int]:
    """The sampled ids of one generated row: up to its first EOS (after it, ``generate`` pads)."""
    row = list(row)
    return row[: row.index(eos_id)] if eos_id in row else row


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and their attention mask: every prompt ends at the last column, where
    decoding continues (evaluation, samples and rollouts pad the same way)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


_PROGRESS = {"on": False}


def show_progress(on: bool) -> None:
    """Progress bars of the decoding loops (evaluation, pi_sft's samples, rollouts) for this
    process; the app turns them on for a terminal unless ``trainer.enable_progress_bar=false``."""
    _PROGRESS["on"] = bool(on)


def progress_bar(iterable=None, *, desc: str, on: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar that is shown only where progress bars are on (``on=None``: this process's setting)."""
    show = _PROGRESS["on"] if on is None else on
    return tqdm(iterable, desc=desc, disable=not show, leave=False, dynamic_ncols=True, **kwargs)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    **kwargs,
) -> list[list[str]]:
    """``num_samples`` completions per prompt, as text (``generate_ids`` with the ids dropped)."""
    outs = generate_ids(model, tokenizer, prompts, max_new_tokens, **kwargs)
    return [[c.text for c in cs] for cs in outs]


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    batch_size: int = 512,
    seed: int | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> list[list[Completion]]:
    """``num_samples`` completions per prompt (the ids after ``encode_prompt(prompt)``, up to EOS).

    Prompts are left-padded with an attention mask (GPT-2 derives positions from it), decoded
    in batches with ``model.generate``'s KV cache. Sampling is seeded without touching the
    caller's RNG stream, so the same call gives the same samples.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[list[Completion]] = []
    per_batch = max(1, batch_size // num_samples)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        starts = range(0, len(encoded), per_batch)
        bar = progress_bar(starts, desc=desc or ("sample" if do_sample else "decode"), on=progress)
        for start in bar:
            ids, mask = left_pad(encoded[start : start + per_batch], tokenizer.pad_token_id)
            # Never decode past the model's context (a tiny model's n_positions is small).
            limit = getattr(model.config, "max_position_embeddings", None)
            new_tokens = min(max_new_tokens, limit - ids.shape[1]) if limit else max_new_tokens
            kwargs = dict(do_sample=do_sample, num_return_sequences=num_samples)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **kwargs,
            )
            rows = [
                completion_ids(r, tokenizer.eos_token_id) for r in gen[:, ids.shape[1] :].tolist()
            ]
            texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
            done = [Completion(tuple(r), t) for r, t in zip(rows, texts)]
            out += [done[i : i + num_samples] for i in range(0, len(done), num_samples)]
    model.train(was_training)
    return out
