"""A small classifier trained on the data set itself: its penultimate features stand in for Inception's.

For MNIST-scale data, Inception-v3 features of 299x299 upsampled grey digits measure little of what matters and
cost ~0.3 s per image on a CPU; a classifier trained on the same data gives sharp, cheap features (the
"domain FID" used for MNIST-like data). Trained once per data set configuration and cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.atomic import atomic_write
from cfglab.data.store import Items
from cfglab.images import to_model_range

log = logging.getLogger(__name__)


class DomainClassifier(nn.Module):
    """CNN for (B, C, S, S) images in [-1, 1]: forward -> (features (B, feature_dim), logits (B, num_classes))."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes, width=width,
                           feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2) if image_size >= 8 else nn.Identity(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)


def _accuracy(model: DomainClassifier, items: Items, batch: int = 1000) -> float:
    model.eval()
    with torch.inference_mode():
        pred, truth = zip(*((model(to_model_range(x, x.shape[-1]))[1].argmax(1), y) for x, y in items.batches(batch)))
    return float((torch.cat(pred) == torch.cat(truth)).float().mean())


def train_classifier(train: Items, test: Items, num_classes: int, epochs: int = 15, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, min_steps: int = 1000) -> tuple[DomainClassifier, float]:
    """Train on the `train` images (uint8, gathered per batch) for `epochs` but at least `min_steps` steps (small
    data sets need more passes to give confident softmaxes for IS), with small random shifts as augmentation.
    Returns (model, test accuracy)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    channels, size = train.item_shape[0], train.item_shape[-1]
    model = DomainClassifier(channels, size, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(min_steps, epochs * max(1, len(train) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    pad = max(1, size // 14)
    model.train()
    for step in range(steps):
        if step % max(1, steps // 10) == 0:  # a line per tenth: the classifier trains before any sweep output
            log.info("domain classifier: step %d of %d", step, steps)
        idx = torch.randint(len(train), (batch_size,), generator=g)
        x, y = train.get(idx.numpy())
        xb = F.pad(to_model_range(x, size), (pad,) * 4, value=-1.0)
        i, j = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
        xb = xb[..., i : i + size, j : j + size]
        loss = F.cross_entropy(model(xb)[1], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), _accuracy(model, test)


def data_key(datamodule) -> dict:
    """What identifies a data set configuration: class and constructor settings that change its images."""
    keep = ("image_size", "val_fraction", "seed", "split", "data_dir", "channels", "classes")
    return {"class": type(datamodule).__name__, **{k: str(getattr(datamodule, k)) for k in keep if hasattr(datamodule, k)}}


def cache_name(prefix: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{prefix}-{digest}.pt"


def domain_classifier(datamodule, cache_dir: str | Path, epochs: int = 15, seed: int = 0) -> tuple[Path, float]:
    """Path of the cached classifier for this data set (trained now if absent) and its held-out accuracy."""
    key = {"data": data_key(datamodule), "epochs": epochs, "seed": seed, "version": 2}
    path = Path(cache_dir) / cache_name("domain-classifier", key)
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return path, float(blob["test_accuracy"])
    train, val = datamodule.items("train"), datamodule.items("val")
    if len(val) == 0:
        raise ValueError("the domain classifier needs held-out images: set data.val_fraction > 0")
    log.info("training the domain classifier for %s (cached at %s)", key["data"], path)
    model, acc = train_classifier(train, val, datamodule.num_classes, epochs=epochs, seed=seed)
    blob = {"state_dict": model.state_dict(), "config": model.config, "test_accuracy": acc, "key": key}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))
    return path, acc


def load_classifier(path: str | Path) -> DomainClassifier:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = DomainClassifier(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval().requires_grad_(False)
