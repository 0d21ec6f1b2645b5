"""Shared pieces of the data modules: constants, argument checks, loaders, view helpers."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from attrpreserve.data import transforms as T
from attrpreserve.data.resumable import (
    BatchedItems, ResumableLoader, ResumableSampler, SeededItems, collate_batched, resume_position,
)

IGNORE_INDEX = 255
"""Mask value of void pixels (VOC's object borders): ignored by every metric, never background."""

MIN_IMAGE_SIZE = 32
"""Smallest accepted ``image_size``: the VGG models pool 3 (``vgg_small``) to 5 (``vgg16``) times."""


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an int >= {minimum}, but got {value!r}.")
    return value


def check_fraction(name: str, value: Any, hint: str = "") -> float:
    """``value`` as a float in [0, 1], else ValueError naming the argument (``hint`` is appended
    to the allowed values).

    Example:
        >>> check_fraction("min_visible", 0.5)
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"Expected argument `{name}` to be a number in [0, 1]{hint}, but got {value!r}.")
    return float(value)


def void_dropped_classes(mask: Tensor, labels: Tensor, kept: Tensor) -> Tensor:
    """``mask`` with the pixels of every class in ``labels`` but not in ``kept`` (a crop dropped
    it) set to :data:`IGNORE_INDEX`, so that "class c in the labels iff c + 1 in the mask" holds
    for augmented items too. Returns a new tensor (a crop may be a view of stored data).

    Example:
        >>> void_dropped_classes(torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
        tensor([  0,   1, 255])
    """
    lost = torch.nonzero(labels > kept).flatten() + 1
    if not len(lost):
        return mask
    return torch.where(torch.isin(mask, lost.to(mask.dtype)), torch.tensor(IGNORE_INDEX, dtype=mask.dtype), mask)


def check_stats(name: str, value: Sequence[float], positive: bool) -> tuple[float, float, float]:
    """Per-channel mean/std: three floats (std > 0)."""
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or (positive and min(values) <= 0):
        allowed = "three floats > 0" if positive else "three floats"
        raise ValueError(f"Expected argument `{name}` to be {allowed} (one per RGB channel), but got {value!r}.")
    return values  # type: ignore[return-value]


def plain(t: Tensor) -> Tensor:
    """Drop a tv_tensor subclass so batches collate to plain tensors."""
    return t.as_subclass(Tensor)


class PendingViews:
    """Training views cropped in the loader, to be resized, flipped and normalised on the model's device.

    What a training loader with ``augment_on_device=True`` puts under a batch's ``image``: the uint8
    crops (a list: their sizes differ) and the flips. It travels with the batch (Lightning moves any
    object with ``to``, a loader pins any object with ``pin_memory``, workers send the crops through
    shared memory) and the data module's ``on_after_batch_transfer`` finishes it on the device
    (:meth:`render`). On the CPU the result is, bit for bit, what the loader would have built
    (:meth:`ViewMixin.apply_views`); on a GPU the resize is the device's.

    Example:
        >>> x = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
        >>> pending = PendingViews([T.crop_view(x, (4, 8, 20, 30))], [True])
        >>> torch.equal(pending.render(32, (0.5,) * 3, (0.25,) * 3),
        ...             T.normalize(T.apply_view(x, (4, 8, 20, 30), True, 32), (0.5,) * 3, (0.25,) * 3)[None])
        True
    """

    def __init__(self, crops: Sequence[Tensor], flips: Sequence[bool]) -> None:
        if len(crops) != len(flips) or not len(crops):
            raise ValueError(f"Expected as many flips as crops (at least one), but got {len(crops)} crops and "
                             f"{len(flips)} flips.")
        self.crops, self.flips = list(crops), [bool(f) for f in flips]

    def __len__(self) -> int:
        return len(self.crops)

    def __repr__(self) -> str:
        device = self.crops[0].device
        return f"PendingViews({len(self)} crops, {self.crops[0].dtype}, {device})"

    def to(self, *args: Any, **kwargs: Any) -> PendingViews:
        return PendingViews([crop.to(*args, **kwargs) for crop in self.crops], self.flips)

    def pin_memory(self, *args: Any) -> PendingViews:
        return PendingViews([crop.pin_memory(*args) for crop in self.crops], self.flips)

    def render(self, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
        """float32 ``[B, 3, size, size]``: each crop resized (bilinear, antialiased) and flipped where
        the crops are, the stack normalised once."""
        views = [T.apply_view(crop, (0, 0, crop.shape[-2], crop.shape[-1]), flip, size)
                 for crop, flip in zip(self.crops, self.flips)]
        return T.normalize(torch.stack(views), mean, std)


def _check_views(images: Sequence[Tensor], boxes: Sequence[Sequence[int]], flips: Sequence[bool]) -> None:
    if not len(images) == len(boxes) == len(flips) or not len(images):
        raise ValueError(f"Expected as many boxes and flips as images (at least one), but got {len(images)} "
                         f"images, {len(boxes)} boxes and {len(flips)} flips.")


class ViewMixin:
    """The training view of a data module as the ``(generator, h, w) -> (box, flip)`` sampler and
    ``(image, box, flip) -> image`` applier a teacher-output cache takes (see
    :mod:`attrpreserve.teacher_cache`). Needs ``image_size``, ``scale``, ``ratio``, ``mean``, ``std``
    in ``self.hparams``/attributes.
    """

    image_size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def sample_view(self, generator: torch.Generator | None, height: int, width: int) -> tuple[T.Box, bool]:
        """A training view of a ``height x width`` image (:func:`~attrpreserve.data.transforms.sample_view`
        with this module's ``scale``/``ratio``)."""
        return T.sample_view(generator, height, width, scale=self.scale, ratio=self.ratio)

    def apply_view(self, image: Tensor, box: Sequence[int], flip: bool) -> Tensor:
        """Apply a view and resize to ``image_size`` (:func:`~attrpreserve.data.transforms.apply_view`).

        A uint8 image (what ``source_dataset`` gives) is cropped and resized in uint8, then
        normalised with this module's ``mean``/``std``, as the training items are; a float image
        is taken as normalised already and only cropped and resized.
        """
        out = T.apply_view(image, box, flip, self.image_size)
        return out if image.is_floating_point() else T.normalize(out, self.mean, self.std)

    def apply_views(self, images: Sequence[Tensor], boxes: Sequence[Sequence[int]], flips: Sequence[bool]) -> Tensor:
        """:meth:`apply_view` for a batch: each image cropped and resized (uint8 in uint8), the
        stack normalised once. Equal to stacking :meth:`apply_view`'s results (normalising is
        elementwise), for the teacher cache's batched loading.

        Args:
            images: ``[3, H_i, W_i]`` images, all uint8 or all float (normalised already).
            boxes: one ``(top, left, height, width)`` per image, in its pixels.
            flips: one horizontal flip flag per image.

        Returns:
            float32 ``[B, 3, image_size, image_size]``.

        Raises:
            ValueError: lists of different lengths, an empty batch, or images of mixed dtypes.

        Example:
            >>> from attrpreserve.data import SyntheticDataModule
            >>> dm = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4))
            >>> x = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
            >>> views = dm.apply_views([x, x], [(0, 0, 40, 48), (4, 8, 20, 30)], [False, True])
            >>> views.shape, torch.equal(views[1], dm.apply_view(x, (4, 8, 20, 30), True))
            (torch.Size([2, 3, 32, 32]), True)
        """
        _check_views(images, boxes, flips)
        dtypes = {x.dtype for x in images}
        if len(dtypes) > 1:  # torch.stack would promote uint8 to float silently
            raise ValueError(f"Expected argument `images` to share one dtype, but got {sorted(map(str, dtypes))}.")
        out = torch.stack([T.apply_view(x, box, flip, self.image_size) for x, box, flip in zip(images, boxes, flips)])
        return out if out.is_floating_point() else T.normalize(out, self.mean, self.std)

    def crop_views(self, images: Sequence[Tensor], boxes: Sequence[Sequence[int]],
                   flips: Sequence[bool]) -> PendingViews:
        """:meth:`apply_views` up to the crop: the rest (resize, flip, normalise) is left to
        :meth:`PendingViews.render`, on the model's device (``augment_on_device``).

        Raises:
            ValueError: as :meth:`apply_views`.
        """
        _check_views(images, boxes, flips)
        if any(x.is_floating_point() for x in images):  # rendering normalises: only uint8 sources
            raise ValueError("Expected argument `images` to be uint8 (the loader's source images), but got "
                             f"{sorted({str(x.dtype) for x in images})}.")
        return PendingViews([T.crop_view(x, box) for x, box in zip(images, boxes)], flips)

    def render_views(self, batch: Any) -> Any:
        """``batch`` with a :class:`PendingViews` under ``image`` finished (:meth:`PendingViews.render`
        with this module's ``image_size``, ``mean`` and ``std``); any other batch as it is."""
        if isinstance(batch, dict) and isinstance(batch.get("image"), PendingViews):
            batch = {**batch, "image": batch["image"].render(self.image_size, self.mean, self.std)}
        return batch

    def _init_cache(self, cache_teacher: bool, cache_views: int, cache_dir: str | os.PathLike, cache_seed: int,
                    cache_batched: bool = True) -> None:
        self.cache_teacher = bool(cache_teacher)
        if not isinstance(cache_batched, bool):
            raise ValueError(f"Expected argument `cache_batched` to be a bool, but got {cache_batched!r}.")
        self.cache_batched = cache_batched
        self.cache_views = check_int("cache_views", cache_views, 1)
        self.cache_seed = check_int("cache_seed", cache_seed, 0)
        if not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir):
            raise ValueError(f"Expected argument `cache_dir` to be a folder path, but got {cache_dir!r}.")
        self.cache_dir = cache_dir

    def _train_set(self, dataset: Dataset | None) -> Dataset | None:
        """The training set, served from the teacher cache when ``cache_teacher`` is on."""
        if not getattr(self, "cache_teacher", False) or dataset is None:
            return dataset
        from attrpreserve.teacher_cache import cached_train_dataset

        return cached_train_dataset(self, views=self.cache_views, cache_dir=self.cache_dir, seed=self.cache_seed)

    def _loader(self, dataset: Dataset | None, name: str) -> DataLoader:
        """An evaluation loader: dataset order."""
        if dataset is None:
            raise RuntimeError(f"`{name}` is not set: call `setup()` first.")
        return DataLoader(dataset, shuffle=False, **loader_kwargs(self.batch_size, self.num_workers, self.pin_memory))

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled, augmented training batches, exactly resumable mid-epoch (see
        :mod:`~attrpreserve.data.resumable`); seeded by the global seed (``seed_everything``), or
        on resume by the checkpointed seed."""
        dataset = self._train_set(self.train_dataset)
        if dataset is None:
            raise RuntimeError("`train_dataset` is not set: call `setup()` first.")
        trainer = getattr(self, "trainer", None)
        world, rank = (1, 0) if trainer is None else (int(trainer.world_size), int(trainer.global_rank))
        seed = torch.initial_seed() % 2**62
        sampler = ResumableSampler(dataset, shuffle=True, seed=seed, num_replicas=world, rank=rank)
        epoch, skip_batches = resume_position(trainer, math.ceil(sampler.num_samples / self.batch_size))
        sampler.resume(epoch, skip_batches * self.batch_size)
        kwargs = loader_kwargs(self.batch_size, self.num_workers, self.pin_memory, seed)
        cached = getattr(self, "cache_teacher", False)
        if (cached and getattr(self, "cache_batched", False)) or (not cached and hasattr(dataset, "batch")):
            # Same keys, same batches, fetched whole (no per-item dicts, forks of the RNG, collation):
            # the teacher cache's views, or a dataset that builds its own batches (VOCDataset).
            return ResumableLoader(BatchedItems(dataset), **kwargs, sampler=sampler, collate_fn=collate_batched)
        return ResumableLoader(SeededItems(dataset), **kwargs, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val_dataset")

    def test_dataloader(self) -> DataLoader:
        """The localisation split (images, labels, masks), in dataset order."""
        return self._loader(self.localization_dataset, "localization_dataset")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def denormalize(self, images: Tensor) -> Tensor:
        """Undo this module's normalisation, for display (``[..., 3, H, W]``)."""
        return T.denormalize(images, self.mean, self.std)


def loader_kwargs(batch_size: int, num_workers: int, pin_memory: bool | None, seed: int = 0) -> dict[str, Any]:
    """DataLoader arguments: persistent workers when there are workers, pinned memory when CUDA is
    there, and a generator of its own for the worker seeds, so that starting an epoch does not
    draw from the global generator (and shift the dropout masks of the steps that follow)."""
    return {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
        "generator": torch.Generator().manual_seed(seed),
    }


def default_workers() -> int:
    """Loader workers when none are asked for: ``min(4, cores)``, but none on one or two cores.

    ``cores`` are the ones this process may run on (its CPU affinity, else ``os.cpu_count()``). On
    two cores a worker process takes one from the training step: a cached /8 SSWA fit ran 1.4x
    faster with 0 workers than with 2, and no path ran slower (``benchmarks/fit_vs_commit.py``).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(4, cores)
