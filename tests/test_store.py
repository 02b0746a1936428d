"""The prepared store: resumable and parallel preparation, refusal of damaged or foreign stores, flips."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfglab.data.digits import DigitsDataModule
from cfglab.data.image_folder import ImageFolderDataModule
from cfglab.data.loader import Batches
from cfglab.data.store import Items, Store, prepare
from helpers import ROOT, composed

CHUNK = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of 3 classes, 70 JPEGs of varied sizes and colours (not a multiple of the chunk)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(70):
        cls = root / f"class_{i % 3}"
        cls.mkdir(exist_ok=True)
        size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(cls / f"{i:03d}.jpg")
    return root


def source(folder, image_size=16):
    return ImageFolderDataModule(data_dir=str(folder), image_size=image_size).source()


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """An uninterrupted prepare in this process."""
    return prepare(source(folder), tmp_path_factory.mktemp("ref") / "store", workers=1, chunk=CHUNK)


def assert_same_store(a: Store, b: Store):
    assert a.header == b.header
    assert np.array_equal(a.array, b.array) and np.array_equal(a.labels, b.labels)


def test_reference_store_holds_the_source(folder, reference):
    x, y = source(folder).read(0, 70)
    assert reference.array.shape == (70, 3, 16, 16) and reference.array.dtype == np.uint8
    assert np.array_equal(reference.array, x) and np.array_equal(reference.labels, y)
    assert not (reference.path / "plan.json").exists() and not (reference.path / "chunks").exists()
    assert len(reference.header["arrays"]["images"]["chunks"]) == 9  # ceil(70 / 8)


@pytest.mark.slow
def test_two_workers_equal_one(folder, reference, tmp_path):
    assert_same_store(prepare(source(folder), tmp_path / "store", workers=2, chunk=CHUNK), reference)


KILLABLE = """
import logging, sys, time
logging.basicConfig(level=logging.INFO)
from cfglab.data.image_folder import ImageFolderDataModule
from cfglab.data.store import prepare
src = ImageFolderDataModule(data_dir=sys.argv[1], image_size=16).source()
read = src.read
def slow(start, stop):
    time.sleep(0.3)
    return read(start, stop)
src.read = slow
prepare(src, sys.argv[2], workers=1, chunk=int(sys.argv[3]))
"""


@pytest.mark.slow
def test_killed_prepare_continues_and_equals_an_uninterrupted_one(folder, reference, tmp_path, caplog):
    path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(folder), str(path), str(CHUNK)], cwd=ROOT)
    deadline = time.time() + 120
    while len(list((path / "chunks").glob("*"))) < 3:  # a few chunks finished, the rest not
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (path / "header.json").exists()
    with pytest.raises(ValueError, match=r"header.json cannot be read.*not a finished store"):
        Store(path)
    done = len(list((path / "chunks").glob("*")))
    with caplog.at_level(logging.INFO, logger="cfglab.data.store"):
        resumed = prepare(source(folder), path, workers=1, chunk=CHUNK)
    assert f"{9 - done} of 9 chunks to write" in caplog.text  # it continued: the finished chunks were kept
    assert_same_store(resumed, reference)


@pytest.mark.slow
def test_two_processes_preparing_one_store_take_turns(folder, reference, tmp_path):
    path = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", KILLABLE, str(folder), str(path), str(CHUNK)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs
    assert sorted("preparing 70 items" in text for text in logs) == [False, True]  # one wrote, the other waited
    assert any("is being prepared by another process: waiting for it" in text for text in logs)
    assert_same_store(Store(path), reference)


def test_an_unfinished_store_of_another_source_is_refused(folder, tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    (path / "plan.json").write_text(json.dumps({"key": {"data": "something else"}}))
    with pytest.raises(ValueError, match=f"{path} holds an unfinished store of another source"):
        prepare(source(folder), path, chunk=CHUNK)


@pytest.fixture
def copy(reference, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(reference.path, path)
    return path


def test_truncated_images_are_refused_naming_the_file(copy):
    data = (copy / "images.npy").read_bytes()
    (copy / "images.npy").write_bytes(data[:-1000])
    with pytest.raises(ValueError, match=r"images.npy cannot be mapped .*truncated or damaged; delete the folder"):
        Store(copy)


def test_wrong_label_count_is_refused_naming_the_file(copy):
    np.save(copy / "labels.npy", np.zeros(69, np.int64))
    with pytest.raises(ValueError, match=r"labels.npy holds int64 \[69\], but .*header.json says int64 \[70\]"):
        Store(copy)


def test_changed_pixels_are_refused_naming_the_items(copy):
    images = np.load(copy / "images.npy", mmap_mode="r+")
    images[66, 0, 0, 0] ^= 1  # in the last chunk, which opening checks
    images.flush()
    del images
    with pytest.raises(ValueError, match=r"images.npy: items 64 ... 69 do not match their checksum"):
        Store(copy)


def test_a_store_of_other_settings_is_refused_naming_what_differs(folder, copy):
    other = source(folder, image_size=8).key
    with pytest.raises(ValueError, match=rf"{copy} holds another source or other settings \(differing in "
                                         r"\['image_size'\]\)"):
        Store(copy, other)
    Store(copy, source(folder).key).verify()  # the right key opens, and every chunk checks


def test_a_second_run_finds_the_store_and_a_damaged_one_stops_the_run_check(tmp_path, caplog):
    from cfglab.config_checks import ConfigError, check_train_config

    dm = DigitsDataModule(store_root=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="cfglab.data.store"):
        first = dm.store()
        assert "preparing 1797 items" in caplog.text
        caplog.clear()
        again = DigitsDataModule(store_root=str(tmp_path)).store()
        assert "preparing" not in caplog.text and again.path == first.path
    assert DigitsDataModule(store_root=str(tmp_path), image_size=16).store_path() != first.path  # other settings

    labels = np.load(first.path / "labels.npy")
    labels[0] = (labels[0] + 1) % 10
    np.save(first.path / "labels.npy", labels)
    cfg = composed("config", [f"data.store_root={tmp_path}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data: .*labels.npy does not match its checksum.*delete the folder"):
        check_train_config(cfg)
    assert not (tmp_path / "run").exists()


def test_flips_depend_on_seed_epoch_and_step_alone_and_not_on_the_number_of_processes():
    x = torch.arange(64 * 3 * 4, dtype=torch.uint8).reshape(64, 1, 3, 4)  # every row asymmetric
    items = Items(x, torch.arange(64), np.arange(64))
    plain = list(Batches(items, 8, seed=5))
    flipped = list(Batches(items, 8, seed=5, hflip=True))
    n_flipped = 0
    for (xa, ya), (xb, yb) in zip(plain, flipped):
        assert torch.equal(ya, yb)  # the same items in the same order
        mirrored = (xb == xa.flip(-1)).flatten(1).all(1)
        assert (mirrored | (xb == xa).flatten(1).all(1)).all()  # each image as it is, or mirrored
        n_flipped += int(mirrored.sum())
    # p = 1/2 per image: 64 images, 4 standard deviations
    assert abs(n_flipped - 32) <= 4 * (64 * 0.25) ** 0.5
    two = [list(Batches(items, 4, seed=5, rank=r, world_size=2, hflip=True)) for r in range(2)]
    for step, (xb, _) in enumerate(flipped):  # rank r holds the r-th half of each global batch, flipped the same
        assert torch.equal(torch.cat([two[0][step][0], two[1][step][0]]), xb)
    resumed = list(Batches(items, 8, seed=5, start=lambda: 3, hflip=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(flipped[3:], resumed))
    later = list(Batches(items, 8, seed=5, start=lambda: 8, hflip=True))  # epoch 1: another order, other flips
    assert not torch.equal(later[0][1], flipped[0][1])


def test_flips_are_refused_for_items_that_are_not_images():
    with pytest.raises(ValueError, match=r"hflip=true needs images \(C, H, W\), not items of shape \(2,\)"):
        Batches(Items(torch.zeros(10, 2), torch.zeros(10), np.arange(10)), 2, hflip=True)


def test_hflip_defaults_follow_the_kind_of_data(folder):
    assert DigitsDataModule().hflip is False
    assert ImageFolderDataModule(data_dir=str(folder)).hflip is True
    assert DigitsDataModule(hflip=True).hflip is True


@pytest.mark.slow
def test_two_ddp_ranks_map_one_store_and_draw_disjoint_items_that_cover_the_epoch(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_store_script.py"), str(tmp_path / "out"),
                           str(tmp_path / "stores")], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["store"] == ranks[1]["store"] and len(list((tmp_path / "stores").iterdir())) == 1
    a, b = set(ranks[0]["drawn"]), set(ranks[1]["drawn"])
    assert len(a) == len(ranks[0]["drawn"]) == len(b) == len(ranks[1]["drawn"]) == 12 * 64  # 1617 // 128 batches
    assert not a & b
    train = set(ranks[0]["train"])
    assert a | b <= train and len(train - (a | b)) == len(train) % 128  # all but the dropped incomplete batch


@pytest.mark.slow
def test_prepare_py_prepares_once_and_refuses_bad_settings(tmp_path):
    def prepare_py(*args):
        return subprocess.run([sys.executable, str(ROOT / "prepare.py"), f"hydra.run.dir={tmp_path / 'run'}", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "CFGLAB_STORE": str(tmp_path / "stores")})

    first, second = prepare_py(), prepare_py("verify=true")
    assert first.returncode == second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    path = first.stdout.strip().splitlines()[-1].removeprefix("store: ")
    assert second.stdout.strip().splitlines()[-1] == f"store: {path}" and Store(path).num_items == 1797
    assert Path(path).parent == tmp_path / "stores"  # $CFGLAB_STORE
    assert "preparing 1797 items" in first.stderr + first.stdout and "preparing" not in second.stderr + second.stdout
    for args, message in ((["data=gmm"], "data: cfglab.data.gmm.GaussianMixtureDataModule draws its items in memory"),
                          (["data.prepare_workers=0"], "data: data.prepare_workers=0 must be >= 1")):
        bad = prepare_py(*args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
