"""The prepare job: write (or find and check) the store of the configured data set."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from cfglab.config_checks import check_prepare_config

log = logging.getLogger(__name__)


def prepare_store(cfg: DictConfig) -> Path:
    """Fetch the data set's files where data.download allows it, prepare its store if there is none (and, with a
    latent space, encode it), check them (every chunk with verify=true), and return the folder of what the model
    trains on."""
    check_prepare_config(cfg)
    data = instantiate(cfg.data)
    t0 = time.perf_counter()
    data.prepare_data()
    stores = [data.store()] + ([data.latent_store()] if data.latent is not None else [])  # images, their latents
    for store in stores:
        if cfg.verify:
            store.verify()
        log.info("%s: %d items of shape %s, %.2f GB, ready in %.1f s", store.path, len(store),
                 list(store.array.shape[1:]), store.array.nbytes / 1e9, time.perf_counter() - t0)
    return stores[-1].path
