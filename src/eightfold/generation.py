"""Batched decoding with a KV cache: evaluation, pi_sft's samples and model teachers decode here;
rollouts use the prefix-sharing engine in :mod:`eightfold.rollouts` with the same padding and
token rules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt token ids, with BOS in front when the tokenizer has one (one rule for train and decode)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


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


@torch.no_grad()
def generate(
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
) -> list[list[str]]:
    """``num_samples`` completions per prompt (text after the prompt, up to EOS).

    Prompts are left-padded with an attention mask (GPT-2 derives positions from it), decoded
    in batches with ``model.generate``'s KV cache. Sampling is seeded without touching the
    caller's RNG stream, so the same call gives the same samples.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[list[str]] = []
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
            texts = tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
            out += [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
    model.train(was_training)
    return out
