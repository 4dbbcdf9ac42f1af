"""A real-architecture model for the tests: a byte-level BPE tokenizer trained locally on the
task's text and a tiny randomly initialised Llama, saved as a folder ``model=hf`` loads.

Test-only: a user's real run loads a pretrained model with its own tokenizer by name; what this
builds is what such a run meets that the char-level GPT-2 hides: tokens spanning several
characters, so text encoded again need not give the ids a model sampled.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from eightfold.data.examples import procedural_split

SPECIAL = ("<pad>", "<bos>", "<eos>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``. No pre-split on whitespace or punctuation
    (``use_regex=False``), so merges cross ``=``, digits and newlines: many ways to spell one
    text in tokens, and the joins of prompt, step and completion fall inside tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def task_texts(size: int = 2000, seed: int = 0, **task) -> list[str]:
    """Problems and solutions of the embedded task (``eightfold.data.arithmetic``)."""
    train, test = procedural_split(size, seed, 200, 12345, **task)
    return [e.prompt + e.solution for e in train + test]


def save_tiny_llama(
    target: Path,
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 64,
    layers: int = 2,
    context: int = 256,
    seed: int = 0,
) -> Path:
    """A randomly initialised Llama (about 0.1 M parameters at the defaults) and ``tokenizer``,
    saved into ``target`` for ``model=hf model.name=<target>``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
