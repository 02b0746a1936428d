"""Users' own images: one subfolder per class (torchvision's ImageFolder layout), decoded once into the store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cfglab.data.base import ImageDataModule
from cfglab.data.store import file_fingerprint


def decode(path: str, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): its shorter side resized to `size` (bicubic), then
    centre-cropped to a square."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        scale = size / min(img.size)
        w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
        img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@dataclass
class FolderSource:
    """Image files and their labels, decoded when read (in the prepare step's worker processes)."""

    key: dict
    samples: list[tuple[str, int]]
    image_size: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        chunk = self.samples[start:stop]
        images = np.stack([decode(path, self.image_size, self.channels) for path, _ in chunk])
        return images, np.array([label for _, label in chunk], dtype=np.int64)


class ImageFolderDataModule(ImageDataModule):
    """data_dir/<class name>/<image file>; classes are the subfolder names in sorted order (label 0, 1, ...).

    Each image is resized so that its shorter side is `image_size`, centre-cropped to a square, and stored as
    uint8; channels: 3 (RGB) or 1 (greyscale). The store is found again by the class folders' names and
    modification times (which change when a file is added to or removed from a folder) and the settings.
    """

    photographs = True

    def __init__(self, data_dir: str, image_size: int = 32, channels: int = 3, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        from torchvision.datasets.folder import find_classes

        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels} must be 1 or 3")
        self.data_dir, self.channels = Path(str(data_dir)).expanduser().resolve(), int(channels)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"data_dir={str(self.data_dir)!r} is not a folder of class subfolders")
        try:
            self.classes, _ = find_classes(str(self.data_dir))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"data_dir={str(self.data_dir)!r}: {e}") from e
        if len(self.classes) < 2:  # one class: no label to guide towards, and no classes to measure
            raise ValueError(f"data_dir={str(self.data_dir)!r} has {len(self.classes)} class folder(s) "
                             f"{self.classes}: class-conditional guidance needs at least 2 classes")
        self.num_classes = len(self.classes)
        self._count: Optional[int] = None

    def num_items(self) -> int:
        """Counts the image files of every class folder (refusing an empty one: its label would never be
        trained, yet sampled and scored)."""
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        if self._count is None:
            counts = {c: sum(1 for _, _, files in os.walk(self.data_dir / c, followlinks=True) for f in files
                             if has_file_allowed_extension(f, IMG_EXTENSIONS)) for c in self.classes}
            empty = [c for c, n in counts.items() if n == 0]
            if empty:
                raise ValueError(f"class folder {str(self.data_dir / empty[0])!r} holds no image file "
                                 f"({', '.join(IMG_EXTENSIONS)}); remove it or add its images"
                                 + (f" (also empty: {empty[1:]})" if len(empty) > 1 else ""))
            self._count = sum(counts.values())
        return self._count

    def source_key(self) -> dict:
        return {"data": "ImageFolder", "classes": list(self.classes),
                "folders": file_fingerprint([self.data_dir / c for c in self.classes]),
                "image_size": self.image_size, "channels": self.channels}

    def make_source(self) -> FolderSource:
        from torchvision.datasets import ImageFolder

        self.num_items()  # names an empty class folder
        dataset = ImageFolder(str(self.data_dir), loader=lambda path: path)  # lists the files, decodes nothing
        if list(dataset.classes) != list(self.classes):
            raise RuntimeError(f"class folders in {self.data_dir} changed since the data module was built")
        return FolderSource(self.source_key(), [(str(p), int(c)) for p, c in dataset.samples], self.image_size,
                            self.channels)
