"""The rollout engine: M sampled continuations per step prefix of a negative, cheaply.

What it computes (the estimators and the first pit are in
:mod:`eightfold.objectives.step_values`, which reads these counts):

* A negative y = (y_1 .. y_L) is split with ``verify.split_steps`` (the answer line is step L).
  Prefix i = the prompt followed by the first i steps, i = 0..L, cut from the negative's sampled
  token ids (``step_cuts``: prefix i ends at the token that ends step i's line); rollouts continue
  from those ids. Prefix L is the whole (wrong) solution: its value is its reward, 0, without
  any rollout.
* For each scored prefix: how many of M rollouts (sampled from pi_sft at ``temperature`` /
  ``top_p``) end in a correct solution (``verify.is_correct`` on the decoded prefix and
  continuation), the per-rollout flags, and up to ``keep_correct`` unique correct continuations
  as sampled ids with their text (the chosen candidates of per-step DPO).

Cost and how it is cut:

* early stop: prefixes of a negative are scored left to right and scoring stops at the first
  dead prefix (0 of M correct): later prefixes are taken as dead too (V = 0), none is rolled out.
* identical prefixes (the same token ids: the bare prompt shared by all negatives of a problem,
  common first steps) are rolled out once.
* prefix reuse: the M rollouts of one prefix share it: one forward pass over the prefix fills
  the KV cache, which is then expanded M times (``share_prefix=True``). ``share_prefix=False`` is
  the naive path that feeds the prefix M times (what ``generate(num_return_sequences=M)`` does;
  HF generate does no prefix sharing).
* sampling noise is drawn per rollout from its own seeded stream (key = seed, prompt, prefix,
  rollout index), by inverse-CDF sampling, so a rollout's tokens do not depend on batching,
  ordering, deduplication or prefix sharing: the shared and naive paths give the same tokens
  (tests/test_rollouts.py), up to float rounding of logits at a CDF boundary.

A faster engine (vLLM, SGLang) would plug in at ``sample_continuations``: prefix ids in, M
continuation ids per prefix out. None ships: an engine is added with a test that runs it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eightfold.generation import Completion, encode_prompt, left_pad, progress_bar
from eightfold.verify import is_correct, join_steps, split_steps

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------
# the sampler: batched KV-cache decoding with per-rollout noise and optional prefix sharing


def rollout_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _uniforms(seeds: Sequence[int], length: int) -> torch.Tensor:
    out = torch.empty(len(seeds), length)
    g = torch.Generator()
    for r, s in enumerate(seeds):
        g.manual_seed(s)
        out[r] = torch.rand(length, generator=g)
    return out


def _choose(
    logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """One token per row by inverse-CDF sampling with the row's own uniform ``u`` (greedy at T=0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # keep the tokens that reach top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel,
    prefixes: Sequence[Sequence[int]],
    num_samples: int,
    max_new_tokens: int,
    *,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
    share_prefix: bool = True,
    batch_size: int = 1024,
) -> list[list[list[int]]]:
    """``num_samples`` continuations (token ids, without EOS) of each prefix.

    Rollout j of prefix p draws its noise from the stream ``rollout_seed(seeds[p], j)``; the
    result does not depend on ``batch_size`` or ``share_prefix``. With ``share_prefix`` the
    prefix is run once and its KV cache is repeated ``num_samples`` times.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seeds = list(seeds) if seeds is not None else list(range(len(prefixes)))
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    per_chunk = max(1, batch_size // num_samples)
    out: list[list[list[int]]] = []
    try:
        for start in range(0, len(prefixes), per_chunk):
            chunk = prefixes[start : start + per_chunk]
            chunk_seeds = seeds[start : start + per_chunk]
            out += _decode_chunk(
                model,
                chunk,
                chunk_seeds,
                num_samples,
                max_new_tokens,
                limit,
                eos_token_id,
                pad_token_id,
                temperature,
                top_p,
                share_prefix,
                device,
            )
    finally:
        model.train(was_training)
    return out


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x names the KV cache ``cache``; older versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_chunk(
    model,
    prefixes,
    seeds,
    m,
    max_new_tokens,
    limit,
    eos_id,
    pad_id,
    temperature,
    top_p,
    share_prefix,
    device,
) -> list[list[list[int]]]:
    lengths = torch.tensor([len(p) for p in prefixes], dtype=torch.long).repeat_interleave(m)
    budgets = [
        max_new_tokens if limit is None else max(0, min(max_new_tokens, limit - len(p)))
        for p in prefixes
    ]
    budget = torch.tensor(budgets, dtype=torch.long).repeat_interleave(m)
    rows = len(prefixes) * m
    steps = max(budgets) if budgets else 0
    results: list[list[int]] = [[] for _ in range(rows)]
    if steps == 0:
        return [results[i * m : (i + 1) * m] for i in range(len(prefixes))]
    noise = _uniforms([rollout_seed(s, j) for s in seeds for j in range(m)], steps).to(device)

    if share_prefix:
        ids, mask = (t.to(device) for t in left_pad(prefixes, pad_id))
    else:
        ids, mask = (
            t.to(device) for t in left_pad([p for p in prefixes for _ in range(m)], pad_id)
        )
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_arg = _cache_kwarg(model)
    outputs = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = getattr(outputs, cache_arg)
    logits = outputs.logits[:, -1].float()
    if share_prefix:  # one prefill per prefix, then M copies of its cache
        cache.batch_repeat_interleave(m)
        logits = logits.repeat_interleave(m, dim=0)
        mask = mask.repeat_interleave(m, dim=0)

    alive = torch.arange(rows)
    lengths, budget = lengths.to(device), budget.to(device)
    for t in range(steps):
        tokens = _choose(logits, noise[alive, t], temperature, top_p)
        done = (tokens == eos_id) | (budget[alive] <= t + 1)
        for r, tok in zip(alive.tolist(), tokens.tolist()):
            if tok != eos_id and len(results[r]) < budgets[r // m]:
                results[r].append(tok)
        keep = (~done).nonzero().squeeze(-1)
        if keep.numel() == 0:
            break
        if keep.numel() < alive.numel():
            cache.batch_select_indices(keep)
            mask, tokens = mask[keep], tokens[keep]
            alive = alive[keep.cpu()]
        mask = torch.cat(
            [mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1
        )
        position = (lengths[alive] + t).unsqueeze(-1)
        outputs = model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **{cache_arg: cache},
        )
        cache = getattr(outputs, cache_arg)
        logits = outputs.logits[:, -1].float()
    return [results[i * m : (i + 1) * m] for i in range(len(prefixes))]


# -----------------------------------------------------------------------------
# step boundaries in token ids


def complete_lines(text: str) -> int:
    """Non-empty lines of ``text`` that a newline has ended (the steps a prefix holds)."""
    return sum(1 for line in text.split("\n")[:-1] if line.strip())


def step_cuts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], steps: int) -> list[int]:
    """Where each step prefix ends in a completion's ids: ``cuts[i]`` = the tokens of prefix i,
    i = 0..steps (``cuts[steps]`` = all of them).

    Prefix i is the shortest run of tokens whose text holds i complete steps (step i's line
    and the newline that ends it): the boundary is the token where the step's line ends. With
    one token per character this is exactly ``prefix_text(steps, i)`` of a solution written one
    step per line; a token that ends one line and starts the next goes with the earlier step.
    Found by bisection over decoded prefixes (about log2(len) decodes per step).
    """
    ids = list(ids)
    cuts = [0]
    for i in range(1, steps):
        lo, hi = cuts[-1], len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if complete_lines(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= i:
                hi = mid
            else:
                lo = mid + 1
        cuts.append(lo)
    return cuts + [len(ids)] if steps > 0 else [0]


# -----------------------------------------------------------------------------
# rollouts of negatives with early stop


@dataclass
class NegativeValues:
    """What the rollouts of one negative produced (JSON-able through ``to_record``)."""

    problem: int  # index of the problem in the example list
    text: str  # the negative solution
    steps: list[str]
    counts: list[int] = field(
        default_factory=list
    )  # correct rollouts per scored prefix 0..len(counts)-1
    flags: list[list[bool]] = field(default_factory=list)  # per scored prefix, per rollout
    correct: list[list[Completion]] = field(
        default_factory=list
    )  # unique correct continuations (sampled ids and text) per scored prefix
    m: int = 0
    ids: tuple[int, ...] = ()  # the negative's sampled token ids (after the prompt, no EOS)
    cuts: list[int] = field(default_factory=list)  # step_cuts: prefix i = ids[: cuts[i]]

    def prefix_ids(self, i: int) -> tuple[int, ...]:
        """The completion tokens of prefix i (the first i steps, as sampled)."""
        return tuple(self.ids[: self.cuts[i]])

    def piece(self, i: int, j: int | None = None) -> tuple[int, ...]:
        """The tokens of steps i+1..j (0-based steps i..j-1; ``j=None``: to the end)."""
        return tuple(self.ids[self.cuts[i] : self.cuts[j] if j is not None else None])

    def to_record(self) -> dict:
        return {
            "problem": self.problem,
            "text": self.text,
            "steps": self.steps,
            "counts": self.counts,
            "flags": ["".join("1" if x else "0" for x in f) for f in self.flags],
            "correct": [[{"text": c.text, "ids": list(c.ids)} for c in cs] for cs in self.correct],
            "m": self.m,
            "ids": list(self.ids),
            "cuts": self.cuts,
        }

    @classmethod
    def from_record(cls, r: dict) -> NegativeValues:
        return cls(
            r["problem"],
            r["text"],
            list(r["steps"]),
            list(r["counts"]),
            [[c == "1" for c in f] for f in r["flags"]],
            [[Completion(tuple(c["ids"]), c["text"]) for c in cs] for cs in r["correct"]],
            r["m"],
            tuple(r["ids"]),
            list(r["cuts"]),
        )


def prefix_text(steps: Sequence[str], i: int) -> str:
    """The solution text of prefix i (what follows the prompt): the first i steps and a newline."""
    return join_steps(list(steps[:i])) + "\n" if i > 0 else ""


@dataclass
class RolloutStats:
    rollouts: int = 0  # continuations generated
    prefixes: int = 0  # distinct prefixes rolled out
    naive_rollouts: int = 0  # what every prefix of every negative x M would have cost
    rounds: int = 0
    time_s: float = 0.0
    tokens: int = 0  # generated tokens

    def as_dict(self) -> dict:
        return {
            "rollouts": self.rollouts,
            "rollout_prefixes": self.prefixes,
            "rollouts_without_reuse": self.naive_rollouts,
            "rollout_rounds": self.rounds,
            "rollout_time_s": round(self.time_s, 3),
            "rollout_tokens": self.tokens,
            "rollouts_per_s": round(self.rollouts / self.time_s, 1) if self.time_s > 0 else None,
        }


def negative_values(
    tokenizer: PreTrainedTokenizerBase, problem: int, negative: Completion | str, m: int
) -> NegativeValues:
    """An unscored negative: its steps and their token boundaries in its sampled ids (a negative
    given as text, written by hand, is tokenised once)."""
    c = negative if isinstance(negative, Completion) else Completion.of_text(tokenizer, negative)
    steps = split_steps(c.text)
    return NegativeValues(
        problem, c.text, steps, m=m, ids=tuple(c.ids), cuts=step_cuts(tokenizer, c.ids, len(steps))
    )


def rollout_settings(o) -> dict:
    """``rollout_negatives``' keyword arguments from an objective's rollout block
    (conf/objective/common/rollouts.yaml): one place, so the negatives and the positives of the
    spurious-step analysis are rolled out alike."""
    return {
        "rollouts": int(o.rollouts),
        "temperature": float(o.rollout_temperature),
        "top_p": float(o.rollout_top_p),
        "max_new_tokens": int(o.max_new_tokens),
        "share_prefix": bool(o.prefix_reuse),
        "batch_size": int(o.rollout_batch_size),
    }


def rollout_negatives(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    negatives: Sequence[tuple[int, Completion | str]],
    prompts: Sequence[str],
    answers: Sequence[str],
    kind: str,
    *,
    rollouts: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    early_stop: bool = True,
    share_prefix: bool = True,
    batch_size: int = 1024,
    keep_correct: int = 4,
) -> tuple[list[NegativeValues], RolloutStats]:
    """Score the step prefixes of each negative ``(problem index, sampled completion)`` by MC
    rollouts from its token ids.

    Prefixes are scored in rounds (round r = prefix r of every negative still alive); a prefix
    that several negatives share (the same ids) is rolled out once per run.
    """
    if rollouts <= 0:
        raise ValueError(f"rollouts={rollouts!r} is not valid: expected a positive integer, e.g. 8")
    stats = RolloutStats()
    t0 = time.perf_counter()
    items = [negative_values(tokenizer, p, c, rollouts) for p, c in negatives]
    stats.naive_rollouts = sum(len(n.steps) for n in items) * rollouts
    scored: dict[tuple[int, tuple[int, ...]], tuple[int, list[bool], list[Completion]]] = {}
    alive = [n for n in items if len(n.steps) > 0]
    prompt_ids: dict[int, list[int]] = {}
    # a count, not a bar: early stops make the total unknown
    bar = progress_bar(desc="rollouts", unit="prefix")
    while alive:
        stats.rounds += 1
        need: dict[tuple[int, tuple[int, ...]], None] = {}
        for n in alive:
            key = (n.problem, n.prefix_ids(len(n.counts)))
            if key not in scored:
                need[key] = None
        keys = list(need)
        if keys:
            for p, _ in keys:
                if p not in prompt_ids:
                    prompt_ids[p] = encode_prompt(tokenizer, prompts[p])
            texts = [tokenizer.decode(list(ids), skip_special_tokens=True) for _, ids in keys]
            seeds = [rollout_seed(seed, prompts[p], t) for (p, _), t in zip(keys, texts)]
            conts = sample_continuations(
                model,
                [prompt_ids[p] + list(ids) for p, ids in keys],
                rollouts,
                max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                temperature=temperature,
                top_p=top_p,
                seeds=seeds,
                share_prefix=share_prefix,
                batch_size=batch_size,
            )
            for (p, ids), samples in zip(keys, conts):
                # the verifier reads the decoded prefix and continuation, decoded together
                full = [list(ids) + s for s in samples]
                flags = [
                    is_correct(t, answers[p], kind)
                    for t in (
                        tokenizer.batch_decode(full, skip_special_tokens=True) if full else []
                    )
                ]
                unique = list(dict.fromkeys(tuple(s) for s, f in zip(samples, flags) if f))
                correct = [Completion.of_ids(tokenizer, s) for s in unique[:keep_correct]]
                scored[(p, ids)] = (sum(flags), flags, correct)
                stats.rollouts += len(samples)
                stats.tokens += sum(len(s) for s in samples)
            stats.prefixes += len(keys)
            bar.update(len(keys))
        still = []
        for n in alive:
            count, flags, correct = scored[(n.problem, n.prefix_ids(len(n.counts)))]
            n.counts.append(count)
            n.flags.append(flags)
            n.correct.append(correct)
            dead = count == 0 and early_stop
            if not dead and len(n.counts) < len(n.steps):
                still.append(n)
        alive = still
    bar.close()
    stats.time_s = time.perf_counter() - t0
    return items, stats
