"""MNIST and Fashion-MNIST from the standard IDX files, gzipped or not.

Looks in `data_dir` itself (a flat folder of IDX files) and in `data_dir/<MNIST|FashionMNIST>/raw` (the layout
torchvision downloads to). `split` picks the official split: "train" (60k) or "test" (10k, "t10k" files).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from cfglab.data.base import ImageDataModule

_PREFIX = {"train": "train", "test": "t10k"}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (http://yann.lecun.com/exdb/mnist/ format), gzipped if its name ends in .gz."""
    path = Path(path)
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values (truncated file?)")
    return data.reshape(shape)


def find_idx(data_dir: Path, name: str, folder_name: str = "MNIST") -> Path | None:
    for folder in (data_dir, data_dir / folder_name / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


class MNISTDataModule(ImageDataModule):
    num_classes = 10
    channels = 1
    name = "MNIST"  # torchvision's class and folder name

    def __init__(self, data_dir: str, split: str = "train", download: bool = False, image_size: int = 28, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        if split not in _PREFIX:
            raise ValueError(f"data.split={split!r} must be one of {sorted(_PREFIX)}")
        self.data_dir, self.split, self.download = Path(str(data_dir)).expanduser().resolve(), split, bool(download)
        if not self.download and self._files() is None:
            raise FileNotFoundError(
                f"{self.name} {split} IDX files ({_PREFIX[split]}-images-idx3-ubyte[.gz], {_PREFIX[split]}-labels-idx1-"
                f"ubyte[.gz]) not found in data_dir={str(self.data_dir)!r} or its {self.name}/raw; set data.data_dir to the "
                "folder that holds them, or data.download=true to fetch them with torchvision"
            )

    def _files(self) -> tuple[Path, Path] | None:
        prefix = _PREFIX[self.split]
        images = find_idx(self.data_dir, f"{prefix}-images-idx3-ubyte", self.name)
        labels = find_idx(self.data_dir, f"{prefix}-labels-idx1-ubyte", self.name)
        return (images, labels) if images and labels else None

    def prepare_data(self) -> None:
        if self.download and self._files() is None:
            import torchvision.datasets

            try:
                getattr(torchvision.datasets, self.name)(str(self.data_dir), train=self.split == "train", download=True)
            except Exception as e:  # offline, proxy, disk: say where the files were expected
                raise RuntimeError(
                    f"could not download {self.name} into data_dir={str(self.data_dir)!r} ({e}); place the IDX files there "
                    "by hand and set data.download=false"
                ) from e

    def load(self):
        self.prepare_data()
        files = self._files()
        if files is None:
            raise FileNotFoundError(f"{self.name} {self.split} IDX files not found in data_dir={str(self.data_dir)!r}")
        images, labels = (read_idx(f) for f in files)
        if len(images) != len(labels):
            raise ValueError(f"{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels")
        return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): the same IDX format and file names, 10 clothing classes."""

    name = "FashionMNIST"
