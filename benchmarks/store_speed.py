"""Decoded-image store vs decoding the JPEGs: loader and end-to-end training throughput, side by side.

On a generated VOC-layout folder (``voc_folder.py``: random sizes, boxes with masks; nothing is
downloaded), in one process:

- ``loader``: images/s of one epoch of the training loaders, without (``jpeg``) and with
  (``store``) the store: the online path (decode, crop + flip, normalise, one item at a time;
  ``online/batched``: the store's items built a batch at once, ``VOCDataset.batch``, as
  ``VOCDataModule.train_dataloader`` now serves them) and the teacher-cache path (``CachedViewsDataset``: source image, one stored
  view, teacher outputs from the cache; a plain shuffled DataLoader, one item at a time). Third
  column, on the store: the cache as the data modules' training loader serves it, keys
  ``(index, draw_seed)`` from a ``ResumableSampler``, one item at a time (``seeded``:
  ``SeededItems`` + default collation, ``cache_batched=False``) and whole batches (``batched``:
  ``CachedViewBatches``, the default). Repeated, interleaved; min and range printed.
- ``--fit``: ``Trainer.fit`` of a /8 student with SSWA matching reading a vgg_small teacher from
  the 8-view cache (``--online``: the teacher run in every step; ``--arch vgg16``, ``--accelerator
  gpu``, ``--precision bf16-mixed`` for the GPU), one process, ``num_workers`` workers; images/s of
  the epochs after the first; ``jpeg`` and ``store`` load one item at a time, ``batched`` is the
  store with batched loading, ``memory`` the same fit over the batches of the ``batched`` fit's
  first epoch held in memory (no loader: the bound any loader leaves).

Usage (CPU, 2 cores):
  python benchmarks/store_speed.py --image-size 64                       # loader, 400 JPEGs 112-500 px
  python benchmarks/store_speed.py --image-size 227
  python benchmarks/store_speed.py --fit --num-images 1600 --min-side 112 --max-side 160 --image-size 64
  python benchmarks/store_speed.py --fit --online --arch vgg16 --image-size 227 --batch-size 64 --workers 8 \
      --accelerator gpu --precision bf16-mixed --channels-last --num-images 2048   # the GPU end to end
  (add ``--augment-on-device`` there: the batched rows finish their views on the GPU)
Add ``--threads 1`` on a machine shared with other jobs (torch's threads spin against them).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EpochTimer  # noqa: E402
from voc_folder import make_voc_folder  # noqa: E402

from attrpreserve.data import VOCDataModule  # noqa: E402
from attrpreserve.data.common import loader_kwargs  # noqa: E402
from attrpreserve.data.resumable import (  # noqa: E402
    BatchedItems, ResumableLoader, ResumableSampler, SeededItems, collate_batched,
)
from attrpreserve.models import vgg_small  # noqa: E402
from attrpreserve.teacher_cache import CachedViewBatches, TeacherCache  # noqa: E402


def _module(root: Path, work: Path, store: bool, args: argparse.Namespace, **extra) -> VOCDataModule:
    return VOCDataModule(root, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
                         store=store, store_dir=str(work / "store"), cache_dir=str(work / "teacher"),
                         cache_views=args.views, pin_memory=args.fit and args.accelerator != "cpu",  # as on a GPU
                         **extra)


def _epoch(loader: DataLoader) -> int:
    n = 0
    for batch in loader:
        n += batch["image"].shape[0]
    return n


def loaders(root: Path, work: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    torch.manual_seed(0)
    teacher = vgg_small(num_classes=20, width_divisor=8).eval()  # only builds the caches: any teacher
    runs: dict[str, DataLoader] = {}
    for store in (False, True):
        tag = "store" if store else "jpeg"
        dm = _module(root, work, store, args)
        start = time.perf_counter()
        dm.setup("fit")
        if store:
            print(f"  store build ({tag}, short side {dm.store_size}): {time.perf_counter() - start:.1f} s for "
                  f"{len(dm.train_dataset) + len(dm.val_dataset)} images, "
                  f"{sum(f.stat().st_size for f in dm.train_dataset.store.path.iterdir()) / 2**20:.1f} MiB (train)")
        data = dm.train_dataset
        kwargs = loader_kwargs(args.batch_size, args.workers, False)
        # the online path as before (one item at a time) and, on the store, as the training loader
        # now serves it (whole batches: VOCDataset.batch)
        runs[f"online/{tag}"] = ResumableLoader(SeededItems(data), sampler=ResumableSampler(data), **kwargs)
        if store:
            runs["online/batched"] = ResumableLoader(BatchedItems(data), sampler=ResumableSampler(data),
                                                     collate_fn=collate_batched, **kwargs)
        cache = TeacherCache(teacher, dm.source_dataset("train"), dm.sample_view, dm.apply_view, views=args.views,
                             cache_dir=work / "teacher", image_size=args.image_size).build(progress=False)
        runs[f"cached/{tag}"] = DataLoader(cache.dataset_for_training(), batch_size=args.batch_size, shuffle=True,
                                           num_workers=args.workers)
        if store:  # the training loader's two ways over the same cache (ViewMixin.train_dataloader)
            data = cache.dataset_for_training(apply_views=dm.apply_views)
            kwargs = loader_kwargs(args.batch_size, args.workers, False)
            runs["cached/seeded"] = ResumableLoader(SeededItems(data), sampler=ResumableSampler(data), **kwargs)
            runs["cached/batched"] = ResumableLoader(CachedViewBatches(data), sampler=ResumableSampler(data),
                                                     collate_fn=collate_batched, **kwargs)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, loader in runs.items():  # warm-up (page cache, workers)
        _epoch(loader)
    for _ in range(args.repeats):
        for name, loader in runs.items():
            start = time.perf_counter()
            n = _epoch(loader)
            times[name].append(n / (time.perf_counter() - start))
    return times


def fit_speed(root: Path, work: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    import pytorch_lightning as pl

    from attrpreserve.callbacks import AttributionMatching
    from attrpreserve.modules import DistillationModule

    from attrpreserve.models import create_model

    torch.manual_seed(0)
    teacher = create_model(args.arch, num_classes=20).eval()

    class Keep(pl.Callback):  # the batches of the first epoch, as the step receives them
        def __init__(self) -> None:
            self.batches: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.current_epoch == 0:
                self.batches.append(batch)

    class InMemory(pl.LightningDataModule):
        def __init__(self, batches: list[dict]) -> None:
            super().__init__()
            self.batches = batches

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.batches, batch_size=None)

    rates: dict[str, list[float]] = {"fit/jpeg": [], "fit/store": [], "fit/batched": [], "fit/memory": []}
    for _ in range(args.repeats):
        kept = Keep()
        for name, store, batched in (("fit/jpeg", False, False), ("fit/store", True, False),
                                     ("fit/batched", True, True), ("fit/memory", True, True)):
            on_device = {"augment_on_device": True} if args.augment_on_device and batched else {}
            dm = _module(root, work, store, args, cache_teacher=not args.online, cache_batched=batched, **on_device)
            if args.online and not batched:  # the per-item online path (the batched one is the default)
                dm.train_dataloader = _per_item_loader(dm)
            module = DistillationModule(teacher, create_model(args.arch, num_classes=20, width_divisor=8), lr=0.01,
                                        channels_last=args.channels_last)
            timer = EpochTimer()
            extra = [kept] if name == "fit/batched" else []
            if name == "fit/memory":
                dm = InMemory(kept.batches)
            trainer = pl.Trainer(max_epochs=args.epochs + 1, accelerator=args.accelerator, devices=1,
                                 precision=args.precision, benchmark=args.accelerator != "cpu",  # as the VOC configs
                                 logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                                 num_sanity_val_steps=0,
                                 callbacks=[AttributionMatching(mode="sswa", weight=100.0), timer, *extra])
            trainer.fit(module, dm)
            rates[name] += timer.rates[1:]  # the first epoch warms up
    return rates


def _per_item_loader(dm: VOCDataModule):
    """``dm.train_dataloader`` as it was before whole batches: one item at a time (SeededItems)."""
    def loader() -> DataLoader:
        batched = VOCDataModule.train_dataloader(dm)
        return ResumableLoader(SeededItems(batched.dataset.dataset), sampler=batched.sampler,
                               **loader_kwargs(dm.batch_size, dm.num_workers, dm.pin_memory))
    return loader


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--min-side", type=int, default=112)
    parser.add_argument("--max-side", type=int, default=500)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per fit (after one warm-up epoch)")
    parser.add_argument("--fit", action="store_true", help="end-to-end Trainer.fit instead of the loaders")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 is steadier "
                        "on a machine shared with other jobs")
    parser.add_argument("--arch", default="vgg_small", choices=["vgg_small", "vgg16"], help="--fit: teacher (the "
                        "student is its /8)")
    parser.add_argument("--online", action="store_true", help="--fit: run the teacher in every step (no cache)")
    parser.add_argument("--accelerator", default="cpu", help="--fit: Lightning accelerator (cpu, gpu)")
    parser.add_argument("--precision", default="32-true", help="--fit: Lightning precision (32-true, bf16-mixed)")
    parser.add_argument("--channels-last", action="store_true", help="--fit: channels_last networks and inputs")
    parser.add_argument("--augment-on-device", action="store_true", help="--fit: the batched rows resize, flip "
                        "and normalise the views on the model's device (VOCDataModule(augment_on_device=True))")
    parser.add_argument("--data", default=None, help="folder for the generated VOC data (kept); default: temporary")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="store_speed_"))
    try:
        root = make_voc_folder(Path(args.data) if args.data else tmp / "data", args.num_images, args.min_side,
                               args.max_side)
        rates = (fit_speed if args.fit else loaders)(root, tmp / "work", args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    where = f"CPU x{torch.get_num_threads()} threads"
    if args.fit and args.accelerator != "cpu" and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name()}, {args.precision}, channels_last={args.channels_last}; {where}"
    print(f"{where}; {args.num_images} JPEGs {args.min_side}-{args.max_side} px, "
          f"image_size {args.image_size}, batch {args.batch_size}, {args.workers} workers, K={args.views}")
    for name, values in rates.items():
        print(f"  {name:14s} {max(values):8.1f} images/s  (range {min(values):.1f}-{max(values):.1f}, "
              f"{len(values)} runs)")
    pairs = [(f"{path}/store", f"{path}/jpeg") for path in ("online", "cached", "fit")]
    pairs += [("online/batched", "online/store"), ("online/batched", "online/jpeg"), ("cached/batched", "cached/seeded"), ("cached/batched", "cached/jpeg"), ("fit/batched", "fit/store"),
              ("fit/batched", "fit/jpeg"), ("fit/memory", "fit/batched"), ("fit/memory", "fit/jpeg")]
    for top, bottom in pairs:
        if top in rates and bottom in rates:
            best = max(rates[top]) / max(rates[bottom])
            paired = [a / b for a, b in zip(rates[top], rates[bottom])]
            print(f"ratio {top} / {bottom} = {best:.2f} (best vs best; paired runs {min(paired):.2f}-"
                  f"{max(paired):.2f})")
    return rates


if __name__ == "__main__":
    main()
