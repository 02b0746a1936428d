import numpy as np
import pytest
import torch

from cfglab.data.digits import DigitsDataModule
from cfglab.data.mnist import MNISTDataModule, read_idx
from helpers import SHARED_MNIST, make_mnist, write_idx


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_reads_idx_in_both_layouts(tmp_path, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    images, labels = make_mnist(folder, "train", gz=gz)
    dm = MNISTDataModule(data_dir=str(tmp_path), split="train", val_fraction=0.25, store_root=str(tmp_path / "st"))
    train, val = dm.items("train").head(), dm.items("val").head()
    x, y = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.uint8 and len(val[0]) == 10
    # the split is a permutation of the file's contents: every (image, label) pair survives the round trip
    order = torch.sort(y * 10**6 + x.flatten(1).long().sum(1)).indices
    ref = torch.sort(torch.from_numpy(labels).long() * 10**6 + torch.from_numpy(images).flatten(1).long().sum(1)).indices
    assert torch.equal(x[order, 0], torch.from_numpy(images)[ref])


def test_mnist_split_selects_files(tmp_path):
    make_mnist(tmp_path, "t10k", n=20)
    dm = MNISTDataModule(data_dir=str(tmp_path), split="test", val_fraction=0.0, store_root=str(tmp_path / "st"))
    assert len(dm.items("train")) == 20
    with pytest.raises(FileNotFoundError, match=f"data_dir='{tmp_path}'"):
        MNISTDataModule(data_dir=str(tmp_path), split="train")


def test_missing_data_dir_is_named_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MNISTDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="data.split='validation'"):
        MNISTDataModule(data_dir=str(tmp_path), split="validation")


def test_offline_download_names_data_dir(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    dm = MNISTDataModule(data_dir=str(tmp_path / "mnist"), download=True, store_root=str(tmp_path / "st"))
    with pytest.raises(RuntimeError, match="data_dir=.*mnist"):
        dm.prepare_data()


def test_truncated_idx_is_reported(tmp_path):
    write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    raw = (tmp_path / "x-images-idx3-ubyte").read_bytes()
    (tmp_path / "x-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x-images-idx3-ubyte")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST test split not present")
def test_real_mnist_test_split():
    dm = MNISTDataModule(data_dir=str(SHARED_MNIST), split="test", val_fraction=0.1)
    train, val = dm.items("train"), dm.items("val")
    assert len(train) == 9000 and len(val) == 1000
    counts = torch.cat([train.head()[1], val.head()[1]]).bincount()
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # official t10k class counts


def test_digits_default():
    dm = DigitsDataModule()
    x = torch.cat([dm.items("train").head()[0], dm.items("val").head()[0]])
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0 and x.max() == 255
    assert dm.num_classes == 10 and dm.items("train").head()[1].max() == 9
    resized = DigitsDataModule(image_size=16).items("train").head(5)[0]
    assert resized.shape == (5, 1, 16, 16) and resized.dtype == torch.uint8


def test_in_memory_batches_shard_ranks_without_overlap_and_resume_at_any_step():
    from cfglab.data.loader import Batches
    from cfglab.data.store import Items

    items = Items(torch.arange(103).float()[:, None], torch.arange(103), np.arange(103))
    ranks = [Batches(items, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == 103 // 16
    seen = torch.cat([b[1] for r in ranks for b in r])
    assert len(seen) == len(ranks[0]) * 16 and len(seen.unique()) == len(seen)  # no duplicates within an epoch
    for xb, yb in ranks[0]:
        assert torch.equal(xb[:, 0].long(), yb)

    def stream(start, n):  # n batches from position `start`, crossing epoch boundaries
        out, pos = [], start
        while len(out) < n:
            loader = Batches(items, 8, seed=3, start=lambda: pos)
            for _, yb in loader:
                out.append(yb)
                pos += 1
        return out[:n]

    whole = stream(0, 40)
    for k in (1, 5, 12, 13, 27):
        assert all(torch.equal(a, b) for a, b in zip(whole[k:], stream(k, 40 - k)))
    assert not torch.equal(whole[0], whole[12])  # each epoch draws a new order
