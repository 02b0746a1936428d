"""FID, IS, KID, precision/recall of generated images against cached real reference features.

IS, KID and precision/recall are torch-fidelity's own feature-level functions (the ones `calculate_metrics`
calls); the Frechet distance is `cfglab.metrics.frechet`'s, whose matrix square root cannot come out NaN or
complex. cfglab only extracts features once per image set, so the real set is featurised once and cached, and each
guidance strength costs one pass over its generated images.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from cfglab.atomic import atomic_write
from cfglab.devices import resolve_device
from cfglab.metrics.domain import cache_name, data_key, domain_classifier
from cfglab.metrics.extractors import DOMAIN, DomainFeatureExtractor, check_inception_weights, inception
from cfglab.metrics.frechet import feature_statistics, frechet_distance

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

    extractor: maps uint8 (B, C, H, W) to (features, logits). reference: (features, logits, labels) of real images.
    class_logits: the logits are over the data set's classes (domain classifier), so `accuracy` of the
    generated images against their requested labels is reported too. per_class: also FID, precision, recall and
    accuracy of each class's samples against that class's references (`per_class`, one dict per class).
    """

    def __init__(self, extractor: torch.nn.Module, reference: tuple[Tensor, Tensor, Tensor], class_logits: bool,
                 kid_subset_size: int = 1000, prc_neighborhood: int = 3, isc_splits: int = 10, info: Optional[dict] = None,
                 weights_path: Optional[str] = None, per_class: bool = False, num_classes: Optional[int] = None):
        self.extractor, self.class_logits = extractor.eval(), class_logits
        self.ref_features, self.ref_logits, self.ref_labels = reference
        self.ref_stats = feature_statistics(self.ref_features.numpy())
        self.kid_subset_size, self.prc_neighborhood, self.isc_splits = kid_subset_size, prc_neighborhood, isc_splits
        self.info = info or {}
        self.weights_path = weights_path  # the extractor's weights file, for torch-fidelity's own entry points
        self.per_class, self.num_classes, self.class_refs = per_class, num_classes, []
        if per_class:
            counts = torch.bincount(self.ref_labels, minlength=num_classes).tolist()
            check_per_class(num_classes, prc_neighborhood, counts, "reference images (metrics.reference_size)")
            for k in range(num_classes):
                ref = self.ref_features[self.ref_labels == k]
                self.class_refs.append((ref, feature_statistics(ref.numpy())))

    def __call__(self, images: Tensor, labels: Optional[Tensor] = None) -> dict:
        """images: uint8 (N, C, H, W); labels: the requested classes (N,) or None."""
        return self.from_features(*extract(self.extractor, images), labels)

    def from_features(self, features: Tensor, logits: Tensor, labels: Optional[Tensor] = None) -> dict:
        """The pooled metrics (floats), and with `per_class` and labels their per-class list."""
        out = self.pooled(features, logits, labels, self.ref_features, self.ref_stats)
        if self.per_class and labels is not None:  # the preflight makes this check on the config before any compute
            labels = labels.cpu()
            check_per_class(self.num_classes, self.prc_neighborhood,
                            torch.bincount(labels, minlength=self.num_classes).tolist(), "samples")
            out["per_class"] = []
            for k, (ref, ref_stats) in enumerate(self.class_refs):
                mine = labels == k
                row = self.pooled(features[mine], logits[mine], labels[mine], ref, ref_stats, summary=False)
                out["per_class"].append({"class": k, "n": int(mine.sum()), **row})
        return out

    def pooled(self, features: Tensor, logits: Tensor, labels: Optional[Tensor], ref_features: Tensor, ref_stats,
               summary: bool = True) -> dict[str, float]:
        """FID, precision, recall and accuracy of `features` against `ref_features`; with `summary`, IS and KID."""
        out = {"fid": frechet_distance(*feature_statistics(features.numpy()), *ref_stats)}
        if summary:
            n = min(len(features), len(ref_features))
            isc = isc_features_to_metric(logits, splits=min(self.isc_splits, len(logits)))
            out["is"], out["is_split_std"] = isc["inception_score_mean"], isc["inception_score_std"]
            kid = kid_features_to_metric(features, ref_features, kid_subsets=100,
                                         kid_subset_size=min(self.kid_subset_size, n), kid_degree=3, kid_gamma=None,
                                         kid_coef0=1, rng_seed=2020, verbose=False)
            out["kid"], out["kid_subset_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
        prc = prc_features_to_metric(features.float(), ref_features.float(), prc_neighborhood=self.prc_neighborhood,
                                     prc_batch_size=10000, save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
        if self.class_logits and labels is not None:
            out["accuracy"] = float((logits.argmax(1) == labels.cpu()).double().mean())
        return {k: float(v) for k, v in out.items()}


def check_per_class(num_classes: Optional[int], prc_neighborhood: int, counts: Optional[list[int]] = None,
                    what: str = "") -> None:
    """Per-class metrics need labelled data (two classes or more) and, in every class, more items than the
    neighbourhood size of precision/recall (k-NN radii of k + 1 points)."""
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"metrics.per_class=true needs labelled data: this data set has {num_classes} class, so the "
                         "per-class metrics would be the pooled ones; set metrics.per_class=false")
    few = [(k, n) for k, n in enumerate(counts or []) if n <= prc_neighborhood]
    if few:
        raise ValueError(f"metrics.per_class=true: class {few[0][0]} has {few[0][1]} {what}, and precision/recall "
                         f"need more than metrics.prc_neighborhood={prc_neighborhood} in every class"
                         + (f" ({len(few)} classes have too few)" if len(few) > 1 else ""))


def reference_features(extractor, extractor_key: dict, datamodule, split: str, size: Optional[int],
                       cache_dir: Path) -> tuple[Tensor, Tensor, Tensor]:
    """(features, logits, labels) of `size` real images of `split` (all if None), computed once and cached."""
    items = datamodule.items(split)
    n = len(items) if size is None else min(int(size), len(items))
    key = {"data": data_key(datamodule), "split": split, "n": n, "extractor": extractor_key}
    path = Path(cache_dir) / cache_name("reference", key)
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        if "labels" in blob:  # older caches lack them: computed again below
            return blob["features"], blob["logits"], blob["labels"]
    images, labels = items.head(n)  # uint8 images, or the points of toy data
    features, logits = extract(extractor, images)
    blob = {"features": features, "logits": logits, "labels": labels, "key": key}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))
    return features, logits, labels


def check_metrics_args(extractor: str = "domain", reference_split: str = "train", weights_path: Optional[str] = None,
                       allow_download: bool = False, datamodule=None, per_class: bool = False,
                       prc_neighborhood: int = 3, num_classes: Optional[int] = None) -> None:
    """The checks build_metrics makes before any compute (also run on the config before training starts);
    num_classes: the data's, when there is no datamodule to read it from."""
    if extractor not in ("domain", "inception", "exact"):
        raise ValueError(f"metrics.extractor={extractor!r} must be 'domain', 'inception' or 'exact'")
    if reference_split not in ("train", "val"):
        raise ValueError(f"metrics.reference_split={reference_split!r} must be 'train' or 'val'")
    if extractor == "exact" and datamodule is not None and not hasattr(datamodule, "mixture"):
        raise ValueError("metrics.extractor='exact' needs toy data with a known density (data=gmm)")
    if extractor == "inception":
        check_inception_weights(weights_path, allow_download)
    if not isinstance(per_class, bool):
        raise ValueError(f"metrics.per_class={per_class!r} must be true or false")
    if per_class:
        check_per_class(getattr(datamodule, "num_classes", num_classes), prc_neighborhood)


def build_metrics(datamodule, extractor: str = "domain", cache_dir: str = ".cache/cfglab",
                  reference_split: str = "train", reference_size: Optional[int] = 10_000, classifier_epochs: int = 15,
                  weights_path: Optional[str] = None, allow_download: bool = False, kid_subset_size: int = 1000,
                  prc_neighborhood: int = 3, device: str = "cpu", per_class: bool = False) -> FidelityMetrics:
    """The metrics object a sweep uses, from the `metrics` config group; device: auto | cpu | cuda | cuda:N;
    per_class: every class's metrics too, against the references of that class."""
    check_metrics_args(extractor, reference_split, weights_path, allow_download, datamodule, per_class,
                       prc_neighborhood)
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
                           prc_neighborhood=prc_neighborhood, info=info, weights_path=weights, per_class=per_class,
                           num_classes=datamodule.num_classes)


class ExactFeatures(torch.nn.Module):
    """For toy data with a known density: features are the points themselves, logits the exact log p(k | x)."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x: Tensor):
        return x.double(), self.mixture.log_posterior(x)
