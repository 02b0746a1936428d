"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): needs no file and no network."""

from __future__ import annotations

import torch

from cfglab.data.base import ImageDataModule


class DigitsDataModule(ImageDataModule):
    num_classes = 10
    channels = 1

    def __init__(self, image_size: int = 8, **kwargs):
        super().__init__(image_size=image_size, **kwargs)

    def num_items(self) -> int:
        return len(self.load()[1])  # a small bundled file: loading is the cheap way

    def load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        # Pixel values are counts 0..16 of a 4x4 block; map them onto 0..255.
        images = torch.from_numpy(d.images).mul(255.0 / 16.0).round().to(torch.uint8)[:, None]
        return images, torch.from_numpy(d.target).long()
