"""Build the data module, the network and the LightningModule from config groups: used by train.py and to rebuild a
model from the config stored in its checkpoint (cfglab.checkpoints)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

BUILD_KEYS = ("data", "model", "schedule", "module")  # what a checkpoint needs to rebuild its module


def data_shape(datamodule) -> dict:
    """The model arguments that the data decide: image_size, in_channels (of what the model takes: images, or
    their latents with a latent space), num_classes."""
    channels, size = datamodule.model_input()
    return {"image_size": size, "in_channels": channels, "num_classes": datamodule.num_classes}


def build_net(model: DictConfig, datamodule):
    """The network of the `model` config for `datamodule`'s data; a shape the config sets itself must be the
    data's."""
    shape = data_shape(datamodule)
    for k, v in shape.items():
        if k in model and model[k] != v:
            raise ValueError(f"{k}={model[k]} disagrees with the data ({type(datamodule).__name__} has {k}={v})")
    return instantiate(model, **shape)


def build(cfg: DictConfig):
    """(data module, LightningModule); `module.build_config` is what its checkpoints store to rebuild it."""
    datamodule = instantiate(cfg.data)
    net = build_net(cfg.model, datamodule)
    # A checkpoint's build config has no weighting: sampling needs no training loss.
    weighting = instantiate(cfg.weighting) if "weighting" in cfg else None
    module = instantiate(cfg.module, net=net, schedule=instantiate(cfg.schedule), num_classes=datamodule.num_classes,
                         weighting=weighting)
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in BUILD_KEYS}
    config["model"] |= data_shape(datamodule)
    module.build_config = config
    return datamodule, module
