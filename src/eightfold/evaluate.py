"""Held-out evaluation: greedy decoding, exact final-answer accuracy (test error = 1 - accuracy),
pass@k from n samples per problem when ``eval.pass_k`` is set, and the teacher-forced accuracy
per position where the data source marks positions (the star graph)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eightfold.data.arithmetic import is_strictly_correct
from eightfold.data.examples import Example
from eightfold.generation import encode_prompt, generate
from eightfold.verify import is_correct


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    kind: str,
    max_new_tokens: int = 64,
    batch_size: int = 512,
    pass_k: Sequence[int] = (),
    sampling: dict | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of greedy completions; for procedural problems also strict (every step right);
    with ``pass_k``, pass@k for each k from ``sampling`` (n, temperature, top_p)."""
    prompts = [e.prompt for e in examples]
    completions = [
        c[0]
        for c in generate(
            model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, desc="eval"
        )
    ]
    correct = [is_correct(c, e.answer, kind) for c, e in zip(completions, examples)]
    out = {
        "test_accuracy": sum(correct) / len(examples),
        "test_size": len(examples),
        # one character per test problem, in test-set order: the analysis pairs two objectives
        # on the same problems (McNemar, paired bootstrap) from these
        "test_outcomes": "".join("1" if ok else "0" for ok in correct),
    }
    if all(e.problem is not None for e in examples):
        strict = [is_strictly_correct(e.problem, c) for c, e in zip(completions, examples)]
        out["test_strict_accuracy"] = sum(strict) / len(examples)
    out["test_error"] = 1.0 - out["test_accuracy"]
    if all("positions" in e.meta for e in examples):  # the star graph: the Clever-Hans signature
        out["test_position_accuracy"] = position_accuracy(model, tokenizer, examples, batch_size)
    if pass_k:
        s = dict(sampling or {})
        n, temperature, top_p = int(s["n"]), float(s["temperature"]), float(s["top_p"])
        if temperature == 0:  # greedy: every one of the n samples is the greedy completion
            samples = [[c] * n for c in completions]
        else:
            samples = generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                num_samples=n,
                batch_size=batch_size,
                seed=seed,
                desc="eval pass@k",
            )
        counts = [
            sum(is_correct(x, e.answer, kind) for x in xs) for xs, e in zip(samples, examples)
        ]
        for k in sorted(set(pass_k)):
            out[f"test_pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for c in counts]))
        out.update(pass_k_n=n, pass_k_temperature=temperature, pass_k_top_p=top_p)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem from n samples of which c are correct (Chen et al.
    2021): 1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which needs no
    binomial coefficient (they overflow floats from n ~ 1030 on)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@torch.no_grad()
def position_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    batch_size: int = 512,
) -> list[float]:
    """Teacher-forced accuracy per marked position: entry i is the fraction of examples whose
    i-th target (the token at character offset ``meta["positions"][i]`` of the solution) is the
    argmax of the model given the prompt and the true solution before it.

    On the star graph (positions = the path's nodes) a Clever-Hans model reads about 1 at every
    node but the first one after the source, and about 1/d there (docs/testbed.md#the-star-graph).
    """
    # 1. the full sequence of each example and the token indices of its targets (offsets to
    #    tokens through the fast tokenizer's offset mapping: one token per node for the char model)
    rows, targets = [], []
    for e in examples:
        enc = tokenizer(e.solution, add_special_tokens=False, return_offsets_mapping=True)
        start = {a: i for i, (a, _) in enumerate(enc["offset_mapping"])}
        prompt = encode_prompt(tokenizer, e.prompt)
        rows.append(prompt + enc["input_ids"])
        targets.append([len(prompt) + start[p] for p in e.meta["positions"]])
    width = max(len(t) for t in targets)
    hits, counts = np.zeros(width), np.zeros(width)
    # 2. right-padded batches (positions from 0 for every row); argmax at t-1 predicts token t
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for b in range(0, len(rows), batch_size):
        batch, batch_targets = rows[b : b + batch_size], targets[b : b + batch_size]
        length = max(len(r) for r in batch)
        ids = torch.full((len(batch), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        argmax = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1)
        argmax = argmax.cpu()
        for i, ts in enumerate(batch_targets):
            for j, t in enumerate(ts):
                hits[j] += bool(argmax[i, t - 1] == ids[i, t])
                counts[j] += 1
    model.train(was_training)
    return [round(float(h / c), 4) for h, c in zip(hits, counts)]
