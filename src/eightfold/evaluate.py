"""Held-out evaluation: greedy decoding, exact final-answer accuracy (test error = 1 - accuracy),
and pass@k from n samples per problem when ``eval.pass_k`` is set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eightfold.data.arithmetic import is_strictly_correct
from eightfold.data.examples import Example
from eightfold.generation import generate
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
