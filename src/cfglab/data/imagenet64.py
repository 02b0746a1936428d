"""Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017, "A Downsampled Variant of ImageNet") in its npz batches:
train_data_batch_1..10.npz and val_data.npz, each with `data` (N, 12288) uint8 and `labels` (N,) in 1..1000."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cfglab.data.base import ImageDataModule
from cfglab.data.store import file_fingerprint, resize_uint8


def read_npz_batch(path: Path, side: int = 64, labels_only: bool = False) -> tuple[Optional[np.ndarray], np.ndarray]:
    """uint8 images (N, 3, side, side) (None if labels_only) and 0-based int64 labels of one batch file (no
    pickles allowed)."""
    try:
        with np.load(path, allow_pickle=False) as batch:
            missing = {"data", "labels"} - set(batch.files)
            if missing:
                raise ValueError(f"{path} holds the arrays {sorted(batch.files)}, not {sorted(missing)}: expected "
                                 "'data' (N, 12288) and 'labels' (N,), the format of the downsampled ImageNet batches")
            labels = np.asarray(batch["labels"], dtype=np.int64) - 1
            data = None if labels_only else batch["data"]
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} cannot be read as an npz file ({e}): download it again") from e
    if data is None:
        return None, labels
    if data.ndim != 2 or data.shape[1] != 3 * side * side or len(data) != len(labels):
        raise ValueError(f"{path}: expected data (N, {3 * side * side}) and N labels, got {data.shape}, {labels.shape}")
    return data.reshape(-1, 3, side, side), labels  # rows are the R, G and B planes


@dataclass
class NpzBatchesSource:
    """The items of the batch files in order (only the kept classes, relabelled 0 ... len - 1); a process reading
    a range loads the batch files it covers, one at a time (about 1.2 GB each), and keeps the last one."""

    key: dict
    files: list[Path]
    counts: list[int]
    classes: Optional[list[int]]
    image_size: int
    _loaded: Any = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    def __len__(self) -> int:
        return sum(self.counts)

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}

    def _file(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._loaded is None or self._loaded[0] != i:
            x, y = read_npz_batch(self.files[i])
            if self.classes is not None:  # filter per file: only the kept classes are ever held in memory
                keep = np.full(1000, -1, dtype=np.int64)
                keep[self.classes] = np.arange(len(self.classes))
                y = keep[y]
                x, y = x[y >= 0], y[y >= 0]
            self._loaded = i, x, y
        return self._loaded[1], self._loaded[2]

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels, offset = [], [], 0
        for i, count in enumerate(self.counts):
            lo, hi = max(start, offset), min(stop, offset + count)
            if lo < hi:
                x, y = self._file(i)
                images.append(resize_uint8(x[lo - offset:hi - offset], self.image_size))
                labels.append(y[lo - offset:hi - offset])
            offset += count
        return np.concatenate(images), np.concatenate(labels)


class ImageNet64DataModule(ImageDataModule):
    """split "train" reads every train_data_batch_*.npz, "val" reads val_data.npz. The full training set is
    1.28 M images (15.7 GB as uint8); `classes` keeps only these class ids (0-based), relabelled 0..len-1,
    which is how class-conditional studies at this scale usually run on one machine."""

    channels = 3
    photographs = True

    def __init__(self, data_dir: str, split: str = "train", classes: Optional[Sequence[int]] = None,
                 image_size: int = 64, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        if split not in ("train", "val"):
            raise ValueError(f"data.split={split!r} must be 'train' or 'val'")
        self.data_dir, self.split = Path(str(data_dir)).expanduser().resolve(), split
        self.classes = None if classes is None else [int(c) for c in classes]
        if self.classes is not None and (len(set(self.classes)) != len(self.classes)
                                         or not all(0 <= c < 1000 for c in self.classes)):
            raise ValueError(f"data.classes={self.classes} must be distinct class ids in [0, 1000)")
        self.num_classes = 1000 if self.classes is None else len(self.classes)
        if not self._files():
            raise FileNotFoundError(f"no ImageNet 64x64 {split} batches ({self._pattern()}) in "
                                    f"data_dir={str(self.data_dir)!r}")

    def _pattern(self) -> str:
        return "train_data_batch_*.npz" if self.split == "train" else "val_data.npz"

    def _files(self) -> list[Path]:
        return sorted(self.data_dir.glob(self._pattern()), key=lambda p: (len(p.name), p.name))

    def _counts(self) -> list[int]:
        """Items kept per batch file; reads only the labels arrays (about 1 MB per file), which also checks every
        file's arrays."""
        labels = [read_npz_batch(path, labels_only=True)[1] for path in self._files()]
        return [int(len(y) if self.classes is None else np.isin(y, self.classes).sum()) for y in labels]

    def num_items(self) -> int:
        return sum(self._counts())

    def source_key(self) -> dict:
        return {"data": "ImageNet64", "split": self.split, "classes": self.classes,
                "files": file_fingerprint(self._files()), "image_size": self.image_size}

    def make_source(self) -> NpzBatchesSource:
        return NpzBatchesSource(self.source_key(), self._files(), self._counts(), self.classes, self.image_size)
