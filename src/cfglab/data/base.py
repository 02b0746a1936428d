"""In-memory image data modules: every data set here fits in memory, so batches are sliced from one tensor."""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from cfglab.data.loader import InMemoryBatches, training_batches
from cfglab.images import to_model_range


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses implement `load()` returning (uint8 images (N, C, H, W), int64 labels (N,)).

    A seeded `val_fraction` of the loaded split is held out for validation, evaluation references and the
    feature extractor's test accuracy; the rest trains.
    """

    num_classes: int
    channels: int
    data_range: Optional[float] = 1.0  # images live in [-1, 1] (sampling's clip_x0 "auto")

    def __init__(self, image_size: int, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1)")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if image_size < 1:
            raise ValueError(f"image_size={image_size} must be >= 1")
        self.image_size, self.batch_size, self.val_fraction = int(image_size), int(batch_size), float(val_fraction)
        self.seed = int(seed)
        self._splits: Optional[dict[str, tuple[Tensor, Tensor]]] = None

    def load(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def num_items(self) -> Optional[int]:
        """How many items `load()` returns, found without loading them (file headers, a directory listing), so
        that the config check can compare the batch size with the training split and refuse damaged files
        before anything runs; None when that cannot be told cheaply."""
        return None

    def num_train_items(self) -> Optional[int]:
        n = self.num_items()
        return None if n is None else n - int(round(self.val_fraction * n))

    def splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{'train': (x, y), 'val': (x, y)} with x float (N, C, S, S) in [-1, 1]; loaded once."""
        if self._splits is None:
            images, labels = self.load()
            x = to_model_range(images, self.image_size)
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
            n_val = int(round(self.val_fraction * len(x)))
            val, train = perm[:n_val], perm[n_val:]
            self._splits = {"train": (x[train], labels[train]), "val": (x[val], labels[val])}
        return self._splits

    def setup(self, stage: Optional[str] = None) -> None:
        self.splits()

    def train_dataloader(self) -> InMemoryBatches:
        return training_batches(self.trainer, *self.splits()["train"], self.batch_size, self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits()["val"]), batch_size=self.batch_size)
