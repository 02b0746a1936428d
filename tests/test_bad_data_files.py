"""Damaged or wrong data files are refused by the config check, before anything runs, each naming the file."""

import gzip
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from cfglab.config_checks import ConfigError, check_train_config
from cfglab.data.cifar import CIFAR10DataModule
from cfglab.data.mnist import MNISTDataModule
from helpers import composed, make_mnist, source_items, write_idx

IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def refused(tmp_path, overrides):
    """The message of the train config check on these overrides (which must fail)."""
    with pytest.raises(ConfigError) as err:
        check_train_config(composed("config", overrides, tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    return str(err.value)


def mnist(tmp_path, *extra):
    return refused(tmp_path, ["data=mnist", f"data.data_dir={tmp_path / 'mnist'}", "data.split=test", *extra])


def test_truncated_gzip_is_named(tmp_path):
    make_mnist(tmp_path / "mnist", "t10k", n=40)
    raw = (tmp_path / "mnist" / IMAGES).read_bytes()
    (tmp_path / "mnist" / IMAGES).write_bytes(raw[: len(raw) // 2])
    message = mnist(tmp_path)
    assert f"data: {tmp_path / 'mnist' / IMAGES}" in message and "download it again" in message, message


def test_gzip_that_is_not_gzip_is_named(tmp_path):
    make_mnist(tmp_path / "mnist", "t10k", n=40)
    (tmp_path / "mnist" / LABELS).write_bytes(b"<html>rate limited</html>")
    message = mnist(tmp_path)
    assert str(tmp_path / "mnist" / LABELS) in message and "cannot be read" in message, message


def test_wrong_idx_magic_is_named(tmp_path):
    make_mnist(tmp_path / "mnist", "t10k", n=40)
    with gzip.open(tmp_path / "mnist" / IMAGES, "wb") as f:
        f.write(b"\x12\x34\x08\x03" + bytes(100))
    message = mnist(tmp_path)
    assert str(tmp_path / "mnist" / IMAGES) in message and "not an IDX file (magic bytes 12340803" in message, message


def test_image_and_label_counts_that_disagree_are_named(tmp_path):
    make_mnist(tmp_path / "mnist", "t10k", n=40)
    write_idx(tmp_path / "mnist" / LABELS, np.zeros(39, np.uint8), gz=True)
    message = mnist(tmp_path)
    assert "holds 40 images but" in message and f"{tmp_path / 'mnist' / LABELS} 39 labels" in message, message


def test_swapped_files_are_named(tmp_path):
    make_mnist(tmp_path / "mnist", "t10k", n=40)
    folder = tmp_path / "mnist"
    shutil.move(folder / IMAGES, folder / "tmp.gz")
    shutil.move(folder / LABELS, folder / IMAGES)
    shutil.move(folder / "tmp.gz", folder / LABELS)
    assert "are the two files swapped?" in mnist(tmp_path)


def test_intact_files_load_after_passing_the_check(tmp_path):
    images, _ = make_mnist(tmp_path / "mnist", "t10k", n=40)
    dm = MNISTDataModule(data_dir=str(tmp_path / "mnist"), split="test", batch_size=8)
    assert dm.num_train_items() == 36 and (source_items(dm)[0][:, 0].numpy() == images).all()


def test_empty_image_folder_class_is_named(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat" / "a.png")
    (tmp_path / "images" / "dog" / "notes.txt").write_text("no images here")
    message = refused(tmp_path, ["data=image_folder", f"data.data_dir={tmp_path / 'images'}", "data.batch_size=1"])
    assert f"class folder '{tmp_path / 'images' / 'dog'}' holds no image file" in message, message


@pytest.mark.parametrize("arrays,expected", [
    ({"images": np.zeros((2, 12288), np.uint8), "labels": np.ones(2)}, "holds the arrays ['images', 'labels'], not ['data']"),
    (None, "cannot be read as an npz file"),
])
def test_npz_batch_without_the_expected_arrays_is_named(tmp_path, arrays, expected):
    path = tmp_path / "imagenet" / "train_data_batch_1.npz"
    path.parent.mkdir()
    if arrays is None:
        path.write_bytes(b"PK\x03\x04 truncated")
    else:
        np.savez(path, **arrays)
    message = refused(tmp_path, ["data=imagenet64", f"data.data_dir={path.parent}", "model=unet_small"])
    assert str(path) in message and expected in message, message


def test_cifar_batch_that_is_not_one_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": [0]}, f, protocol=2)  # no b"data"
    with pytest.raises(ValueError, match=f"{folder / 'test_batch'} is not a CIFAR-10 python batch"):
        source_items(CIFAR10DataModule(data_dir=str(tmp_path), split="test"))
