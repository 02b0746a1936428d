"""FID, IS, KID, precision/recall of generated images against cached real reference features.

The formulas are torch-fidelity's own feature-level functions (the ones `calculate_metrics` calls); cfglab only
extracts features once per image set, so the real set is featurised once and cached, and each guidance strength
costs one pass over its generated images.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from cfglab.atomic import atomic_write
from cfglab.devices import resolve_device
from cfglab.metrics.domain import cache_name, data_key, domain_classifier
from cfglab.metrics.extractors import DOMAIN, DomainFeatureExtractor, check_inception_weights, inception

log = logging.getLogger(__name__)


def extract(extractor: torch.nn.Module, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """uint8 images (N, C, H, W) -> (features (N, D), logits (N, K)), float64 on the CPU."""
    tensor = next(itertools.chain(extractor.parameters(), extractor.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            f, lg = extractor(images[i : i + batch_size].to(device))
            feats.append(f.double().cpu()), logits.append(lg.double().cpu())
    return torch.cat(feats), torch.cat(logits)


class FidelityMetrics:
    """Metrics of a generated set against a fixed real reference.

    extractor: maps uint8 (B, C, H, W) to (features, logits). reference: (features, logits) of real images.
    class_logits: the logits are over the data set's classes (domain classifier), so `accuracy` of the
    generated images against their requested labels is reported too.
    """

    def __init__(self, extractor: torch.nn.Module, reference: tuple[Tensor, Tensor], class_logits: bool,
                 kid_subset_size: int = 1000, prc_neighborhood: int = 3, isc_splits: int = 10, info: Optional[dict] = None,
                 weights_path: Optional[str] = None):
        self.extractor, self.class_logits = extractor.eval(), class_logits
        self.ref_features, self.ref_logits = reference
        self.ref_stats = fid_features_to_statistics(self.ref_features)
        self.kid_subset_size, self.prc_neighborhood, self.isc_splits = kid_subset_size, prc_neighborhood, isc_splits
        self.info = info or {}
        self.weights_path = weights_path  # the extractor's weights file, for torch-fidelity's own entry points

    def __call__(self, images: Tensor, labels: Optional[Tensor] = None) -> dict[str, float]:
        """images: uint8 (N, C, H, W); labels: the requested classes (N,) or None."""
        return self.from_features(*extract(self.extractor, images), labels)

    def from_features(self, features: Tensor, logits: Tensor, labels: Optional[Tensor] = None) -> dict[str, float]:
        n = min(len(features), len(self.ref_features))
        out = {"fid": fid_statistics_to_metric(fid_features_to_statistics(features), self.ref_stats, False)[
            "frechet_inception_distance"]}
        isc = isc_features_to_metric(logits, splits=min(self.isc_splits, len(logits)))
        out["is"], out["is_split_std"] = isc["inception_score_mean"], isc["inception_score_std"]
        kid = kid_features_to_metric(features, self.ref_features, kid_subsets=100,
                                     kid_subset_size=min(self.kid_subset_size, n), kid_degree=3, kid_gamma=None,
                                     kid_coef0=1, rng_seed=2020, verbose=False)
        out["kid"], out["kid_subset_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
        prc = prc_features_to_metric(features.float(), self.ref_features.float(), prc_neighborhood=self.prc_neighborhood,
                                     prc_batch_size=10000, save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
        if self.class_logits and labels is not None:
            out["accuracy"] = float((logits.argmax(1) == labels.cpu()).double().mean())
        return {k: float(v) for k, v in out.items()}


def reference_features(extractor, extractor_key: dict, datamodule, split: str, size: Optional[int],
                       cache_dir: Path) -> tuple[Tensor, Tensor]:
    """Features of `size` real images of `split` (all if None), computed once and cached on disk."""
    items = datamodule.items(split)
    n = len(items) if size is None else min(int(size), len(items))
    key = {"data": data_key(datamodule), "split": split, "n": n, "extractor": extractor_key}
    path = Path(cache_dir) / cache_name("reference", key)
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return blob["features"], blob["logits"]
    features, logits = extract(extractor, items.head(n)[0])  # uint8 images, or the points of toy data
    atomic_write(path, lambda tmp: torch.save({"features": features, "logits": logits, "key": key}, tmp))
    return features, logits


def check_metrics_args(extractor: str = "domain", reference_split: str = "train", weights_path: Optional[str] = None,
                       allow_download: bool = False, datamodule=None) -> None:
    """The checks build_metrics makes before any compute (also run on the config before training starts)."""
    if extractor not in ("domain", "inception", "exact"):
        raise ValueError(f"metrics.extractor={extractor!r} must be 'domain', 'inception' or 'exact'")
    if reference_split not in ("train", "val"):
        raise ValueError(f"metrics.reference_split={reference_split!r} must be 'train' or 'val'")
    if extractor == "exact" and datamodule is not None and not hasattr(datamodule, "mixture"):
        raise ValueError("metrics.extractor='exact' needs toy data with a known density (data=gmm)")
    if extractor == "inception":
        check_inception_weights(weights_path, allow_download)


def build_metrics(datamodule, extractor: str = "domain", cache_dir: str = ".cache/cfglab",
                  reference_split: str = "train", reference_size: Optional[int] = 10_000, classifier_epochs: int = 15,
                  weights_path: Optional[str] = None, allow_download: bool = False, kid_subset_size: int = 1000,
                  prc_neighborhood: int = 3, device: str = "cpu") -> FidelityMetrics:
    """The metrics object a sweep uses, from the `metrics` config group; device: auto | cpu | cuda | cuda:N."""
    check_metrics_args(extractor, reference_split, weights_path, allow_download, datamodule)
    cache = Path(cache_dir)
    if extractor == "domain":
        path, acc = domain_classifier(datamodule, cache, epochs=classifier_epochs)
        net = DomainFeatureExtractor(DOMAIN, ["features", "logits"], feature_extractor_weights_path=str(path))
        key, info, weights = {"name": DOMAIN, "weights": path.name}, {"classifier_test_accuracy": acc}, str(path)
        log.info("domain classifier held-out accuracy: %.4f", acc)
    elif extractor == "exact":
        net = ExactFeatures(datamodule.mixture)
        key, info, weights = {"name": "exact", "mixture": datamodule.split}, {}, None
    elif extractor == "inception":
        net = inception(weights_path, allow_download)
        key, info, weights = {"name": "inception-v3-compat", "weights": str(weights_path)}, {}, weights_path
    net = net.to(resolve_device(device))
    ref = reference_features(net, key, datamodule, reference_split, reference_size, cache)
    return FidelityMetrics(net, ref, class_logits=extractor in ("domain", "exact"), kid_subset_size=kid_subset_size,
                           prc_neighborhood=prc_neighborhood, info=info, weights_path=weights)


class ExactFeatures(torch.nn.Module):
    """For toy data with a known density: features are the points themselves, logits the exact log p(k | x)."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x: Tensor):
        return x.double(), self.mixture.log_posterior(x)
