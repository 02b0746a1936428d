"""Helpers shared by the tests: paths, small models, toy networks, composed configs and data fixtures."""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from cfglab.diffusion.sampling import sample
from cfglab.diffusion.schedules import Cosine
from cfglab.diffusion.targets import Prediction, broadcast
from cfglab.lightning.module import CFGDiffusion
from cfglab.models.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def small_module(**kw) -> CFGDiffusion:
    """An untrained 8x8 digits-shaped model, fast enough for unit tests."""
    net = UNet(image_size=8, in_channels=1, num_classes=10, base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    return CFGDiffusion(net, Cosine(), num_classes=10, **kw)


def sample_module(module, labels, sampler, guidance, w, generator=None, **settings):
    """`sample` on a CFGDiffusion's network, clipping x0 to the image range [-1, 1] unless told otherwise."""
    settings = {"clip_x0": 1.0, **settings}
    images, _ = sample(sampler=sampler, guidance=guidance, labels=labels, w=w, generator=generator,
                       **module.sampling_args(), **settings)
    return images


class Recorder:
    """A toy net whose output depends on the label; records the batch sizes and labels it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, labels):
        self.calls.append(labels.clone())
        shape = (-1,) + (1,) * (x.ndim - 1)
        return torch.tanh(x) * (1 + labels.float().view(shape)) + t.view(shape)


def gaussian_denoiser(schedule, mean: float, std: float):
    """Exact denoiser for data x0 ~ N(mean, std^2 I): E[x0 | x_t] in closed form; t is a float, as samplers give it."""

    def denoise(x, t, labels=None):
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        alpha, sigma = (broadcast(v, x) for v in schedule.alpha_sigma(tt))
        x0 = mean + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x - alpha * mean)
        return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)

    return denoise


def source_items(datamodule):
    """Every item of a data module's source, as its prepare step reads them: uint8 images and int64 labels."""
    source = datamodule.source()
    x, y = source.read(0, len(source))
    return torch.from_numpy(x), torch.from_numpy(y)


def composed(config_name, overrides, run_dir):
    """A train/evaluate config composed as Hydra would, with the run directory set (no hydra node)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


def write_idx(path, array: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open(path, "wb") if gz else open(path, "wb")).write(data)


def make_mnist(folder, prefix, n=40, gz=True):
    """Random 28x28 IDX image and label files named like MNIST's, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    sfx = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", labels, gz)
    return images, labels


def wandb_records(run_dir):
    """The protobuf records of an offline W&B run (its run-*.wandb file: a LevelDB-style log of 32 KiB blocks,
    after a 7-byte ':W&B' header), as W&B's own sync reads them."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = next(Path(run_dir).glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding at the end of a block or of the file
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run, each as {key: value}."""
    import json

    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]


def wandb_charts(run_dir) -> dict[str, dict]:
    """The custom charts of an offline W&B run: {chart key: its field settings (x, y, stroke)}."""
    import json

    charts = {}
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "config":
            for u in r.config.update:
                path = [*u.nested_key] or [u.key]
                if path[:2] == ["_wandb", "visualize"]:
                    charts[path[2]] = json.loads(u.value_json)["panel_config"]["fieldSettings"]
    return charts


def wandb_run(run_dir):
    """The run record (name, group, job type, ...) of an offline W&B run."""
    return next(r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run")


def save_vae(path, seed):
    """A random AutoencoderKL with 4x downsampling (3 blocks) and 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL.from_config(dict(
        latent_channels=4, block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4, layers_per_block=1)).save_pretrained(path)
    return str(path)
