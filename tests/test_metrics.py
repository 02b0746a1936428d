import math
import pickle
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
from torch.utils.data import Dataset

from cfglab.images import to_uint8
from cfglab.data.digits import DigitsDataModule
from cfglab.metrics import domain as domain_mod
from cfglab.metrics.extractors import DOMAIN, inception
from cfglab.metrics.fidelity import build_metrics, extract


@pytest.fixture(scope="module")
def digits():
    return DigitsDataModule(val_fraction=0.3)


@pytest.fixture(scope="module")
def metrics(digits, tmp_path_factory):
    return build_metrics(digits, cache_dir=str(tmp_path_factory.mktemp("cache")), reference_split="train")


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets, computed independently of torch-fidelity."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


@pytest.mark.slow
def test_domain_classifier_is_accurate_and_cached(digits, metrics, tmp_path):
    assert metrics.info["classifier_test_accuracy"] > 0.95
    path, acc = domain_mod.domain_classifier(digits, tmp_path, epochs=3)
    with mock.patch.object(domain_mod, "train_classifier", side_effect=AssertionError("retrained")):
        path2, acc2 = domain_mod.domain_classifier(digits, tmp_path, epochs=3)
    assert path2 == path and acc2 == acc
    other = DigitsDataModule(val_fraction=0.3, image_size=16)
    assert domain_mod.cache_name("x", domain_mod.data_key(other)) != domain_mod.cache_name("x", domain_mod.data_key(digits))


@pytest.mark.slow
def test_fid_self_zero_disjoint_small_noise_large(digits, metrics):
    train_x, train_y = digits.items("train").head()
    val_x, val_y = digits.items("val").head()
    self_fid = metrics(train_x, train_y)["fid"]
    held_out = metrics(val_x, val_y)
    noise = metrics(to_uint8(torch.rand(val_x.shape) * 2 - 1), val_y)
    assert abs(self_fid) < 1e-6
    assert held_out["fid"] < 0.1 * noise["fid"]
    assert held_out["precision"] > 0.8 and held_out["recall"] > 0.8
    assert noise["precision"] < 0.2 and noise["accuracy"] < 0.3 and held_out["accuracy"] > 0.95


@pytest.mark.slow
def test_fid_equals_independent_frechet_distance(digits, metrics):
    val_x, _ = digits.items("val").head()
    feats, logits = extract(metrics.extractor, val_x)
    ours = metrics.from_features(feats, logits)["fid"]
    ref = frechet(feats.numpy(), metrics.ref_features.numpy())
    assert ours == pytest.approx(ref, rel=1e-3)


@pytest.mark.slow
def test_inception_score_of_real_data_near_maximum(digits, metrics):
    x, y = digits.items("train").head()
    score = metrics(x, y)["is"]
    p = torch.bincount(y).double() / len(y)
    upper = math.exp(-(p * p.log()).sum())  # IS <= exp(H(label marginal)) ~ 10 for balanced classes
    assert 0.8 * upper < score <= upper + 1e-6


class Uint8Set(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.mark.slow
def test_feature_path_matches_torch_fidelity_calculate_metrics(digits, metrics):
    """Our cached-feature path gives what torch-fidelity's own end-to-end entry point gives."""
    gen = digits.items("val").head()[0]
    real = digits.items("train").head()[0]
    ref = torch_fidelity.calculate_metrics(
        input1=Uint8Set(gen), input2=Uint8Set(real), cuda=False, fid=True, isc=True, kid=True, prc=True,
        feature_extractor=DOMAIN, feature_extractor_weights_path=metrics.weights_path, kid_subset_size=len(gen),
        save_cpu_ram=True, verbose=False, batch_size=500,
    )
    ours = metrics(gen)
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert ours["is"] == pytest.approx(ref["inception_score_mean"], rel=1e-4)
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert ours["precision"] == pytest.approx(ref["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(ref["recall"], abs=1e-6)


def test_inception_needs_weights_path():
    with pytest.raises(FileNotFoundError, match="metrics.weights_path"):
        inception(None)
    with pytest.raises(FileNotFoundError, match="metrics.weights_path='/nowhere.pth'"):
        inception("/nowhere.pth")
    with pytest.raises(ValueError, match="metrics.extractor='clip'"):
        build_metrics(DigitsDataModule(), extractor="clip")


def random_inception_weights(path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch("torch.load", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    torch.save(net.state_dict(), path)


def test_inception_from_local_weights_on_grey_images(tmp_path):
    random_inception_weights(tmp_path / "inception.pth")
    net = inception(str(tmp_path / "inception.pth"))
    feats, logits = extract(net, torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)


class Exploit:
    def __reduce__(self):
        return (exec, ("raise SystemExit('arbitrary code ran')",))


def test_malicious_weights_file_is_refused(tmp_path):
    bad = tmp_path / "inception.pth"
    bad.write_bytes(pickle.dumps({"x": Exploit()}))
    with pytest.raises(pickle.UnpicklingError):
        inception(str(bad))
