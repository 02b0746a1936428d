"""Training batches sliced from in-memory tensors, in an order that is a function of (seed, epoch) alone.

Written by hand because a DataLoader over a TensorDataset cannot resume mid-epoch: Lightning restarts its
iterator at the epoch's first batch, and a stateful loader's saved position is off by the batch Lightning has
prefetched. Here the position is derived from the trainer's step count, so a run resumed from a checkpoint
draws exactly the batches the uninterrupted run would have drawn. (Speed is the same as a DataLoader's at
MNIST scale: benchmarks/train_throughput.py.)
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import Tensor


def check_batch_size(num_items: Optional[int], batch_size: int, world_size: int) -> None:
    """A global batch (batch_size x world_size) larger than the training split is never drawn: the last
    incomplete batch of an epoch is dropped. num_items None: not known yet, nothing to check."""
    if num_items is not None and batch_size * world_size > num_items:
        per = f" x {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"batch_size={batch_size}{per} exceeds the {num_items} training items: the last incomplete "
                         "batch of an epoch is dropped, so no batch would be drawn")


class InMemoryBatches:
    """Shuffled batches of (x, y) without replacement; the last incomplete batch of each epoch is dropped.

    Epoch e uses the permutation of `torch.Generator().manual_seed(seed + e)`. With `world_size` processes,
    each global batch holds world_size * batch_size items and rank r takes the r-th slice, so ranks never
    share an item within an epoch. `start()` returns how many batches this rank has consumed in all (the
    trainer's step count times gradient accumulation); iteration resumes from there.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: Callable[[], int] = lambda: 0):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        check_batch_size(len(x), batch_size, world_size)
        self.x, self.y, self.batch_size, self.seed = x, y, int(batch_size), int(seed)
        self.rank, self.world_size, self.start = int(rank), int(world_size), start

    def __len__(self) -> int:
        return len(self.x) // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, first = divmod(int(self.start()), len(self))
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + epoch))
        per_step = self.batch_size * self.world_size
        for i in range(first, len(self)):
            idx = perm[i * per_step + self.rank * self.batch_size:][: self.batch_size]
            yield self.x[idx], self.y[idx]


def training_batches(trainer, x: Tensor, y: Tensor, batch_size: int, seed: int) -> InMemoryBatches:
    """InMemoryBatches sharded over the trainer's processes and resumed from its step (no trainer: rank 0 of 1)."""
    if trainer is None:
        return InMemoryBatches(x, y, batch_size, seed)
    return InMemoryBatches(x, y, batch_size, seed, trainer.global_rank, trainer.world_size,
                           start=lambda: trainer.global_step * trainer.accumulate_grad_batches)
