"""CIFAR-10 from its python batches (cifar-10-batches-py: data_batch_1..5, test_batch), read without running
arbitrary pickled code."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from cfglab.data.base import ImageDataModule
from cfglab.data.store import LoadedSource, file_fingerprint

_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR batches are pickled dicts of numpy arrays and lists; anything else is refused (a plain
    pickle.load would run whatever a tampered file names)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # protocol-2 bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one CIFAR-10 python batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (EOFError, KeyError, TypeError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}): download it again") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels  # rows are the R, G and B planes, each row-major 32x32


def read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*(read_batch(path) for path in paths))
    return np.concatenate(images), np.concatenate(labels)


class CIFAR10DataModule(ImageDataModule):
    num_classes = 10
    channels = 3
    photographs = True

    def __init__(self, data_dir: str, split: str = "train", download: bool = False, image_size: int = 32, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        if split not in _FILES:
            raise ValueError(f"data.split={split!r} must be one of {sorted(_FILES)}")
        self.data_dir, self.split, self.download = Path(str(data_dir)).expanduser().resolve(), split, bool(download)
        if not self.download and self._folder() is None:
            raise FileNotFoundError(
                f"CIFAR-10 {split} batches ({', '.join(_FILES[split])}) not found in data_dir={str(self.data_dir)!r} "
                "or its cifar-10-batches-py; set data.data_dir, or data.download=true to fetch them with torchvision"
            )

    def _folder(self) -> Path | None:
        for folder in (self.data_dir, self.data_dir / "cifar-10-batches-py"):
            if all((folder / name).is_file() for name in _FILES[self.split]):
                return folder
        return None

    def num_items(self) -> Optional[int]:
        folder = self._folder()
        return None if folder is None else 10_000 * len(_FILES[self.split])  # the fixed size of every batch file

    def fetch(self) -> None:
        if self.download and self._folder() is None:
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(str(self.data_dir), train=self.split == "train", download=True)
            except Exception as e:  # offline, proxy, disk: say where the files were expected
                raise RuntimeError(f"could not download CIFAR-10 into data_dir={str(self.data_dir)!r} ({e})") from e

    def _files(self) -> list[Path]:
        folder = self._folder()
        if folder is None:
            raise FileNotFoundError(f"CIFAR-10 {self.split} batches not found in data_dir={str(self.data_dir)!r}")
        return [folder / name for name in _FILES[self.split]]

    def source_key(self) -> dict:
        return {"data": "CIFAR-10", "split": self.split, "files": file_fingerprint(self._files()),
                "image_size": self.image_size}

    def make_source(self) -> LoadedSource:
        # counted when loaded: num_items() is the official files' size, a cheap bound for the configuration check
        return LoadedSource(self.source_key(), partial(read_batches, self._files()), None, self.channels,
                            self.image_size)
