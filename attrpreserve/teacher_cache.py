"""Teacher cache: run the frozen teacher once per (training image, fixed view), distil many times.

For every training image and ``views`` fixed augmentation draws (crop box + flip, drawn from a
seed and stored), the teacher's logits and the outputs of the cached layers are written to
memory-mapped ``.npy`` files (fp16). Training then samples one of the views per image and step,
applies exactly that view to the image for the student, and reads the teacher's outputs from
disk. SWA/SSWA teacher maps stay exact: the teacher's head (the layers after the cached one) is
run on the cached features, which is cheap (see ``DistillationModule.forward_teacher_cached``).

Disk size per image: ``views * 2 bytes * (num_classes + sum over cached layers of C*H*W)``;
VGG16 at 227 px, pool5 (512x7x7), 20 classes, 8 views: 8 * 2 * (20 + 25088) = 401 KB, so
VOC train (5,717 images) takes 2.3 GB. vgg_small at 64 px (128x8x8), 8 views: 131 KB.

The cache is keyed by a hash of the teacher's weights, the data set's fingerprint, the image
size, the views and their seed, and the layers: any change gives a new folder, never a stale one.
Building is resumable (a per-image ``done`` flag is flushed after every batch).

Images: the data modules' ``source_dataset`` gives uint8 images (read from the decoded-image
store with ``VOCDataModule(store=True)``, see :mod:`attrpreserve.data.store`), and their
``apply_view`` crops and resizes them in uint8 and normalises the small result, for the teacher
when the cache is built and for the student at every step alike (format 2; format 1 cropped
images normalised at full size).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from attrpreserve.attribution.capture import capture_features
from attrpreserve.data.resumable import BatchedItems, Key, SeededItems
from attrpreserve.data.resumable import collate_batched  # noqa: F401  (re-exported: the loader's collate_fn)
from attrpreserve.data.store import progress_bar

ViewSampler = Callable[[torch.Generator, int, int], tuple[tuple[int, int, int, int], bool]]
ViewApplier = Callable[[Tensor, tuple[int, int, int, int], bool], Tensor]
ViewsApplier = Callable[[Sequence[Tensor], Sequence[tuple[int, int, int, int]], Sequence[bool]], Tensor]

FORMAT_VERSION = 2


def _hash_tensors(tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def teacher_fingerprint(teacher: nn.Module) -> str:
    """Hash of the teacher's parameters and buffers (BatchNorm statistics included)."""
    state = teacher.state_dict()
    h = hashlib.sha256(_hash_tensors([state[k] for k in sorted(state)]).encode())
    h.update(",".join(sorted(state)).encode())
    return h.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """The dataset's own ``fingerprint()`` when it has one, else a hash of its length and of
    the first and last items' images and labels."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return str(own())
    n = len(dataset)
    picks = sorted({0, 1, n // 2, n - 1} & set(range(n)))
    tensors = []
    for i in picks:
        item = dataset[i]
        tensors += [item["image"], item["labels"]]
    return f"{type(dataset).__name__}:{n}:{_hash_tensors(tensors)}"


class TeacherCache:
    """Memory-mapped teacher outputs for ``views`` fixed views of every image of ``dataset``.

    Args:
        teacher: the frozen teacher (run in eval mode, under ``no_grad``).
        dataset: un-augmented training items (dicts with ``image`` [3,H,W] at source
            resolution, uint8 or normalised float as ``apply_view`` takes it, ``labels``, ``index``).
        sample_view: ``(generator, height, width) -> (box, flip)``, the training augmentation's
            distribution (crop box ``(top, left, height, width)`` and horizontal flip).
        apply_view: ``(image, box, flip) -> image``: the normalised float view at the training image size.
        layers: teacher layers whose outputs are stored (the matched layer, ``"pool5"``; none
            for plain KD, which needs the logits only).
        views: K, the number of fixed views per image.
        seed: seed of the view draws.
        cache_dir: parent folder; the cache lives in ``cache_dir/<key>/``.
        image_size: training image size (part of the key).
        batch_size, num_workers: of the build loop.
        device: where the teacher runs while building (default: where its parameters are).
        extra_key: anything else the views depend on (e.g. augmentation scale), part of the key.

    Raises:
        ValueError: ``views < 1``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        dataset: Dataset,
        sample_view: ViewSampler,
        apply_view: ViewApplier,
        layers: Sequence[str] = ("pool5",),
        views: int = 8,
        seed: int = 0,
        cache_dir: str | os.PathLike = ".cache/teacher",
        image_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        extra_key: str = "",
    ) -> None:
        if not isinstance(views, int) or views < 1:
            raise ValueError(f"Expected argument `cache_views` to be an int >= 1, but got {views!r}.")
        self.teacher, self.dataset = teacher, dataset
        self.sample_view, self.apply_view = sample_view, apply_view
        self.layers, self.views, self.seed = list(layers), views, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.device = torch.device(device) if device is not None else next(teacher.parameters()).device
        meta = {
            "format": FORMAT_VERSION,
            "teacher": teacher_fingerprint(teacher),
            "dataset": dataset_fingerprint(dataset),
            "image_size": image_size,
            "views": views,
            "seed": seed,
            "layers": self.layers,
            "extra": extra_key,
        }
        self.meta = meta
        self.key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / self.key

    # -- building ------------------------------------------------------------------------
    def _draw_views(self) -> tuple[np.ndarray, np.ndarray]:
        generator = torch.Generator().manual_seed(self.seed)
        n = len(self.dataset)
        boxes = np.zeros((n, self.views, 4), dtype=np.int64)
        flips = np.zeros((n, self.views), dtype=bool)
        for i in range(n):
            height, width = self._source_size(i)
            for k in range(self.views):
                box, flip = self.sample_view(generator, height, width)
                boxes[i, k], flips[i, k] = box, flip
        return boxes, flips

    def _source_size(self, index: int) -> tuple[int, int]:
        sizes = getattr(self.dataset, "image_size_of", None)
        if callable(sizes):
            return tuple(sizes(index))
        return tuple(self.dataset[index]["image"].shape[-2:])

    @property
    def is_complete(self) -> bool:
        done = self.path / "done.npy"
        return done.is_file() and bool(np.load(done).all())

    def build(self, progress: bool = True) -> TeacherCache:
        """Run the teacher on every missing (image, view); resumable, idempotent."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            boxes, flips = self._draw_views()
            np.save(self.path / "boxes.npy", boxes)
            np.save(self.path / "flips.npy", flips)
            np.save(self.path / "done.npy", np.zeros(len(self.dataset), dtype=bool))
            shapes = self._output_shapes()
            n, k = len(self.dataset), self.views
            np.lib.format.open_memmap(self.path / "logits.npy", "w+", np.float16, (n, k, shapes["logits"][0]))
            for layer in self.layers:
                np.lib.format.open_memmap(self.path / f"{layer}.npy", "w+", np.float16, (n, k, *shapes[layer]))
            meta_file.write_text(json.dumps({**self.meta, "shapes": shapes}, indent=1))
        done = np.load(self.path / "done.npy")
        todo = np.flatnonzero(~done)
        if len(todo) == 0:
            return self
        boxes, flips = np.load(self.path / "boxes.npy"), np.load(self.path / "flips.npy")
        logits_mm = np.load(self.path / "logits.npy", mmap_mode="r+")
        feats_mm = {layer: np.load(self.path / f"{layer}.npy", mmap_mode="r+") for layer in self.layers}
        loader = DataLoader(_Subset(self.dataset, todo), batch_size=max(1, self.batch_size // self.views),
                            num_workers=self.num_workers, collate_fn=list,
                            generator=torch.Generator())  # own seed: building must not move the global RNG
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with _progress(progress, len(todo), "teacher cache") as advance:
                for items in loader:
                    images, rows = [], []
                    for item in items:
                        i = int(item["cache_row"])
                        for k in range(self.views):
                            images.append(self.apply_view(item["image"], tuple(boxes[i, k]), bool(flips[i, k])))
                        rows.append(i)
                    x = torch.stack(images).to(self.device)
                    with torch.no_grad(), capture_features(self.teacher, self.layers) as feats:
                        logits = self.teacher(x)
                    rows_arr = np.asarray(rows)
                    logits_mm[rows_arr] = logits.float().cpu().view(len(rows), self.views, -1).half().numpy()
                    for layer in self.layers:
                        f = feats[layer].float().cpu()
                        feats_mm[layer][rows_arr] = f.view(len(rows), self.views, *f.shape[1:]).half().numpy()
                    logits_mm.flush()
                    for mm in feats_mm.values():
                        mm.flush()
                    done[rows_arr] = True
                    np.save(self.path / "done.npy", done)  # after the data: resume never trusts a half row
                    advance(len(rows))
        finally:
            self.teacher.train(was_training)
        return self

    def _output_shapes(self) -> dict[str, list[int]]:
        item = self.dataset[0]
        box, flip = self.sample_view(torch.Generator().manual_seed(0), *item["image"].shape[-2:])
        x = self.apply_view(item["image"], box, flip)[None].to(self.device)
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad(), capture_features(self.teacher, self.layers) as feats:
                logits = self.teacher(x)
        finally:
            self.teacher.train(was_training)
        return {"logits": list(logits.shape[1:]), **{k: list(v.shape[1:]) for k, v in feats.items()}}

    # -- reading -------------------------------------------------------------------------
    def dataset_for_training(self, generator_seed: int | None = None,
                             apply_views: ViewsApplier | None = None) -> CachedViewsDataset:
        """The training dataset: one random cached view per image and step (``apply_views``: see
        :class:`CachedViewsDataset`)."""
        if not self.is_complete:
            raise ValueError(f"Teacher cache {str(self.path)!r} is incomplete: call build() first.")
        return CachedViewsDataset(self.dataset, self.path, self.layers, self.apply_view, generator_seed,
                                  apply_views=apply_views)


class _Subset(Dataset):
    def __init__(self, dataset: Dataset, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        return {**self.dataset[row], "cache_row": row}


class CachedViewsDataset(Dataset):
    """Items of the source dataset seen through one of their cached views.

    Each item adds ``view`` (the view index), ``teacher_logits`` [K] and ``teacher_features``
    (layer -> [C,H,W]), all float32 read from the fp16 cache. When the source dataset has a
    ``view_labels(index, box)`` method (VOC and synthetic data: label-aware crops, see their
    ``min_visible``), ``labels`` are the view's, not the full image's, as in the online
    augmentation; the box is in the source dataset's pixels (the stored image's with a VOC store).

    :meth:`batch` fetches a whole training batch at once (what :class:`CachedViewBatches` gives a
    DataLoader): the same tensors as collating the items one by one, with one read per cache file.

    Args:
        dataset: the source dataset the cache was built from.
        path: the cache folder (``TeacherCache.path``).
        layers: cached teacher layers to read.
        apply_view: ``(image, box, flip) -> image``, as the cache was built with.
        seed: unused (kept for callers that pass it).
        apply_views: ``(images, boxes, flips) -> [B, 3, S, S]``, the batch form of ``apply_view``
            (the data modules' ``apply_views``: normalises once per batch); ``None`` stacks
            ``apply_view``'s results. It must equal that stack exactly: :meth:`batch` promises
            the per-item path's tensors.
    """

    def __init__(self, dataset: Dataset, path: Path, layers: Sequence[str], apply_view: ViewApplier,
                 seed: int | None = None, apply_views: ViewsApplier | None = None) -> None:
        self.dataset, self.path, self.layers, self.apply_view = dataset, Path(path), list(layers), apply_view
        self.apply_views = apply_views
        self.boxes = np.load(self.path / "boxes.npy")
        self.flips = np.load(self.path / "flips.npy")
        self.views = self.boxes.shape[1]
        self.seed = seed
        self._logits: np.ndarray | None = None
        self._feats: dict[str, np.ndarray] = {}

    def _open(self) -> None:
        # Opened lazily so each DataLoader worker maps the files itself.
        if self._logits is None:
            self._logits = np.load(self.path / "logits.npy", mmap_mode="r")
            self._feats = {layer: np.load(self.path / f"{layer}.npy", mmap_mode="r") for layer in self.layers}

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int, view: int) -> dict[str, Any]:
        """Item ``index`` through cached view ``view`` (deterministic)."""
        self._open()
        item = dict(self.dataset[index])
        box = tuple(int(v) for v in self.boxes[index, view])
        item["image"] = self.apply_view(item["image"], box, bool(self.flips[index, view]))
        view_labels = getattr(self.dataset, "view_labels", None)
        if view_labels is not None:  # the crop may cut an object out: its label goes with it
            item["labels"] = view_labels(index, box)
        item.pop("mask", None)  # masks are not cropped with the view; training does not use them
        item["view"] = view
        item["teacher_logits"] = torch.from_numpy(np.asarray(self._logits[index, view], dtype=np.float32))
        item["teacher_features"] = {
            layer: torch.from_numpy(np.asarray(mm[index, view], dtype=np.float32)) for layer, mm in self._feats.items()
        }
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        view = int(torch.randint(self.views, (1,)).item())
        return self.item(index, view)

    def draw_view(self, key: int | Key, generator: torch.Generator | None = None) -> tuple[int, int]:
        """``(index, view)`` of a key: for ``(index, draw_seed)`` the view that
        ``SeededItems(self)[key]`` picks (the first draw of a generator seeded with ``draw_seed``;
        ``generator`` is re-seeded for it, so one serves a whole batch), for a plain ``index`` a
        draw from torch's global generator, as ``self[index]``.

        Example:
            >>> from attrpreserve.data.resumable import SeededItems
            >>> class Fake(CachedViewsDataset):  # no cache files needed to draw views
            ...     def __init__(self): self.views = 8
            ...     def item(self, index, view): return {"view": view}
            >>> Fake().draw_view((2, 123)), SeededItems(Fake())[(2, 123)]["view"]
            ((2, 6), 6)
        """
        if isinstance(key, tuple):
            index, seed = key
            generator = (generator or torch.Generator()).manual_seed(int(seed))
            return int(index), int(torch.randint(self.views, (1,), generator=generator).item())
        return int(key), int(torch.randint(self.views, (1,)).item())

    def batch(self, keys: Sequence[int | Key]) -> dict[str, Any]:
        """The collated batch of ``keys`` (``(index, draw_seed)`` as a ``ResumableSampler`` yields
        them, or plain indices): equal, tensor for tensor, to
        ``default_collate([SeededItems(self)[k] for k in keys])``.

        With a source dataset that has ``view_image(index)`` (its items' uint8 image without the
        rest of the item) and ``view_labels``, the batch is built without per-item dicts: the
        images are cropped and resized one by one (``apply_views``), the teacher outputs come from
        one fancy-index read per cache file; other datasets collate :meth:`item` s.

        Returns:
            ``image`` float32 [B,3,S,S] (a :class:`~attrpreserve.data.common.PendingViews` when
            ``apply_views`` defers them: a data module's ``crop_views``), ``labels`` float32
            [B,L], ``index`` and ``view`` int64 [B], ``teacher_logits`` float32 [B,K],
            ``teacher_features`` (layer -> float32 [B,C,H,W]).

        Raises:
            IndexError: an index out of range.
        """
        view_image = getattr(self.dataset, "view_image", None)
        view_labels = getattr(self.dataset, "view_labels", None)
        if view_image is None or view_labels is None:  # items of unknown keys: the per-item path itself
            seeded = SeededItems(self)
            return default_collate([seeded[key] for key in keys])
        self._open()
        draws = torch.Generator()  # one for the batch, re-seeded per key: no fork of the global RNG
        picks = [self.draw_view(key, draws) for key in keys]
        rows = np.fromiter((i for i, _ in picks), dtype=np.int64, count=len(picks))
        cols = np.fromiter((v for _, v in picks), dtype=np.int64, count=len(picks))
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} items: {rows.tolist()}")
        boxes = [tuple(b) for b in self.boxes[rows, cols].tolist()]  # plain ints, as item()'s
        flips = self.flips[rows, cols].tolist()
        images = [view_image(int(i)) for i in rows]
        if self.apply_views is not None:
            image = self.apply_views(images, boxes, flips)
        else:
            image = torch.stack([self.apply_view(x, b, f) for x, b, f in zip(images, boxes, flips)])
        return {
            "image": image,
            "labels": torch.stack([view_labels(int(i), b) for i, b in zip(rows, boxes)]),
            "index": torch.from_numpy(rows),
            "view": torch.from_numpy(cols),
            "teacher_logits": torch.from_numpy(np.asarray(self._logits[rows, cols], dtype=np.float32)),
            "teacher_features": {layer: torch.from_numpy(np.asarray(mm[rows, cols], dtype=np.float32))
                                 for layer, mm in self._feats.items()},
        }


CachedViewBatches = BatchedItems
"""The teacher cache's name for :class:`~attrpreserve.data.resumable.BatchedItems` (what the
training loader wraps a :class:`CachedViewsDataset` in)."""


_progress = progress_bar  # the shared rich bar (attrpreserve.data.store)


def cached_train_dataset(
    datamodule: Any,
    views: int = 8,
    cache_dir: str | os.PathLike = ".cache/teacher",
    seed: int = 0,
    progress: bool = True,
) -> CachedViewsDataset:
    """The training set of ``datamodule`` served from a teacher cache built for the running fit.

    Called from a data module's ``train_dataloader`` (after every ``setup`` hook, so the loss
    terms are registered and the cached layers known). Rank 0 builds a missing or incomplete
    cache, every rank waits, then all read the same files.

    Args:
        datamodule: a data module with ``source_dataset``, ``sample_view``, ``apply_view``,
            ``image_size``, ``scale``, ``ratio`` and an attached ``trainer`` (and, used when there,
            ``apply_views`` for batched loading, ``crop_views`` with ``augment_on_device``).
        views, cache_dir, seed: see :class:`TeacherCache`.

    Raises:
        ValueError: no trainer attached, or a LightningModule without a ``teacher``.
    """
    trainer = getattr(datamodule, "trainer", None)
    module = getattr(trainer, "lightning_module", None) if trainer is not None else None
    if module is None or not hasattr(module, "teacher"):
        raise ValueError(
            "Expected `cache_teacher=True` to be used in a fit of a DistillationModule (a LightningModule with a "
            f"`teacher`), but got {type(module).__name__ if module is not None else 'no trainer'}."
        )
    layers = module.teacher_layers() if hasattr(module, "teacher_layers") else []
    cache = TeacherCache(
        module.teacher,
        datamodule.source_dataset("train"),
        datamodule.sample_view,
        datamodule.apply_view,
        layers=layers,
        views=views,
        seed=seed,
        cache_dir=cache_dir,
        image_size=datamodule.image_size,
        device=module.device,
        extra_key=f"scale={tuple(datamodule.scale)},ratio={tuple(datamodule.ratio)}",
    )
    if trainer.is_global_zero and not cache.is_complete:
        cache.build(progress=progress)
    trainer.strategy.barrier("teacher_cache")
    # augment_on_device: the batches carry the crops, finished on the device (PendingViews)
    deferred = getattr(datamodule, "augment_on_device", False)
    return cache.dataset_for_training(apply_views=datamodule.crop_views if deferred else getattr(
        datamodule, "apply_views", None))
