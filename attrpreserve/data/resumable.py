"""A training order that a killed run can resume exactly, mid-epoch.

Lightning restores the loops, optimisers and callbacks of a checkpoint, but a plain shuffled
DataLoader starts a resumed epoch over with a fresh permutation and fresh augmentation draws, so
the resumed run sees other batches than the one it replaces. Two pieces make the data side a pure
function of ``(seed, epoch, position)`` instead:

- :class:`ResumableSampler` shuffles with a generator seeded by ``seed + epoch`` (as
  ``DistributedSampler``, which it extends, so Lightning keeps it under DDP and each rank takes
  its shard), can start its first epoch after ``skip`` items, and yields *keys*
  ``(index, draw_seed)`` with one seed per item and epoch.
- :class:`SeededItems` wraps a dataset so that ``dataset[(index, draw_seed)]`` runs the item's
  random transforms with torch's CPU generator seeded by ``draw_seed``, in a forked RNG: the crop and flip of
  an item no longer depend on which batch, worker or process fetched it before, and the global
  generator (dropout) is left alone. Plain integer indices pass through unchanged.

The data modules build their training loader from these (``ViewMixin.train_dataloader``): a
:class:`ResumableLoader`, whose state (the seed) Lightning checkpoints and restores, so
``fit --ckpt_path last`` continues the same sequence even when the run's seed was random.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

Key = tuple[int, int]
"""``(index, draw_seed)``: an item and the seed of its random transforms."""


def draw_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s augmentation in ``epoch`` (well mixed, 63 bits).

    Example:
        >>> draw_seed(0, 1, 2) == draw_seed(0, 1, 2) != draw_seed(0, 2, 2)
        True
    """
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class ResumableSampler(DistributedSampler):
    """Epoch-seeded shuffling that yields ``(index, draw_seed)`` keys and can resume mid-epoch.

    The order of epoch ``e`` is ``torch.randperm(n, generator=seed + e)`` (the identity without
    ``shuffle``), padded and sharded over ``num_replicas`` as ``DistributedSampler`` does; Lightning
    calls :meth:`set_epoch` at every epoch start. The first iteration after construction runs epoch
    ``epoch`` and leaves out its first ``skip`` items of this rank's shard: the items a killed run
    had already trained on.

    Args:
        data_source: the dataset (only its length is used).
        shuffle: permute the items every epoch.
        seed: base seed of the permutations and of the items' draw seeds.
        epoch: epoch of the first iteration.
        skip: items of this rank's shard to leave out at the start of the first iteration.
        num_replicas, rank: DDP world size and this process's rank.
        drop_last: drop the tail of the shards instead of padding them.

    Raises:
        ValueError: negative ``seed``, ``epoch`` or ``skip``.

    Example:
        >>> s = ResumableSampler(range(4), shuffle=False, seed=0, skip=2)
        >>> [i for i, _ in s], [i for i, _ in s]
        ([2, 3], [0, 1, 2, 3])
    """

    def __init__(self, data_source: Sized, shuffle: bool = True, seed: int = 0, epoch: int = 0, skip: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> None:
        if seed < 0:
            raise ValueError(f"Expected argument `seed` to be >= 0, but got {seed!r}.")
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)  # type: ignore[arg-type]
        self.resume(epoch, skip)

    def resume(self, epoch: int, skip: int) -> None:
        """Make the next iteration run ``epoch`` without its first ``skip`` items."""
        if epoch < 0 or skip < 0:
            raise ValueError(f"Expected arguments `epoch` and `skip` to be >= 0, but got {epoch=!r}, {skip=!r}.")
        self.epoch, self.skip = epoch, skip
        self._resume_epoch: int | None = epoch if skip else None

    def order(self, epoch: int) -> list[int]:
        """This rank's item indices for ``epoch``, in order (``DistributedSampler``'s sharding)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            indices = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[: self.total_size]
        elif self.total_size > n:
            indices += (indices * math.ceil((self.total_size - n) / n))[: self.total_size - n]
        return indices[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[Key]:  # type: ignore[override]
        epoch = self.epoch
        start = self.skip if self._resume_epoch == epoch else 0
        self._resume_epoch = None  # the skip applies to the resumed epoch's first pass only
        for index in self.order(epoch)[start:]:
            yield index, draw_seed(self.seed, epoch, index)

    def __len__(self) -> int:
        # Lightning counts batches from this before the first (possibly shortened) pass: report a
        # full shard so the epoch loop's progress, restored from the checkpoint, stays consistent.
        return self.num_samples


class SeededItems(Dataset):
    """``dataset`` whose items, fetched by a ``(index, draw_seed)`` key, draw their randomness from
    torch's CPU generator seeded with ``draw_seed`` (in a forked RNG, so the caller's generator is
    untouched).

    An ``int`` key fetches ``dataset[index]`` as it is. Attributes of ``dataset`` are reachable
    through the wrapper.

    Example:
        >>> class Noise(Dataset):
        ...     def __len__(self): return 2
        ...     def __getitem__(self, i): return torch.rand(1).item()
        >>> items = SeededItems(Noise())
        >>> items[(0, 7)] == items[(0, 7)] != items[(0, 8)]
        True
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | Key) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                # The CPU generator alone: torch.manual_seed also seeds every accelerator (~0.2 ms).
                torch.default_generator.manual_seed(seed)
                return self.dataset[index]
        return self.dataset[key]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.dataset, name)


class BatchedItems(SeededItems):
    """:class:`SeededItems` whose DataLoader batches are fetched whole: a DataLoader calls
    ``__getitems__(keys)`` for a batch when the dataset defines it, here ``dataset.batch(keys)``,
    which returns the batch already collated (equal, tensor for tensor, to collating
    ``SeededItems(dataset)[key]`` for every key); give the loader ``collate_fn=collate_batched``.
    Single keys fetch items as ``SeededItems`` does.

    Args:
        dataset: anything with ``batch(keys)`` (a teacher cache's views, ``VOCDataset``).

    Example:
        >>> class Views(Dataset):
        ...     def batch(self, keys): return {"index": torch.tensor([index for index, _ in keys])}
        >>> BatchedItems(Views()).__getitems__([(4, 11), (2, 12)])
        {'index': tensor([4, 2])}
    """

    def __getitems__(self, keys: list[int | Key]) -> dict[str, Any]:
        return self.dataset.batch(keys)


def collate_batched(batch: dict[str, Any]) -> dict[str, Any]:
    """The ``collate_fn`` of a loader over :class:`BatchedItems`: its batches come collated.

    Example:
        >>> collate_batched({"index": torch.tensor([3, 1])})
        {'index': tensor([3, 1])}
    """
    return batch


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose seed Lightning checkpoints.

    Lightning saves the ``state_dict()`` of a training loader that has one and hands it back to
    ``load_state_dict`` before the resumed run's first batch; the position within the epoch comes
    from the trainer's restored loop progress (:func:`resume_position`).
    """

    def state_dict(self) -> dict[str, Any]:
        return {"seed": int(self.sampler.seed)}  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "seed" in state_dict:
            self.sampler.seed = int(state_dict["seed"])  # type: ignore[attr-defined]


def resume_position(trainer: Any, batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches)``: where the training loader's first pass starts.

    A fresh fit starts at ``(0, 0)``. A fit restored from a checkpoint written mid-epoch (after
    ``batches`` training batches of ``epoch``) continues that epoch after those batches; one
    written after an epoch's last batch continues with the next epoch. Read from the trainer's
    restored loop progress, which Lightning loads before it asks for the training loader.

    Args:
        trainer: the attached trainer, or ``None``.
        batches_per_epoch: training batches in a full epoch of this process.
    """
    if trainer is None:
        return 0, 0
    epochs = trainer.fit_loop.epoch_progress.current
    # Mid-epoch progress counts only when resuming (a reload between epochs sees the last one's).
    done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer.fit_loop.restarting else 0
    limit = trainer.limit_train_batches
    epoch_length = min(batches_per_epoch, limit) if isinstance(limit, int) else int(batches_per_epoch * limit)
    if epochs.processed > epochs.completed:  # saved in the epoch-end hooks: the epoch is done
        return int(epochs.processed), 0
    if done >= epoch_length:  # saved after the epoch's last batch
        return int(epochs.processed) + 1, 0
    return int(epochs.processed), done
