"""Fashion-MNIST, CIFAR-10, ImageFolder and ImageNet 64x64 on small fixture files written in each format."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cfglab.config_checks import check_train_config
from cfglab.data.cifar import CIFAR10DataModule
from cfglab.data.image_folder import ImageFolderDataModule
from cfglab.data.imagenet64 import ImageNet64DataModule
from cfglab.data.mnist import FashionMNISTDataModule
from cfglab.build import build
from helpers import composed, make_mnist, source_items


def planes(n, side, rng):
    """Images whose R, G and B planes hold different constant levels, so a channel mix-up shows."""
    x = np.empty((n, 3, side, side), dtype=np.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 200, 100, 0
    x[:, 2] = rng.integers(0, 50, (n, side, side), dtype=np.uint8)
    return x


def make_cifar(root, n=12):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = planes(n, 32, rng)
        with open(folder / name, "wb") as f:  # the original files are protocol-2 pickles with bytes keys
            pickle.dump({b"data": x.reshape(n, -1), b"labels": [i % 10 for i in range(n)]}, f, protocol=2)
    return folder


def test_fashion_mnist_reads_torchvision_layout(tmp_path):
    images, labels = make_mnist(tmp_path / "FashionMNIST" / "raw", "t10k", n=30)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), split="test", val_fraction=0.0)
    x, y = source_items(dm)
    assert x.shape == (30, 1, 28, 28) and torch.equal(x[:, 0], torch.from_numpy(images))
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    with pytest.raises(FileNotFoundError, match="FashionMNIST train IDX files"):
        FashionMNISTDataModule(data_dir=str(tmp_path), split="train")


def test_cifar10_batches_keep_channel_order_and_refuse_code(tmp_path):
    make_cifar(tmp_path)
    train = CIFAR10DataModule(data_dir=str(tmp_path), split="train", val_fraction=0.0)
    x, y = source_items(train)
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.uint8
    assert (x[:, 0] == 200).all() and (x[:, 1] == 100).all() and (x[:, 2] < 50).all()
    assert y.tolist() == [i % 10 for i in range(12)] * 5
    assert source_items(CIFAR10DataModule(data_dir=str(tmp_path / "cifar-10-batches-py"), split="test"))[0].shape[0] == 12

    class Exploit:
        def __reduce__(self):
            return (exec, ("raise SystemExit('arbitrary code ran')",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": []}, f)
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 python batch .*refusing to load builtins.exec"):
        source_items(CIFAR10DataModule(data_dir=str(tmp_path), split="test"))


def test_image_folder_resizes_crops_and_labels_by_sorted_folder(tmp_path):
    for cls, colour, size in (("dog", (255, 0, 0), (40, 20)), ("cat", (0, 0, 255), (16, 48))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", size, colour).save(tmp_path / cls / f"{i}.{'png' if cls == 'cat' else 'jpg'}")
    dm = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, val_fraction=0.0)
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2
    x, y = source_items(dm)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert (x[:3, 2] > 250).all() and (x[:3, 0] < 5).all()  # cats blue
    assert (x[3:, 0] > 240).all() and (x[3:, 2] < 15).all()  # dogs red (JPEG)
    grey, _ = source_items(ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, channels=1))
    assert grey.shape == (6, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match="data_dir="):
        ImageFolderDataModule(data_dir=str(tmp_path / "none"))


def test_imagenet64_npz_batches_and_class_subset(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train_data_batch_1.npz", 20), ("train_data_batch_2.npz", 20), ("val_data.npz", 10)):
        labels = 1 + np.arange(n) % 5  # 1-based, as in the released files
        np.savez(tmp_path / name, data=planes(n, 64, rng).reshape(n, -1), labels=labels)
    full = ImageNet64DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    x, y = source_items(full)
    assert full.num_classes == 1000 and x.shape == (40, 3, 64, 64) and y.min() == 0 and y.max() == 4
    assert (x[:, 0] == 200).all() and (x[:, 1] == 100).all()
    sub = ImageNet64DataModule(data_dir=str(tmp_path), classes=[3, 1], val_fraction=0.0)
    xs, ys = source_items(sub)
    assert sub.num_classes == 2 and len(xs) == 16 and sorted(set(ys.tolist())) == [0, 1]
    assert torch.equal(xs[ys == 0], x[y == 3]) and torch.equal(xs[ys == 1], x[y == 1])
    assert len(source_items(ImageNet64DataModule(data_dir=str(tmp_path), split="val"))[0]) == 10
    with pytest.raises(ValueError, match="classes"):
        ImageNet64DataModule(data_dir=str(tmp_path), classes=[1, 1])


@pytest.mark.slow
def test_each_data_config_builds_a_model_that_runs(tmp_path):
    make_cifar(tmp_path / "cifar")
    make_mnist(tmp_path / "fashion", "train", n=40)
    (tmp_path / "folder" / "a").mkdir(parents=True)
    (tmp_path / "folder" / "b").mkdir()
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(tmp_path / "folder" / "ab"[i % 2] / f"{i}.png")
    np.savez(tmp_path / "train_data_batch_1.npz", data=np.zeros((8, 12288), np.uint8), labels=np.arange(1, 9))
    for overrides in (["data=cifar10", f"data.data_dir={tmp_path / 'cifar'}", "data.batch_size=8"],
                      ["data=fashion_mnist", f"data.data_dir={tmp_path / 'fashion'}", "model=unet_mnist_cpu", "data.batch_size=8"],
                      ["data=image_folder", f"data.data_dir={tmp_path / 'folder'}", "data.batch_size=2"],
                      ["data=imagenet64", f"data.data_dir={tmp_path}", "data.classes=[0,1,2,3,4,5,6,7]",
                       "data.val_fraction=0.0", "data.batch_size=4", "model.channel_mult=[1,2,2]"]):
        cfg = composed("config", overrides, tmp_path / "run")
        check_train_config(cfg)
        dm, module = build(cfg)
        batch = next(iter(dm.train_dataloader()))
        assert batch[0].dtype == torch.uint8  # gathered as uint8, turned into [-1, 1] on the training device
        x, y = dm.on_after_batch_transfer(batch, 0)
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
        out = module.net(x, torch.rand(len(x)), y)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert module.num_classes == dm.num_classes
