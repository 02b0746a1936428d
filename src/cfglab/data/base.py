"""Image data modules over a prepared store: every process reads the same uint8 arrays through the node's page
cache; batches are gathered as uint8 and turned into the model's range [-1, 1] on the training device."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from cfglab.data.loader import Batches, training_batches
from cfglab.data.store import Items, Source, Store, prepare, store_name
from cfglab.images import to_model_range
from cfglab.latent.encode import encode_store
from cfglab.latent.vae import VAELatents


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses give `make_source()`, the items to prepare (cfglab.data.store.Source), and may fetch
    missing files in `fetch()`.

    The store of a data set lives in `store_root`, in a folder named after its source and settings, so a second
    run finds it; it is prepared once, by global rank 0 with `prepare_workers` processes, before any process
    opens it. A seeded `val_fraction` of its items is held out for validation, evaluation references and the
    feature extractor's test accuracy; the rest trains. hflip: mirror training images left-right with
    probability 1/2 (null: the data set's default, on for photographs, off for digits and other drawn symbols).

    latent: a VAE's latent space (cfglab.latent.vae.VAELatents, conf/latent/) for latent diffusion: the store is
    encoded once more into it (cfglab.latent.encode), the model trains on normalised latents (c, S/f, S/f), and
    every sampling caller decodes with `decode` before metrics, grids and export. The images stay in the store:
    evaluation references and feature extractors read them. null: the model works on the images.
    """

    num_classes: int
    channels: int
    photographs = False  # the default of hflip
    prepare_data_per_node = False  # one process prepares the store, on a filesystem every node sees

    def __init__(self, image_size: int, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                 hflip: Optional[bool] = None, store_root: str = ".cache/cfglab/stores", prepare_workers: int = 1,
                 latent: Optional[VAELatents] = None):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction={val_fraction} must lie in [0, 1)")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        if image_size < 1:
            raise ValueError(f"data.image_size={image_size} must be >= 1")
        if prepare_workers < 1:
            raise ValueError(f"data.prepare_workers={prepare_workers} must be >= 1")
        self.image_size, self.batch_size, self.val_fraction = int(image_size), int(batch_size), float(val_fraction)
        self.seed, self.hflip = int(seed), self.photographs if hflip is None else bool(hflip)
        self.store_root, self.prepare_workers = Path(str(store_root)).expanduser(), int(prepare_workers)
        self.latent = latent
        if latent is not None:
            latent.latent_size(self.image_size)  # refuses an image size the VAE does not divide
        # Samples live in [-1, 1] (sampling's clip_x0 "auto"); latents are unbounded and not clipped.
        self.data_range: Optional[float] = None if latent is not None else 1.0
        self._source: Optional[Source] = None
        self._store: Optional[Store] = None
        self._latents: Optional[Store] = None

    # -- what subclasses give

    def make_source(self) -> Source:
        """The items of this data set as the store keeps them (uint8 at image_size), read on demand."""
        raise NotImplementedError

    def fetch(self) -> None:
        """Download missing source files where the data set offers it (data.download=true)."""

    def num_items(self) -> Optional[int]:
        """How many items the source holds, found without reading them (file headers, a directory listing), so
        that the configuration check can compare the batch size with the training split and refuse damaged
        files before anything runs; None when that cannot be told cheaply (the files are still to be fetched)."""
        return None

    # -- the store

    def source_key(self) -> dict:
        """What identifies the items (the class, the files and their sizes and times, the settings that change
        them): the store's key. A subclass whose source is costly to list gives it without listing."""
        return self.source().key

    def source(self) -> Source:
        if self._source is None:
            self._source = self.make_source()
        return self._source

    def store_path(self) -> Path:
        """Where this data set's store lives: <store_root>/<class>-<hash of the source's key>."""
        return self.store_root / store_name(type(self).__name__, self.source_key())

    def prepared(self) -> bool:
        return (self.store_path() / "header.json").exists()

    def prepare_data(self) -> None:
        """Fetch missing files, then prepare the store if it is not there, and encode it into the latent space if
        there is one (Lightning runs this once, before any process opens the store)."""
        self.store()
        if self.latent is not None:
            self.latent_store()

    def store(self) -> Store:
        """The store, opened once per process (prepared first when a single process finds none, as evaluate.py
        and the tests do; under Lightning, prepare_data has run before); a truncated or foreign store is a
        ValueError naming the file and what to do."""
        if self._store is None:
            self.fetch()
            if not self.prepared():
                prepare(self.source(), self.store_path(), self.prepare_workers)
            self._store = Store(self.store_path(), self.source_key())
        return self._store

    def latent_store(self) -> Store:
        """The store of the data set's VAE latents, encoded first if it is not there; opening it gives the latent
        space its normalisation (refused if that differs from the one a loaded checkpoint was trained with)."""
        if self._latents is None:
            self._latents = encode_store(self.store(), self.latent, self.image_size)
        return self._latents

    def model_input(self) -> tuple[int, int]:
        """(channels, side) of what the model takes: the images', or their latents'."""
        if self.latent is None:
            return self.channels, self.image_size
        self.latent.check_image_channels(self.channels)
        return self.latent.channels, self.latent.latent_size(self.image_size)

    @property
    def decoder(self):
        """The model's samples (B, c, h, w) -> images in [-1, 1] (B, C, S, S): the VAE's decoder with the latent
        normalisation undone; None when the model works on images, whose samples are images already."""
        return None if self.latent is None else self.latent.decode

    # -- splits and batches

    def num_train_items(self) -> Optional[int]:
        """The size of the training split: from the store when it exists (which also checks it), else from the
        source files' headers (None: not known before they are fetched)."""
        n = self.num_items()  # None: the files are still to be fetched, and no store can exist
        if n is not None and self.prepared():
            n = len(self.store())
        return None if n is None else n - int(round(self.val_fraction * n))

    def items(self, name: str, latents: bool = False) -> Items:
        """The images (or, with `latents`, the encoded latents) of split 'train' or 'val': a seeded permutation of
        the store's items, the first round(val_fraction * N) of which are held out."""
        store = self.latent_store() if latents else self.store()
        perm = torch.randperm(len(store), generator=torch.Generator().manual_seed(self.seed)).numpy()
        n_val = int(round(self.val_fraction * len(store)))
        return Items(store.rows, store.labels, perm[n_val:] if name == "train" else perm[:n_val])

    def setup(self, stage: Optional[str] = None) -> None:
        self.store()
        if self.latent is not None:
            self.latent_store()

    def train_dataloader(self) -> Batches:
        latents = self.latent is not None
        return training_batches(self.trainer, self.items("train", latents), self.batch_size, self.seed, self.hflip,
                                latents)

    def val_dataloader(self):
        if self.latent is None:
            return self.items("val").batches(self.batch_size)
        # The posterior means of the unflipped images: a validation loss without sampling noise of its own.
        c = self.latent.channels
        return self.items("val", latents=True).batches(self.batch_size, lambda x: x[:, 0, :c].float())

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the training device, one batch at a time: uint8 images -> float32 in [-1, 1]; VAE latents -> the
        model's normalised latents."""
        x, y = batch
        if self.latent is not None:
            return self.latent.normalise(x), y
        return (to_model_range(x, self.image_size) if x.dtype == torch.uint8 else x), y

    def state_dict(self) -> dict:
        """Saved in every checkpoint by Lightning: the latent normalisation, so a model decodes without its data."""
        if self.latent is None or self.latent.stats is None:
            return {}
        return {"latent_stats": self.latent.stats, "latent_key": self.latent.key()}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's state: the VAE must be the one it was trained with; its normalisation is taken."""
        if self.latent is not None and "latent_stats" in state:
            self.latent.check_key(state["latent_key"])
            self.latent.set_stats(state["latent_stats"])

