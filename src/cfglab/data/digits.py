"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): needs no file and no network."""

from __future__ import annotations

import numpy as np

from cfglab.data.base import ImageDataModule
from cfglab.data.store import LoadedSource

NUM_ITEMS = 1797  # the size of scikit-learn's bundled set, checked when it is read


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (1797, 1, 8, 8) and int64 labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    # Pixel values are counts 0..16 of a 4x4 block; map them onto 0..255.
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


class DigitsDataModule(ImageDataModule):
    num_classes = 10
    channels = 1

    def __init__(self, image_size: int = 8, **kwargs):
        super().__init__(image_size=image_size, **kwargs)

    def num_items(self) -> int:
        return NUM_ITEMS

    def make_source(self) -> LoadedSource:
        key = {"data": "sklearn-digits", "image_size": self.image_size}
        return LoadedSource(key, load_digits, NUM_ITEMS, self.channels, self.image_size)
