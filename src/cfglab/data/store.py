"""A prepared data set on disk: uint8 images and int64 labels as .npy arrays that every process of a node reads
through the one page cache they share.

A store folder holds
  images.npy   uint8 (N, C, S, S), the items in the source's order, at the configured image size (or, for a
               store of VAE latents, latents.npy: float16, see cfglab.latent.encode)
  labels.npy   int64 (N,)
  header.json  written last: the format and version, the source's identity and settings (`key`), the number of
               items, each array's dtype and shape, the labels' sha256 and a sha256 per chunk of items
and, while it is being prepared, plan.json (what is being written) and chunks/ (one empty file per finished chunk).

Why .npy: a row lies at a fixed offset, so a batch is gathered with one read per image and every DDP rank on a
node reads the same page-cache pages, none holding a copy; a chunk can be written in place by any worker
process, which makes preparation parallel and resumable (kill -9, rerun: the finished chunks stay); and any
tool reads the arrays without cfglab. safetensors maps as well but is written in one go (its header fixes every
offset), and one file per image, as fast-DiT does, costs millions of inodes on a cluster filesystem.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch

from cfglab.atomic import atomic_write_text

log = logging.getLogger(__name__)

FORMAT, VERSION = "cfglab-store", 1
CHUNK = 4096  # items per unit of work, of resumption and of checksum


class Source(Protocol):
    """What the prepare step reads: `key` (JSON, what identifies the items and how they are made), `shape`
    (C, S, S) of one stored image, len() items, and read(start, stop) -> (uint8 images (n, C, S, S), int64 labels
    (n,)) of items start ... stop - 1. A source is pickled to the worker processes."""

    key: dict
    shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]: ...


def store_name(prefix: str, key: dict) -> str:
    """The folder name of the store of `key` under the store root: found again by its source and settings."""
    return f"{prefix}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i * chunk, min(n, (i + 1) * chunk)) for i in range(math.ceil(n / chunk))]


REPREPARE = "delete the folder to prepare it again (or point data.store_root elsewhere)"


class Store:
    """A finished store: `array` (its items: images (N, C, S, S) uint8, or latents) and `labels` (N,) int64,
    memory-mapped read-only (for checks and tools), and `rows`, the items read row by row (what training batches
    are gathered from)."""

    def __init__(self, path: str | Path, key: Optional[dict] = None):
        """Open the store at `path`, checking its header (format, version and, if given, that it was made from
        `key`), that each array file holds what the header says (dtype, shape, size: a truncated file is named),
        the labels' checksum and the checksums of the first and the last chunk of images (`verify` checks
        every chunk). A problem is a ValueError naming the file and what to do."""
        self.path = Path(path)
        header_path = self.path / "header.json"
        try:
            self.header = json.loads(header_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{header_path} cannot be read ({e}): not a finished store; {REPREPARE}") from e
        if self.header.get("format") != FORMAT or self.header.get("version") != VERSION:
            raise ValueError(f"{header_path} is not a {FORMAT} version {VERSION} header: {REPREPARE}")
        if key is not None and self.header["key"] != key:
            differ = sorted(k for k in set(key) | set(self.header["key"]) if key.get(k) != self.header["key"].get(k))
            raise ValueError(f"{self.path} holds another source or other settings (differing in {differ}): "
                             f"{REPREPARE}")
        self.num_items, self.name = int(self.header["num_items"]), self.header.get("array", "images")
        self.array = self._map(self.name)
        self.labels = self._map("labels")
        self.rows = Rows(self.path / f"{self.name}.npy", self.array)
        if _sha256(self.labels) != self.header["arrays"]["labels"]["sha256"]:
            raise ValueError(f"{self.path / 'labels.npy'} does not match its checksum in {header_path}: {REPREPARE}")
        sums = self.header["arrays"][self.name]["chunks"]
        for i in sorted({0, len(sums) - 1}):
            self._check_chunk(i)

    def _map(self, name: str) -> np.ndarray:
        spec, file = self.header["arrays"][name], self.path / f"{name}.npy"
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:  # numpy refuses a file shorter than its header declares
            raise ValueError(f"{file} cannot be mapped ({e}): truncated or damaged; {REPREPARE}") from e
        if str(array.dtype) != spec["dtype"] or list(array.shape) != spec["shape"]:
            raise ValueError(f"{file} holds {array.dtype} {list(array.shape)}, but {self.path / 'header.json'} says "
                             f"{spec['dtype']} {spec['shape']}: {REPREPARE}")
        return array

    def _check_chunk(self, i: int) -> None:
        start, stop = _chunks(self.num_items, self.header["chunk"])[i]
        if _sha256(self.array[start:stop]) != self.header["arrays"][self.name]["chunks"][i]:
            raise ValueError(f"{self.path / (self.name + '.npy')}: items {start} ... {stop - 1} do not match their checksum "
                             f"in {self.path / 'header.json'}: {REPREPARE}")

    def verify(self) -> None:
        """Check every chunk's checksum (reads the whole store)."""
        for i in range(len(self.header["arrays"][self.name]["chunks"])):
            self._check_chunk(i)

    def __len__(self) -> int:
        return self.num_items


def _open_array(path: Path, dtype, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """The array file at `path` opened for writing in place, and whether it was (re)created."""
    try:
        array = np.load(path, mmap_mode="r+", allow_pickle=False)
        if array.dtype == np.dtype(dtype) and array.shape == shape:
            return array, False
    except (OSError, ValueError):
        pass
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape), True


_worker_source: Optional[Source] = None


def _set_worker_source(source: Source) -> None:
    """A worker process's initializer: the source is sent once, and keeps what it has loaded (a batch file, the
    file list) across the chunks the worker writes."""
    global _worker_source
    _worker_source = source


def _write_worker_chunks(folder: str, array: str, chunks: list[tuple[int, int]]) -> int:
    """In a worker: write a run of consecutive chunks (so that each worker reads few of the source's files), each
    marked finished as soon as it is on disk; returns the number of items written."""
    for start, stop in chunks:
        _write_chunk(_worker_source, folder, array, start, stop)
    return sum(stop - start for start, stop in chunks)


def _write_chunk(source: Source, folder: str, array: str, start: int, stop: int) -> None:
    """Read items start ... stop - 1 from the source, write them into the store's arrays and mark the chunk."""
    items, labels = source.read(start, stop)
    if items.shape != (stop - start, *source.shape) or labels.shape != (stop - start,):
        raise ValueError(f"the source gave {array} {items.shape} and labels {labels.shape} for items {start} ... "
                         f"{stop - 1}, expected {(stop - start, *source.shape)} and {(stop - start,)}")
    for name, values in ((array, items), ("labels", labels)):
        array = np.load(Path(folder) / f"{name}.npy", mmap_mode="r+", allow_pickle=False)
        array[start:stop] = values
        array.flush()  # on disk before the chunk is marked finished
        del array
    (Path(folder) / "chunks" / f"{start:012d}").touch()


def prepare(source: Source, path: str | Path, workers: int = 1, chunk: int = CHUNK, log_every_s: float = 30.0,
            array: str = "images", dtype=np.uint8) -> Store:
    """Write the store of `source` at `path` with `workers` processes (1: in this process) and open it; its items
    are kept in `array`.npy as `dtype` (uint8 images, or the float16 latents of cfglab.latent.encode).

    Resumable: the arrays are written in place chunk by chunk, each finished chunk is marked, and a rerun after a
    kill writes only the unmarked ones; the result equals an uninterrupted prepare with any number of workers.
    A folder that holds a finished store is opened, not written; one that holds another source's unfinished
    store is refused. Processes that prepare the same folder at once (the jobs of a multirun) take turns on a
    lock file (fcntl.flock, released by the kernel when its holder dies): the first writes, the others then
    open what it wrote. Progress is logged at most every `log_every_s` seconds."""
    path = Path(path)
    if (path / "header.json").exists():
        return Store(path, source.key)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "prepare.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s is being prepared by another process: waiting for it", path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "header.json").exists():  # else the other process finished it
            _write(source, path, workers, chunk, log_every_s, array, np.dtype(dtype))
    return Store(path, source.key)


def _write(source: Source, path: Path, workers: int, chunk: int, log_every_s: float, array: str,
           dtype: np.dtype) -> None:
    n, shape = len(source), tuple(int(s) for s in source.shape)
    if n < 1:
        raise ValueError(f"the source {source.key} holds no items")
    plan = {"format": FORMAT, "version": VERSION, "key": source.key, "num_items": n, "shape": list(shape),
            "chunk": int(chunk), "array": array}
    plan_path, marks = path / "plan.json", path / "chunks"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise ValueError(f"{path} holds an unfinished store of another source or other settings ({plan_path}): "
                         f"{REPREPARE}")
    atomic_write_text(plan_path, json.dumps(plan, indent=1))
    created = [_open_array(path / f"{array}.npy", dtype, (n, *shape))[1],
               _open_array(path / "labels.npy", np.int64, (n,))[1]]
    marks.mkdir(exist_ok=True)
    if any(created):  # new arrays: no chunk of them is written yet
        for mark in marks.iterdir():
            mark.unlink()
    todo = [(a, b) for a, b in _chunks(n, chunk) if not (marks / f"{a:012d}").exists()]
    done, t0 = n - sum(b - a for a, b in todo), time.perf_counter()
    first, last_log = done, t0
    log.info("preparing %d items into %s with %d worker(s): %d of %d chunks to write", n, path, workers, len(todo),
             len(_chunks(n, chunk)))

    def finished(items: int) -> None:
        nonlocal done, last_log
        done += items
        if time.perf_counter() - last_log > log_every_s:
            last_log = time.perf_counter()
            log.info("%s: %d of %d items (%.0f items/s)", path.name, done, n,
                     (done - first) / (last_log - t0))

    if workers <= 1:
        for a, b in todo:
            _write_chunk(source, str(path), array, a, b)
            finished(b - a)
    else:
        runs = [[(int(a), int(b)) for a, b in run]
                for run in np.array_split(np.array(todo), min(len(todo), 4 * workers))]
        # spawn: workers start clean, without the parent's threads or CUDA state
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_set_worker_source,
                                 initargs=(source,)) as pool:
            for future in as_completed([pool.submit(_write_worker_chunks, str(path), array, run) for run in runs]):
                finished(future.result())
    items = np.load(path / f"{array}.npy", mmap_mode="r")
    labels = np.load(path / "labels.npy", mmap_mode="r")
    header = {**plan, "arrays": {
        array: {"dtype": str(dtype), "shape": [n, *shape],
                "chunks": [_sha256(items[a:b]) for a, b in _chunks(n, chunk)]},
        "labels": {"dtype": "int64", "shape": [n], "sha256": _sha256(labels)}}}
    atomic_write_text(path / "header.json", json.dumps(header, indent=1))  # the store is finished from here on
    for mark in marks.iterdir():
        mark.unlink()
    marks.rmdir()
    plan_path.unlink()
    log.info("store %s: %d items, %.2f GB, written in %.1f s", path, n, items.nbytes / 1e9, time.perf_counter() - t0)


def file_fingerprint(paths: Sequence[Path]) -> list:
    """[name, size, mtime in ns] of each file or folder: part of a source's key, so that a store made before its
    files changed is not taken for theirs (a folder's mtime changes when an entry is added or removed)."""
    out = []
    for path in paths:
        stat = Path(path).stat()
        out.append([Path(path).name, stat.st_size if Path(path).is_file() else None, stat.st_mtime_ns])
    return out


def resize_uint8(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (N, C, H, W) resized to (N, C, image_size, image_size) with an antialiased bilinear filter (the same
    filter as ever for these data sets, now applied once when the store is made), rounded back to uint8."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    from cfglab.images import to_model_range, to_uint8

    return to_uint8(to_model_range(torch.from_numpy(np.ascontiguousarray(images)), image_size)).numpy()


@dataclass
class LoadedSource:
    """A source whose items one function loads whole (a bundled set or a few files: digits, MNIST, CIFAR-10); each
    process loads them once, and they are resized to `image_size` when read. `load`: a picklable callable ->
    (uint8 images (N, C, H, W), int64 labels (N,)); num_items: N if the files' headers tell it (checked when they
    are loaded), None to count by loading."""

    key: dict
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    num_items: Optional[int]
    channels: int
    image_size: int
    _arrays: Any = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def __len__(self) -> int:
        return len(self._loaded()[1]) if self.num_items is None else self.num_items

    def __getstate__(self):  # the loaded arrays stay in the process that loaded them
        return {**self.__dict__, "_arrays": None}

    def _loaded(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            images, labels = self.load()
            if len(images) != len(labels) or self.num_items not in (None, len(images)):
                raise ValueError(f"{self.key}: {len(images)} images and {len(labels)} labels, expected "
                                 f"{self.num_items or len(images)} of each")
            self._arrays = images, np.asarray(labels, dtype=np.int64)
        return self._arrays

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._loaded()
        return resize_uint8(images[start:stop], self.image_size), labels[start:stop]


class Rows:
    """The rows of an .npy array file, read on demand with os.preadv into the caller's batch: `rows[indices]` ->
    array (len(indices), *row shape). The file is read through the page cache, which every process on a node
    shares, without being mapped into this process: a memory map would keep each page it has touched (and the
    pages read ahead around it) counted as this process's own memory, so a rank's unique memory would grow with
    the part of the data set it has seen. array: the file memory-mapped by np.load (its offset, dtype, shape)."""

    def __init__(self, file: Path, array: np.memmap):
        self.file, self.offset, self.dtype, self.shape = str(file), int(array.offset), array.dtype, array.shape
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: Optional[int] = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):  # a process that receives a Rows opens the file itself
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getitem__(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if self._fd is None:
            self._fd = os.open(self.file, os.O_RDONLY)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        view, size = memoryview(out).cast("B"), self.row_bytes
        for row, i in enumerate(indices.tolist()):
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {i} of {self.file}, which has {self.shape[0]}")
            if os.preadv(self._fd, [view[row * size:(row + 1) * size]], self.offset + i * size) != size:
                raise ValueError(f"{self.file}: row {i} is cut short (the file is truncated): {REPREPARE}")
        return out


class Items:
    """A subset of a data set's items (a store's, or arrays in memory), gathered on demand: `get(positions)` ->
    (x, labels) as tensors, x uint8 (B, C, S, S) for images; only the gathered batch is copied into memory.

    x, y: arrays of the whole set (a store's Rows, numpy arrays, memory-mapped or not, or torch tensors);
    index: int64 (n,), the items of this subset in its order."""

    def __init__(self, x, y, index: np.ndarray):
        self.x, self.y, self.index = x, y, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def get(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.index[np.asarray(positions, dtype=np.int64)]
        if isinstance(self.x, torch.Tensor):
            t = torch.from_numpy(idx).to(self.x.device)
            return self.x[t], self.y[t]
        return torch.from_numpy(np.ascontiguousarray(self.x[idx])), torch.from_numpy(np.asarray(self.y[idx]))

    def head(self, n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n items (all if None)."""
        return self.get(np.arange(len(self) if n is None else min(int(n), len(self))))

    def batches(self, batch_size: int, view: Optional[Callable] = None) -> "_InOrder":
        """The items in order in batches of `batch_size` (the last may be smaller): a loader for validation.
        view: applied to each batch's x (None: x as stored)."""
        return _InOrder(self, batch_size, view)


class _InOrder:
    def __init__(self, items: Items, batch_size: int, view: Optional[Callable] = None):
        self.items, self.batch_size, self.view = items, int(batch_size), view

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.items), self.batch_size):
            x, y = self.items.get(np.arange(start, min(start + self.batch_size, len(self.items))))
            yield (x if self.view is None else self.view(x)), y
