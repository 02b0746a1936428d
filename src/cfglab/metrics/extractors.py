"""Feature extractors in torch-fidelity's interface: the domain classifier and Inception-v3 from local weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from cfglab.metrics.domain import load_classifier

DOMAIN = "cfglab-domain"


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor over cfglab's domain classifier: uint8 (B, C, H, W) -> ('features', 'logits')."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError("the domain feature extractor needs feature_extractor_weights_path (its cached classifier)")
        self.classifier = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits"}.get(metric, "features")

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x: Tensor):
        features, logits = self.classifier(x.float() / 127.5 - 1.0)
        out = {"features": features, "logits": logits}
        return tuple(out[name].float() for name in self.features_list)


register_feature_extractor(DOMAIN, DomainFeatureExtractor)


class GreyToRGB(torch.nn.Module):
    """Inception-v3 takes 3-channel uint8 images: repeat a single grey channel."""

    def __init__(self, inner: FeatureExtractorBase):
        super().__init__()
        self.inner, self.features_list = inner, inner.features_list

    def forward(self, x: Tensor):
        return self.inner(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def check_inception_weights(weights_path: str | None, allow_download: bool) -> None:
    if weights_path is None and not allow_download:
        raise FileNotFoundError(
            "metrics.weights_path=None: give the local Inception-v3 weights file "
            "(weights-inception-2015-12-05-6726825d.pth) or set metrics.allow_download=true when online"
        )
    if weights_path is not None and not Path(weights_path).is_file():
        raise FileNotFoundError(f"metrics.weights_path={weights_path!r} does not exist")


def inception(weights_path: str | None, allow_download: bool = False) -> torch.nn.Module:
    """torch-fidelity's `inception-v3-compat` (the standard FID/IS network), features '2048' and 'logits_unbiased'.

    weights_path: a local state_dict (what offline clusters need); it is first opened with weights_only=True so
    that a file needing arbitrary code to unpickle is refused before torch-fidelity loads it. Without a path the
    weights are downloaded only if `allow_download`.
    """
    check_inception_weights(weights_path, allow_download)
    if weights_path is not None:
        torch.load(weights_path, map_location="cpu", weights_only=True)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=weights_path)
    return GreyToRGB(net)
