"""MNIST and Fashion-MNIST from the standard IDX files, gzipped or not.

Looks in `data_dir` itself (a flat folder of IDX files) and in `data_dir/<MNIST|FashionMNIST>/raw` (the layout
torchvision downloads to). `split` picks the official split: "train" (60k) or "test" (10k, "t10k" files).
"""

from __future__ import annotations

import gzip
import struct
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from cfglab.data.base import ImageDataModule
from cfglab.data.store import LoadedSource, file_fingerprint

_PREFIX = {"train": "train", "test": "t10k"}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape an IDX file's header declares, after checking that the file holds exactly that much data (for
    a .gz file, gzip's trailer records the uncompressed size): a damaged or truncated download is refused here,
    from the header and the trailer alone, before anything is loaded."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            zero, dtype_code, ndim = struct.unpack(">HBB", head) if len(head) == 4 else (1, 0, 0)
            if zero != 0 or dtype_code not in _DTYPES:
                raise ValueError(f"{path} is not an IDX file (magic bytes {head.hex()}, expected 0000 then a type "
                                 "code and the number of dimensions)")
            dims = f.read(4 * ndim)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} cannot be read ({e}): download it again") from e
    if len(dims) != 4 * ndim:
        raise ValueError(f"{path} ends inside its header (truncated file): download it again")
    shape = struct.unpack(f">{ndim}I", dims)
    expected = 4 + 4 * ndim + int(np.prod(shape)) * np.dtype(_DTYPES[dtype_code]).itemsize
    if path.suffix == ".gz":
        with open(path, "rb") as f:
            f.seek(-4, 2)
            size, expected = int.from_bytes(f.read(4), "little"), expected % 2**32  # gzip's ISIZE: size mod 2^32
    else:
        size = path.stat().st_size
    if size != expected:
        holds = "its gzip trailer records" if path.suffix == ".gz" else "the file holds"
        raise ValueError(f"{path}: its header declares shape {shape} ({expected} bytes) but {holds} {size} bytes "
                         "(truncated or damaged): download it again")
    return shape


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (http://yann.lecun.com/exdb/mnist/ format), gzipped if its name ends in .gz."""
    path = Path(path)
    shape = idx_shape(path)
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} cannot be read ({e}): download it again") from e
    data = np.frombuffer(raw, dtype=_DTYPES[raw[2]], offset=4 + 4 * len(shape))
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values (truncated file?)")
    return data.reshape(shape)


def find_idx(data_dir: Path, name: str, folder_name: str = "MNIST") -> Path | None:
    for folder in (data_dir, data_dir / folder_name / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 1, H, W) and int64 labels (N,) of an IDX image file and its label file."""
    return read_idx(images)[:, None].copy(), read_idx(labels).astype(np.int64)


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

    def fetch(self) -> None:
        if self.download and self._files() is None:
            import torchvision.datasets

            try:
                getattr(torchvision.datasets, self.name)(str(self.data_dir), train=self.split == "train", download=True)
            except Exception as e:  # offline, proxy, disk: say where the files were expected
                raise RuntimeError(
                    f"could not download {self.name} into data_dir={str(self.data_dir)!r} ({e}); place the IDX files there "
                    "by hand and set data.download=false"
                ) from e

    def num_items(self) -> Optional[int]:
        files = self._files()
        if files is None:  # to be downloaded at prepare_data
            return None
        return self._shapes(files)[0][0]

    def _shapes(self, files: tuple[Path, Path]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The image and label files' shapes, checked against each other."""
        images, labels = idx_shape(files[0]), idx_shape(files[1])
        if len(images) != 3 or len(labels) != 1:
            raise ValueError(f"{files[0]} has shape {images} and {files[1]} {labels}: expected (N, H, W) images and "
                             "(N,) labels (are the two files swapped?)")
        if images[0] != labels[0]:
            raise ValueError(f"{files[0]} holds {images[0]} images but {files[1]} {labels[0]} labels")
        return images, labels

    def make_source(self) -> LoadedSource:
        files = self._files()
        if files is None:
            raise FileNotFoundError(f"{self.name} {self.split} IDX files not found in data_dir={str(self.data_dir)!r}")
        n = self._shapes(files)[0][0]
        key = {"data": self.name, "split": self.split, "files": file_fingerprint(files), "image_size": self.image_size}
        return LoadedSource(key, partial(read_idx_pair, *files), n, self.channels, self.image_size)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): the same IDX format and file names, 10 clothing classes."""

    name = "FashionMNIST"
