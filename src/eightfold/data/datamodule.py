"""The LightningDataModule that holds a run's examples and serves SFT batches.

Examples come from :mod:`eightfold.data.examples` (procedural), :mod:`eightfold.data.star_graph`
(the path-star task) or :mod:`eightfold.data.synthetic` (teacher data, local files). An objective
that trains on other SFT pairs (RFT) gets a copy with its own pairs through
:meth:`MathDataModule.with_train_pairs`; one that samples on fresh problems
(``objective.sample_prompts=pool``) asks :meth:`MathDataModule.pool_examples`.
"""

from __future__ import annotations

import copy
import functools

import lightning as L
import torch

from eightfold.data.examples import POOL_SEED_OFFSET, Example, procedural_pool, procedural_split
from eightfold.data.loader import ResumableLoader
from eightfold.data.star_graph import pool_examples as star_graph_pool
from eightfold.data.star_graph import star_graph_split
from eightfold.data.synthetic import build_split
from eightfold.generation import encode_prompt, encode_response

# objective.sample_prompts=pool: each source with a generator that knows the answers, and its
# pool function, (size, seed, avoid: train + test examples, **data.task) -> fresh Examples.
# procedural_teacher poses the generator's problems, so its pool is the procedural one.
POOLS = {
    "procedural": procedural_pool,
    "procedural_teacher": procedural_pool,
    "star_graph": star_graph_pool,
}


class TokenizedPairs(torch.utils.data.Dataset):
    """(prompt ids, response ids) pairs, tokenised once."""

    def __init__(self, tokenizer, pairs: list[tuple[str, str]]):
        self.items = [
            (encode_prompt(tokenizer, p), encode_response(tokenizer, r)) for p, r in pairs
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]


def collate_sft(
    batch: list[tuple[list[int], list[int]]], pad_id: int, pack_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded ids with labels = -100 on prompt and padding: loss on solution tokens only.

    With ``pack_length``, padding-free rows instead (:func:`pack_sequences`).
    """
    if pack_length:
        return pack_sequences(batch, pad_id, pack_length)
    width = max(len(p) + len(r) for p, r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (p, r) in enumerate(batch):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        labels[i, len(p) : n] = torch.tensor(r)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_sequences(
    batch: list[tuple[list[int], list[int]]], pad_id: int, pack_length: int
) -> dict[str, torch.Tensor]:
    """Pack (prompt, response) sequences into rows of at most ``pack_length`` tokens (first fit,
    in order), with ``position_ids`` restarting at 0 per sequence (transformers derives the
    block-causal mask from them) and ``seq_ids`` = which sequence a token belongs to (-1: padding).

    A row's first label of each sequence is a prompt token (-100), so the next-token shift never
    scores a token of one sequence from the end of another.
    """
    rows: list[list[int]] = []
    used: list[int] = []
    for i, (p, r) in enumerate(batch):
        n = len(p) + len(r)
        if n > pack_length:
            raise ValueError(
                f"a sequence of {n} tokens does not fit perf.pack_length={pack_length}"
            )
        for j, u in enumerate(used):
            if u + n <= pack_length:
                rows[j].append(i)
                used[j] += n
                break
        else:
            rows.append([i])
            used.append(n)
    width = max(used)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    seq_ids = torch.full(shape, -1, dtype=torch.long)
    for row, members in enumerate(rows):
        at = 0
        for i in members:
            p, r = batch[i]
            n = len(p) + len(r)
            ids[row, at : at + n] = torch.tensor(p + r)
            labels[row, at + len(p) : at + n] = torch.tensor(r)
            positions[row, at : at + n] = torch.arange(n)
            seq_ids[row, at : at + n] = i
            at += n
        # trailing padding continues the last sequence's positions (no new segment); it is never
        # scored and, being later, never seen by a real token
        positions[row, at:] = torch.arange(n, n + width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "seq_ids": seq_ids}


class MathDataModule(L.LightningDataModule):
    """Holds the training and test examples of one run and serves SFT batches."""

    def __init__(
        self,
        source: str = "procedural",
        kind: str = "procedural",
        size: int = 1000,
        seed: int = 0,
        test_size: int = 500,
        test_seed: int = 12345,
        task: dict | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        max_new_tokens: int = 64,
        # non-procedural sources (eightfold.data.synthetic): teacher data, local JSONL files
        teacher: dict | None = None,
        train_file: str | None = None,
        test_file: str | None = None,
        label: str = "reference",
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.source, self.kind, self.size, self.seed = source, kind, size, seed
        self.test_size, self.test_seed = test_size, test_seed
        self.task = dict(task or {})
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_new_tokens = max_new_tokens
        self.source_options = dict(
            teacher=teacher,
            train_file=train_file,
            test_file=test_file,
            label=label,
            cache_dir=cache_dir,
        )
        self.data_info: dict = {}  # statistics + provenance of the training data (teacher sources)
        self.tokenizer = None
        self.pack_length: int | None = None  # perf.packing: padding-free rows (set by the run)
        self.train_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self._train_pairs: list[tuple[str, str]] | None = None  # with_train_pairs

    def prepare_examples(self) -> None:
        if self.train_examples:
            return
        if self.source == "star_graph":
            self.train_examples, self.test_examples = star_graph_split(
                self.size, self.seed, self.test_size, self.test_seed, **self.task
            )
            return
        if self.source != "procedural":
            self.train_examples, self.test_examples, self.data_info = build_split(
                source=self.source,
                kind=self.kind,
                size=self.size,
                seed=self.seed,
                test_size=self.test_size,
                test_seed=self.test_seed,
                task=self.task,
                **self.source_options,
            )
            return
        self.train_examples, self.test_examples = procedural_split(
            self.size, self.seed, self.test_size, self.test_seed, **self.task
        )

    def pool_examples(self) -> list[Example]:
        """``objective.sample_prompts=pool``: as many fresh problems as there are training
        examples, none of them a training or test problem, with the generator's solutions and
        answers, from their own stream (data.seed + POOL_SEED_OFFSET)."""
        pool = POOLS.get(self.source)
        if pool is None:
            raise ValueError(
                f"objective.sample_prompts=pool is not valid with data.source={self.source!r}:"
                f" a pool needs a generator with answers, data.source one of {', '.join(POOLS)}"
                " (or objective.sample_prompts=train)"
            )
        self.prepare_examples()
        avoid = [*self.train_examples, *self.test_examples]
        return pool(len(self.train_examples), int(self.seed) + POOL_SEED_OFFSET, avoid, **self.task)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_examples()

    def train_pairs(self) -> list[tuple[str, str]]:
        """The (prompt, solution) pairs SFT trains on: the training examples, unless replaced."""
        if self._train_pairs is not None:
            return list(self._train_pairs)
        return [(e.prompt, e.solution) for e in self.train_examples]

    def with_train_pairs(self, pairs: list[tuple[str, str]]) -> MathDataModule:
        """A copy that trains on ``pairs`` through exactly this SFT path (same batching, shuffling
        and loss); examples, test set and tokenizer are shared. RFT trains this way."""
        other = copy.copy(self)
        other._train_pairs = list(pairs)
        return other

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled by (data.seed, epoch); a resumed run continues mid-epoch (eightfold.data.loader)."""
        ds = TokenizedPairs(self.tokenizer, self.train_pairs())
        return ResumableLoader(
            ds,
            batch_size=self.batch_size,
            seed=self.seed,
            num_workers=self.num_workers,
            collate_fn=functools.partial(
                collate_sft, pad_id=self.tokenizer.pad_token_id, pack_length=self.pack_length
            ),
            drop_last=len(ds) > self.batch_size,
        )
