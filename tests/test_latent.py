"""Latent diffusion on CPU with tiny random VAEs (diffusers' AutoencoderKL from a config dict, never fetched):
the encoded store, the normalisation applied once, flips that survive pre-encoding, resumable encoding, refusal
of another VAE, the configuration check, and train.py -> sweep -> grids -> generate.py end to end with a DiT."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cfglab.config_checks import ConfigError, check_train_config
from cfglab.data.image_folder import ImageFolderDataModule
from cfglab.data.store import Store
from cfglab.images import to_model_range
from cfglab.latent.encode import encode_store
from cfglab.latent.vae import VAELatents
from helpers import ROOT, composed, save_vae

TINY_DIT = ["model=dit", "model.variant=null", "model.depth=2", "model.hidden_size=32", "model.num_heads=2",
            "model.patch_size=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An ImageFolder of 3 classes (24 PNGs, 16x16 after centre-cropping) and two VAEs that differ in weights."""
    root = tmp_path_factory.mktemp("latent")
    rng = np.random.default_rng(0)
    for i in range(24):
        cls = root / "images" / f"class_{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(cls / f"{i:03d}.png")
    return {"images": root / "images", "vae": save_vae(root / "vae_a", 0), "other": save_vae(root / "vae_b", 1),
            "stores": root / "stores"}


def datamodule(files, vae="vae", normalisation="scaling_factor", **kw):
    latent = VAELatents(files[vae], normalisation=normalisation, batch_size=5)
    return ImageFolderDataModule(data_dir=str(files["images"]), image_size=16, batch_size=4,
                                 store_root=str(kw.pop("store_root", files["stores"])), latent=latent, **kw)


def test_items_are_the_posteriors_of_each_image_and_of_its_mirror_image(files):
    dm = datamodule(files)
    store, images = dm.latent_store(), torch.from_numpy(np.array(dm.store().array))
    assert store.array.shape == (24, 2, 8, 4, 4) and store.array.dtype == np.float16
    vae = dm.latent.module()
    x = to_model_range(images, 16)
    for k, batch in enumerate((x, x.flip(-1))):  # the flipped encoding is the encoding of the flipped image
        with torch.no_grad():
            dist = vae.encode(batch).latent_dist
        stored = torch.from_numpy(np.asarray(store.array[:, k], dtype=np.float32))
        assert torch.allclose(stored[:, :4], dist.mean, rtol=2e-3, atol=2e-3)
        assert torch.allclose(stored[:, 4:], dist.std, rtol=2e-3, atol=2e-3)
    flipped_encoding = torch.from_numpy(np.asarray(store.array[:, 0, :4], dtype=np.float32)).flip(-1)
    assert not torch.allclose(flipped_encoding, torch.from_numpy(np.asarray(store.array[:, 1, :4], np.float32)),
                              atol=0.05)  # a mirrored latent is not the latent of the mirrored image


def test_normalisation_round_trips_the_vaes_own_decode(files):
    dm = datamodule(files)
    dm.latent_store()
    assert dm.latent.stats == {"shift": [0.0] * 4, "scale": [0.18215] * 4}
    z = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        expected = dm.latent.module().decode(z).sample.clamp(-1, 1)
    assert torch.allclose(dm.decoder(dm.latent.normalise(z)), expected, atol=1e-6)
    assert torch.allclose(dm.latent.normalise(z), z * 0.18215)


def test_per_channel_normalisation_gives_training_batches_of_zero_mean_and_unit_variance(files):
    """shift and scale measured at encoding, applied once to what training sees (posterior samples of both
    flips): 40 epochs x 24 items x 16 positions per channel."""
    dm = datamodule(files, normalisation="per_channel", val_fraction=0.0, hflip=True)
    dm.setup()
    stats = json.loads((dm.latent_store().path / "stats.json").read_text())
    assert stats == dm.latent.stats and len(set(stats["scale"])) == 4
    batches = dm.train_dataloader()
    seen = []
    for epoch in range(40):
        batches.start = lambda e=epoch: e * len(batches)
        seen += [dm.on_after_batch_transfer(b, 0)[0] for b in batches]
    z = torch.cat(seen).transpose(0, 1).reshape(4, -1)
    assert z.abs().max() < 20  # not normalised twice, nor never: the raw latents' scale is other
    assert torch.allclose(z.mean(1), torch.zeros(4), atol=0.1), z.mean(1)
    assert torch.allclose(z.var(1), torch.ones(4), atol=0.1), z.var(1)


KILLABLE = """
import sys, time
from cfglab.data.image_folder import ImageFolderDataModule
from cfglab.latent.encode import EncodedSource, encode_store
from cfglab.latent.vae import VAELatents
read = EncodedSource.read
def slow(self, start, stop):
    time.sleep(0.3)
    return read(self, start, stop)
EncodedSource.read = slow
dm = ImageFolderDataModule(data_dir=sys.argv[1], image_size=16, store_root=sys.argv[3],
                           latent=VAELatents(sys.argv[2], batch_size=5))
encode_store(dm.store(), dm.latent, 16, chunk=2)
"""


@pytest.mark.slow
def test_killed_encoding_continues_and_equals_an_uninterrupted_one(files, tmp_path):
    ref = datamodule(files, store_root=tmp_path / "reference")
    reference = encode_store(ref.store(), ref.latent, 16, chunk=2)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(files["images"]), files["vae"], str(tmp_path)],
                            cwd=ROOT)
    deadline = time.time() + 120
    while not list(tmp_path.glob("ImageFolder*/latents-*/chunks/*"))[2:]:  # three chunks encoded, the rest not
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed = next(tmp_path.glob("ImageFolder*/latents-*"))
    assert not (killed / "header.json").exists()
    dm = datamodule(files, store_root=tmp_path)
    resumed = encode_store(dm.store(), dm.latent, 16, chunk=2)
    assert resumed.path == killed and resumed.header == reference.header
    assert np.array_equal(resumed.array, reference.array)


def test_a_store_or_a_model_of_another_vae_is_refused(files):
    ours, other = datamodule(files), datamodule(files, vae="other")
    store = ours.latent_store()
    with pytest.raises(ValueError, match=r"differing in \['weights_sha256'\]"):
        Store(store.path, {"images": ours.store().header["key"], **other.latent.key()})
    assert other.latent_store().path != store.path  # another VAE encodes into its own store
    with pytest.raises(ValueError, match=r"data.latent.pretrained=.*vae_b.*differ in \['weights_sha256'\]"):
        other.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("overrides, expected", [
    (["data.latent.pretrained=/nonexistent/vae"], ["data.latent.pretrained='/nonexistent/vae'", "no config.json"]),
    (["data.image_size=18"], ["data.image_size=18 is not divisible by the downsampling factor 4"]),
    (["model.patch_size=8"], ["model", "image_size=4", "not divisible by patch_size=8"]),
    (["data.latent.normalisation=minmax"], ["data.latent.normalisation='minmax'"]),
    (["data.latent.device=gpu"], ["data.latent.device='gpu'"]),
])
def test_a_vae_that_does_not_fit_is_refused_by_the_configuration_check(files, tmp_path, overrides, expected):
    base = ["data=image_folder", f"data.data_dir={files['images']}", "data.image_size=16", "latent=sd_vae",
            f"data.latent.pretrained={files['vae']}", f"data.store_root={tmp_path / 'stores'}", "data.batch_size=4", *TINY_DIT]
    check_train_config(composed("config", base, tmp_path / "good"))
    with pytest.raises(ConfigError) as err:
        check_train_config(composed("config", base + overrides, tmp_path / "run"))
    for s in expected:
        assert s in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "stores").exists()


def test_vae_channels_must_be_the_datas(files, tmp_path):
    cfg = composed("config", ["latent=sd_vae", f"data.latent.pretrained={files['vae']}", *TINY_DIT], tmp_path / "r")
    with pytest.raises(ConfigError, match=r"encodes images of 3 channels, but the data have 1"):
        check_train_config(cfg)


def run(*args, timeout=900):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_train_sweep_grids_and_generate_in_latent_space_with_two_ddp_ranks(files, tmp_path):
    """train.py with a DiT on VAE latents on 2 gloo DDP processes: the store is encoded once, the sweep and
    the grids are of decoded images, the checkpoint carries the normalisation, generate.py writes decoded
    images and refuses another VAE."""
    run_dir = tmp_path / "run"
    run("train.py", "data=image_folder", f"data.data_dir={files['images']}", "data.image_size=16",
        "data.batch_size=4", "latent=sd_vae", f"data.latent.pretrained={files['vae']}",
        f"data.store_root={tmp_path / 'stores'}", *TINY_DIT, "trainer.max_steps=4", "strategy=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "logger=none", "sweep.ws=[0,2]", "sweep.num_samples=12",
        "sweep.batch_size=4", "grids.ws=[2]", "grids.per_class=2",
        "sampler.steps=4", "metrics.classifier_epochs=1", f"hydra.run.dir={run_dir}")
    assert len(list((tmp_path / "stores").glob("*/latents-*/header.json"))) == 1
    points = json.loads((run_dir / "sweep.json").read_text())["points"]
    assert [p["w"] for p in points] == [0, 2] and all(np.isfinite(p["fid"]) for p in points)
    with Image.open(run_dir / "samples_w2.png") as grid:  # 3 classes x 2 decoded 16x16 RGB images
        assert grid.mode == "RGB" and grid.width > 2 * 16 and grid.height > 3 * 16
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ImageFolderDataModule"]["latent_stats"]["scale"] == [0.18215] * 4
    assert ckpt["cfglab_config"]["model"]["image_size"] == 4 and ckpt["cfglab_config"]["model"]["in_channels"] == 4

    gen = tmp_path / "gen"
    run("generate.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "ws=[1]", "num_samples=7",
        "batch_size=4", "sampler.steps=4", f"hydra.run.dir={gen}")
    with np.load(gen / "w1" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (7, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
        assert npz["arr_1"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    proc = subprocess.run([sys.executable, "generate.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                           f"+data.latent.pretrained={files['other']}", "num_samples=2", f"hydra.run.dir={tmp_path / 'g2'}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0 and "is not the latent space this model was trained in" in proc.stderr
    assert not (tmp_path / "g2" / "w1").exists()


@pytest.mark.slow
def test_sigkill_then_resume_with_a_dit_on_latents_is_bit_identical(files, tmp_path):
    """Batches, flips and posterior samples are drawn from (seed, epoch, step): a DiT run killed after a
    checkpoint and resumed ends with the weights, EMA weights and optimizer state of an uninterrupted run."""
    steps = 30
    args = ["train.py", "data=image_folder", f"data.data_dir={files['images']}", "data.image_size=16",
            "data.batch_size=4", "latent=sd_vae", f"data.latent.pretrained={files['vae']}",
            f"data.store_root={tmp_path / 'stores'}", *TINY_DIT, f"trainer.max_steps={steps}",
            "callbacks.checkpoint.every_n_train_steps=5", "~callbacks.sweep", "grids.ws=[]", "logger=none",
            "trainer.enable_progress_bar=false"]
    run(*args, f"hydra.run.dir={tmp_path / 'whole'}")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *args, f"hydra.run.dir={killed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] < steps
    run(*args, f"hydra.run.dir={killed}")
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (tmp_path / "whole", killed))
    assert a["global_step"] == b["global_step"] == steps
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
