"""Training batches drawn from a data set's items in an order, and with flips, that are functions of (seed, epoch,
step) alone.

Written by hand because a DataLoader cannot resume mid-epoch: Lightning restarts its iterator at the epoch's first
batch, and a stateful loader's saved position is off by the batch Lightning has prefetched. Here the position is
derived from the trainer's step count, so a run resumed from a checkpoint draws exactly the batches, flipped
exactly as, the uninterrupted run would have drawn them. Each batch is gathered from the prepared store
(cfglab.data.store) as uint8; the data module turns it into the model's range on the training device.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from cfglab.data.store import Items
from cfglab.latent.encode import draw_latents


def check_batch_size(num_items: Optional[int], batch_size: int, world_size: int) -> None:
    """A global batch (batch_size x world_size) larger than the training split is never drawn: the last
    incomplete batch of an epoch is dropped. num_items None: not known yet, nothing to check."""
    if num_items is not None and batch_size * world_size > num_items:
        per = f" x {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"batch_size={batch_size}{per} exceeds the {num_items} training items: the last incomplete "
                         "batch of an epoch is dropped, so no batch would be drawn")


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of the flips of one global batch (step `step` of epoch `epoch`)."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1, np.uint64)[0])


class Batches:
    """Shuffled batches of a data set's items without replacement; the last incomplete batch of an epoch is dropped.

    Epoch e uses the permutation of `torch.Generator().manual_seed(seed + e)`. With `world_size` processes, each
    global batch holds world_size * batch_size items and rank r takes the r-th slice, so ranks never share an item
    within an epoch. With `hflip`, each image of a global batch is mirrored left-right with probability 1/2, drawn
    from `step_seed(seed, epoch, step)` for the whole global batch, so the flips do not depend on the number of
    processes. `start()` returns how many batches this rank has consumed in all (the trainer's step count times
    gradient accumulation); iteration resumes from there.

    latents: the items are encoded pairs (2, 2c, h, w) of cfglab.latent.encode; each batch is drawn from them
    (`draw_latents`: the flipped image's encoding where flipped, a posterior sample with noise from the same
    (seed, epoch, step) generator, drawn for the whole global batch), float32 (B, c, h, w).
    """

    def __init__(self, items: Items, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: Callable[[], int] = lambda: 0, hflip: bool = False, latents: bool = False):
        check_batch_size(len(items), batch_size, world_size)
        if hflip and len(items.item_shape) != (4 if latents else 3):
            raise ValueError(f"hflip=true needs images (C, H, W), not items of shape {items.item_shape}")
        self.items, self.batch_size, self.seed = items, int(batch_size), int(seed)
        self.rank, self.world_size, self.start, self.hflip = int(rank), int(world_size), start, bool(hflip)
        self.latents = bool(latents)

    def __len__(self) -> int:
        return len(self.items) // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, first = divmod(int(self.start()), len(self))
        perm = torch.randperm(len(self.items), generator=torch.Generator().manual_seed(self.seed + epoch)).numpy()
        per_step, mine = self.batch_size * self.world_size, slice(self.rank * self.batch_size,
                                                                  (self.rank + 1) * self.batch_size)
        for i in range(first, len(self)):
            x, y = self.items.get(perm[i * per_step:][mine])
            g = torch.Generator().manual_seed(step_seed(self.seed, epoch, i))
            flip = (torch.rand(per_step, generator=g)[mine] < 0.5) if self.hflip else torch.zeros(len(x), dtype=bool)
            if self.latents:
                c, h, w = x.shape[2] // 2, x.shape[3], x.shape[4]
                x = draw_latents(x, flip, torch.randn((per_step, c, h, w), generator=g)[mine])
            else:
                x[flip] = x[flip].flip(-1)
            yield x, y


def training_batches(trainer, items: Items, batch_size: int, seed: int, hflip: bool = False,
                     latents: bool = False) -> Batches:
    """Batches sharded over the trainer's processes and resumed from its step (no trainer: rank 0 of 1)."""
    if trainer is None:
        return Batches(items, batch_size, seed, hflip=hflip, latents=latents)
    return Batches(items, batch_size, seed, trainer.global_rank, trainer.world_size,
                   start=lambda: trainer.global_step * trainer.accumulate_grad_batches, hflip=hflip, latents=latents)
