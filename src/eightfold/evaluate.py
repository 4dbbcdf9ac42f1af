"""Held-out evaluation: greedy decoding, exact final-answer accuracy (test error = 1 - accuracy)."""

from __future__ import annotations

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
) -> dict[str, float]:
    """Accuracy of greedy completions; for procedural problems also strict (every step right)."""
    completions = [
        c[0]
        for c in generate(
            model, tokenizer, [e.prompt for e in examples], max_new_tokens, batch_size=batch_size
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
    return out
