"""The training loader every objective uses: a shuffled order that is a function of (seed, epoch)
only, and that resumes in the middle of an epoch.

A preempted run must continue with exactly the batches the uninterrupted run would have drawn
next. A plain ``DataLoader(shuffle=True, generator=...)`` cannot: a resumed process seeds a new
generator and replays the epoch from its first batch. :class:`ResumableLoader` can:

* the order of epoch ``e`` is :func:`epoch_permutation` ``(n, seed, e)``: nothing carries over
  from the batches drawn before, so any epoch can be rebuilt in a new process;
* Lightning asks the loader for its ``state_dict()`` (the epoch and how many batches of it were
  yielded) in every checkpoint and hands it back on resume; the loader then skips that many
  batches of the epoch's order without loading them (the index lists are dropped, not the data).

The permutation is the one ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
drew under Lightning before this loader existed (one draw for the workers' base seed, then one
``randperm`` per epoch), so runs from before it give the same numbers. Workers
(``data.num_workers > 0``) get their base seed from a generator of the loader's own: no global
RNG is drawn from, and no dataset here draws random numbers in a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


def epoch_permutation(size: int, seed: int, epoch: int) -> list[int]:
    """The order of the items in epoch ``epoch`` (0-based) of a run seeded with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    perm: list[int] = []
    for _ in range(int(epoch) + 1):
        _draw_base_seed(g)
        perm = torch.randperm(size, generator=g).tolist()
    return perm


def _draw_base_seed(g: torch.Generator) -> None:
    # what a DataLoader iterator draws from its generator when it starts (its workers' base seed)
    torch.empty((), dtype=torch.int64).random_(generator=g)


class EpochOrder(Sampler[int]):
    """A sampler whose order depends on (seed, epoch) alone; Lightning calls ``set_epoch``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.epoch = 0
        # the generator after the last epoch drawn: the next epoch continues it (no replay)
        self._g: torch.Generator | None = None
        self._g_epoch = -1
        self._perm: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        if epoch == self._g_epoch:
            return self._perm
        if self._g is None or epoch != self._g_epoch + 1:  # a jump (a resume): rebuild
            self._g, self._g_epoch = torch.Generator().manual_seed(self.seed), -1
            for _ in range(epoch):
                _draw_base_seed(self._g)
                torch.randperm(self.size, generator=self._g)
        _draw_base_seed(self._g)
        self._perm = torch.randperm(self.size, generator=self._g).tolist()
        self._g_epoch = epoch
        return self._perm

    def __iter__(self) -> Iterator[int]:
        yield from self.order(self.epoch)

    def __len__(self) -> int:
        return self.size


class _SkipBatches:
    """The loader's batch sampler, minus the batches a resumed run has already trained on."""

    def __init__(self, batches: Any, loader: ResumableLoader) -> None:
        self.batches, self.loader = batches, loader

    def __iter__(self) -> Iterator[list[int]]:
        skip = self.loader._begin_epoch()
        it = iter(self.batches)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it

    def __len__(self) -> int:
        return len(self.batches)


class ResumableLoader(DataLoader):
    """A shuffled ``DataLoader`` that Lightning checkpoints and resumes mid-epoch (module doc).

    ``sampler`` is for Lightning only: under DDP it rebuilds the loader around a distributed
    wrapper of :class:`EpochOrder`; the skipped batches are then this rank's.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        sampler: Sampler | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("generator", None)
        self.seed = int(seed)
        self.order = sampler if sampler is not None else EpochOrder(len(dataset), seed, shuffle)
        self._epoch = 0  # the epoch being iterated
        self._yielded = 0  # batches of it handed to the trainer (skipped ones included)
        self._resume: tuple[int, int] | None = None  # (epoch, batches) from a checkpoint
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=self.order,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    @property
    def _index_sampler(self):
        return _SkipBatches(super()._index_sampler, self)

    def __iter__(self):
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self._yielded += 1
            yield batch

    def _sampler_epoch(self) -> int:
        epoch = getattr(self.sampler, "epoch", 0)
        inner = getattr(getattr(self.sampler, "dataset", None), "_sampler", None)
        if isinstance(inner, EpochOrder):  # Lightning's DistributedSamplerWrapper (DDP)
            inner.set_epoch(epoch)
        return int(epoch)

    def _begin_epoch(self) -> int:
        """Called when the batches of an epoch start to be drawn: how many to skip."""
        self._epoch = self._sampler_epoch()
        skip = 0
        if self._resume is not None and self._resume[0] <= self._epoch:
            if self._resume[0] == self._epoch:
                skip = self._resume[1]
            self._resume = None
        self._yielded = skip
        return skip

    # Lightning's stateful-loader interface: saved in every checkpoint, loaded on resume.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
        if isinstance(self.order, EpochOrder):  # workers draw indices before set_epoch is called
            self.order.set_epoch(self._resume[0])
