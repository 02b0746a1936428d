"""The prepared store at ImageNet-64 scale against the in-memory path it replaces, both measured in this run.

    python benchmarks/data_store.py [--sizes 50000 100000 200000] [--baseline-sizes 50000 100000] [--root DIR]
    python benchmarks/data_store.py --sizes --baseline-sizes --npz-images 100000   # only the ImageNet-64 file

Makes a synthetic ImageFolder of max(sizes) JPEGs at 64 px in 100 classes (smooth colour fields with noise, so
that they compress and decode like small photographs) and, for each size, a folder of its first images (hard
links). For each size it measures
  - prepare: images/s of `prepare.py` (listing, decoding, writing, checksums) with 1 and with 2 worker processes;
  - loader: batches/s of the training loader (batch 128, flips on, uint8 -> [-1, 1] included) against the batches/s
    that a training step of model=unet (conf/model/unet.yaml at 64 px, AdamW) consumes on this machine;
  - two rank processes (rank 0 and 1 of 2, each drawing its shard of every global batch, as under DDP), run at
    the same time: start-up (process start to the first batch) and memory from /proc/<pid>/smaps_rollup after
    `--rank-batches` batches: USS (private pages), PSS (shared pages divided among their processes) and
    anonymous memory (heap: what cannot be given back to the page cache).
With --npz-images N it also writes one ImageNet-64 batch file of N such images (train_data_batch_1.npz, the
downsampled ImageNet layout, compressed) and measures prepare (images/s) from it with 1 and 2 workers.
The baseline is the path the store replaced, run by the same rank processes: each rank decodes every image of
the folder, converts the whole set to float32 in [-1, 1] and keeps the training split's copy
(ImageDataModule.splits before the store). Its ranks run one after the other, since at 100,000 images one of them
alone needs about 10 GB; per-rank memory does not depend on the other rank.
Prints a table and a JSON line. Needs about 3 GB of disk per 100,000 images, in a new folder in --root (default:
the system's temporary folder), deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

CLASSES, SIDE, BATCH = 100, 64, 128


def _write_images(args: tuple[str, int, int]) -> None:
    from PIL import Image

    folder, start, stop = args
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((SIDE, SIDE),
                                                                                       Image.Resampling.BICUBIC)
        pixels = np.asarray(field).astype(np.int16) + rng.integers(-12, 13, (SIDE, SIDE, 3))
        path = Path(folder) / f"c{i % CLASSES:03d}" / f"{i:07d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_folder(folder: Path, n: int, processes: int) -> float:
    """Write n JPEGs into folder/c000 ... c099; seconds taken."""
    t0 = time.perf_counter()
    for c in range(CLASSES):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_images, [(str(folder), a, min(n, a + step)) for a in range(0, n, step)]))
    return time.perf_counter() - t0


def subset(full: Path, folder: Path, n: int) -> Path:
    """A folder of the first n images of `full` (hard links)."""
    for c in range(CLASSES):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"c{i % CLASSES:03d}/{i:07d}.jpg"
        os.link(full / name, folder / name)
    return folder


def datamodule(folder: Path, store_root: Path, workers: int = 1):
    from cfglab.data.image_folder import ImageFolderDataModule

    return ImageFolderDataModule(data_dir=str(folder), image_size=SIDE, batch_size=BATCH, val_fraction=0.01,
                                 hflip=True, store_root=str(store_root), prepare_workers=workers)


def time_prepare(folder: Path, store_root: Path, workers: int) -> tuple[float, dict]:
    dm = datamodule(folder, store_root, workers)
    t0 = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - t0
    return seconds, dm.store().header


def endless(batches):
    """Batches over epoch after epoch (a small set's epoch is shorter than the timed stretch)."""
    while True:
        yield from batches


def loader_rate(folder: Path, store_root: Path, batches: int) -> float:
    """Batches/s of the training loader in this process, converted to the model's range as on the device."""
    from cfglab.data.loader import training_batches

    dm = datamodule(folder, store_root)
    dm.setup()
    it = endless(training_batches(None, dm.items("train"), BATCH, 0, hflip=True))
    dm.on_after_batch_transfer(next(it), 0)
    t0 = time.perf_counter()
    for _ in range(batches):
        dm.on_after_batch_transfer(next(it), 0)
    return batches / (time.perf_counter() - t0)


def unet_step_rate(folder: Path, store_root: Path, micro: int, steps: int) -> float:
    """Training steps/s of model=unet at batch 128, from steps at batch `micro` (the time of a step is linear in
    the batch at these sizes on a CPU)."""
    from hydra import compose, initialize_config_dir

    from cfglab.build import build_net
    from cfglab.diffusion.schedules import Cosine
    from cfglab.lightning.module import CFGDiffusion

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        model = compose("config", overrides=["model=unet"]).model
    dm = datamodule(folder, store_root)
    torch.manual_seed(0)
    module = CFGDiffusion(build_net(model, dm), Cosine(), num_classes=CLASSES)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x, y = dm.on_after_batch_transfer(dm.items("train").head(micro), 0)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        loss = module.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1 / (np.median(times[1:]) * BATCH / micro)


def npz_prepare(root: Path, n: int, workers: list[int]) -> dict:
    """Images/s of preparing one downsampled-ImageNet batch file of n images, per number of workers."""
    from cfglab.data.imagenet64 import ImageNet64DataModule

    folder = root / "imagenet64"
    folder.mkdir()
    images = np.empty((n, 3 * SIDE * SIDE), np.uint8)
    for a in range(0, n, 5000):
        rng = np.random.default_rng(a)
        base = rng.integers(0, 256, (min(n, a + 5000) - a, 3, 1, 1), dtype=np.uint8)
        images[a:a + 5000] = (base + rng.integers(0, 24, (len(base), 3, SIDE, SIDE), dtype=np.uint8)).reshape(
            len(base), -1)
    np.savez_compressed(folder / "train_data_batch_1.npz", data=images, labels=np.arange(n) % 1000 + 1)
    del images
    out = {"images": n, "file_gb": (folder / "train_data_batch_1.npz").stat().st_size / 1e9}
    for w in workers:
        dm = ImageNet64DataModule(data_dir=str(folder), store_root=str(root / f"npz_stores_{w}"), prepare_workers=w)
        t0 = time.perf_counter()
        dm.prepare_data()
        out[f"prepare_{w}w_img_s"] = n / (time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- one rank process

def memory() -> dict:
    """MB of this process: USS (Private_Clean + Private_Dirty), PSS, anonymous, RSS, and the peak RSS."""
    kb = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        kb[key] = int(value.split()[0])
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM"))
    return {"uss_mb": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024, "pss_mb": kb["Pss"] / 1024,
            "anon_mb": kb["Anonymous"] / 1024, "rss_mb": kb["Rss"] / 1024, "peak_rss_mb": peak / 1024}


def rank_main(args) -> None:
    from cfglab.data.loader import Batches
    from cfglab.data.store import Items
    from cfglab.images import to_model_range

    torch.set_num_threads(1)
    dm = datamodule(Path(args.folder), Path(args.store_root))
    if args.rank_path == "store":
        dm.setup()
        items = dm.items("train")
    else:  # the in-memory path: every rank decodes the whole folder and holds the training split as float32
        source = dm.source()
        images, labels = source.read(0, len(source))
        x = to_model_range(torch.from_numpy(images), SIDE)
        del images
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        train = perm[int(round(0.01 * len(x))):]
        x, y = x[train], torch.from_numpy(labels)[train]
        items = Items(x, y, np.arange(len(x)))
    batches = endless(Batches(items, BATCH, 0, args.rank, 2, hflip=True))
    for i in range(args.rank_batches):
        dm.on_after_batch_transfer(next(batches), 0)
        if i == 0:
            first = time.time()
    print(json.dumps({"first_batch_at": first, **memory()}))


def ranks(path: str, folder: Path, store_root: Path, batches: int, together: bool) -> list[dict]:
    """Rank 0 and 1 of the path, at the same time or one after the other: start-up seconds and memory."""
    def start(rank):
        cmd = [sys.executable, __file__, "--rank", str(rank), "--rank-path", path, "--folder", str(folder),
               "--store-root", str(store_root), "--rank-batches", str(batches)]
        return time.time(), subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def finish(started):
        t0, proc = started
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{path} rank failed with exit status {proc.returncode}")
        report = json.loads(out.strip().splitlines()[-1])
        return {"startup_s": report.pop("first_batch_at") - t0, **report}

    if together:
        procs = [start(r) for r in range(2)]
        return [finish(p) for p in procs]
    return [finish(start(r)) for r in range(2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[50_000, 100_000, 200_000])
    ap.add_argument("--npz-images", type=int, default=0)
    ap.add_argument("--baseline-sizes", type=int, nargs="*", default=[50_000, 100_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--loader-batches", type=int, default=300)
    ap.add_argument("--rank-batches", type=int, default=100)
    ap.add_argument("--step-batch", type=int, default=16, help="batch of the timed model=unet steps")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--root", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rank-path", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--store-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank is not None:
        return rank_main(args)
    if not set(args.baseline_sizes) <= set(args.sizes):
        ap.error(f"--baseline-sizes {args.baseline_sizes} must be among --sizes {args.sizes}")
    root = Path(tempfile.mkdtemp(prefix="cfglab-store-bench-", dir=args.root))
    report = {"sizes": {}, "image_side": SIDE, "batch": BATCH, "cpus": os.cpu_count(), "torch": torch.__version__}
    try:
        if args.npz_images:
            report["npz"] = npz_prepare(root, args.npz_images, args.workers)
        full = root / "folder"
        if args.sizes:
            report["jpegs_written_s"] = make_folder(full, max(args.sizes), processes=os.cpu_count())
            report["jpeg_kb"] = sum(p.stat().st_size for p in (full / "c000").iterdir()) / len(
                list((full / "c000").iterdir())) / 1024
        step_rate = None
        for n in sorted(args.sizes):
            folder = full if n == max(args.sizes) else subset(full, root / f"folder_{n}", n)
            row, headers = {}, []
            for w in args.workers:
                seconds, header = time_prepare(folder, root / f"stores_{w}", w)
                row[f"prepare_{w}w_img_s"] = n / seconds
                headers.append(header)
            row["workers_agree"] = all(h == headers[0] for h in headers)  # the same store from any worker count
            store_root = root / f"stores_{args.workers[0]}"
            store_dir = datamodule(folder, store_root).store_path()
            row["store_gb"] = sum(f.stat().st_size for f in store_dir.iterdir()) / 1e9
            row["loader_batches_s"] = loader_rate(folder, store_root, args.loader_batches)
            if step_rate is None:
                step_rate = unet_step_rate(folder, store_root, args.step_batch, args.steps)
            row["unet_steps_s"] = step_rate
            row["loader_vs_step"] = row["loader_batches_s"] / step_rate
            row["store_ranks"] = ranks("store", folder, store_root, args.rank_batches, together=True)
            if n in args.baseline_sizes:
                row["in_memory_ranks"] = ranks("in-memory", folder, store_root, args.rank_batches, together=False)
            report["sizes"][str(n)] = row
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(report)
    print(json.dumps(report))


def print_table(report: dict) -> None:
    if "npz" in report:
        npz = report["npz"]
        print(f"ImageNet-64 batch file, {npz['images']} images ({npz['file_gb']:.2f} GB): prepare "
              + ", ".join(f"{v:.0f} img/s ({k.split('_')[1]})" for k, v in npz.items() if k.startswith("prepare_")))
    print(f"{'images':>8} {'path':<10} {'prep 1w/2w img/s':>17} {'loader b/s':>10} {'x step':>7} "
          f"{'start s':>8} {'USS MB':>13} {'PSS MB':>13} {'anon MB':>13}")
    for n, row in report["sizes"].items():
        for path in ("store", "in_memory"):
            r = row.get(f"{path}_ranks")
            if r is None:
                continue
            prep = "/".join(f"{v:.0f}" for k, v in row.items() if k.startswith("prepare_")) if path == "store" else ""
            loader = f"{row['loader_batches_s']:.0f}" if path == "store" else ""
            ratio = f"{row['loader_vs_step']:.0f}" if path == "store" else ""
            pair = lambda k: "/".join(f"{x[k]:.0f}" for x in r)  # noqa: E731
            print(f"{n:>8} {path:<10} {prep:>17} {loader:>10} {ratio:>7} {max(x['startup_s'] for x in r):>8.1f} "
                  f"{pair('uss_mb'):>13} {pair('pss_mb'):>13} {pair('anon_mb'):>13}")


if __name__ == "__main__":
    main()
