"""Build the data module and the LightningModule from config groups: used by train.py and to rebuild a model
from the config stored in its checkpoint (cfglab.checkpoints)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

BUILD_KEYS = ("data", "model", "schedule", "module")  # what a checkpoint needs to rebuild its module


def build(cfg: DictConfig):
    """Instantiate data module and LightningModule; the model's shape comes from the data."""
    datamodule = instantiate(cfg.data)
    net = instantiate(
        cfg.model, image_size=datamodule.image_size, in_channels=datamodule.channels,
        num_classes=datamodule.num_classes,
    )
    module = instantiate(cfg.module, net=net, schedule=instantiate(cfg.schedule), num_classes=datamodule.num_classes)
    module.build_config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in BUILD_KEYS}
    return datamodule, module
