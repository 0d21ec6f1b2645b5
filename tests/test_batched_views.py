"""Batched loading of the teacher cache's views: the data modules' training loader fetches whole
batches (``CachedViewsDataset.batch`` through ``CachedViewBatches``) and gives, tensor for tensor
and in the same order, the batches of the per-item path (``SeededItems`` + ``default_collate``):
synthetic data and VOC read from the decoded-image store, 0 and 1 workers, two epochs, a loader
resumed mid-epoch, and a whole fit (weights equal, and a fit resumed from a mid-epoch checkpoint
ends where the uninterrupted one does)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attrpreserve.data import SyntheticDataModule, VOCDataModule
from attrpreserve.data.resumable import SeededItems
from attrpreserve.models import vgg_small
from attrpreserve.teacher_cache import CachedViewBatches, CachedViewsDataset

BATCH = 3


def _teacher(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return vgg_small(num_classes=num_classes, width_divisor=8).eval()


def _attach(dm, teacher, epoch: int = 0, done: int = 0) -> None:
    """The parts of a trainer that ``cached_train_dataset`` and ``resume_position`` read: a
    fresh fit, or one restored after ``done`` batches of ``epoch``."""
    current = SimpleNamespace(processed=epoch, completed=epoch)
    dm.trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(teacher=teacher, device=torch.device("cpu"), teacher_layers=lambda: ["pool5"]),
        is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name: None), world_size=1, global_rank=0,
        limit_train_batches=1.0,
        fit_loop=SimpleNamespace(
            epoch_progress=SimpleNamespace(current=current), restarting=done > 0,
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(processed=done)))),
    )


def _synthetic(tmp_path, workers: int, batched: bool) -> SyntheticDataModule:
    # scale down to 0.08: some views cut an object out, so their labels differ from the image's
    dm = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4), num_train=10, num_val=4,
                             num_test=4, batch_size=BATCH, num_workers=workers, scale=(0.08, 1.0), pin_memory=False,
                             cache_teacher=True, cache_views=4, cache_dir=str(tmp_path / "teacher"),
                             cache_batched=batched)
    dm.setup("fit")
    return dm


def _voc(voc_root, tmp_path, workers: int, batched: bool) -> VOCDataModule:
    dm = VOCDataModule(voc_root, image_size=32, batch_size=BATCH, num_workers=workers, store=True,
                       store_dir=str(tmp_path / "store"), scale=(0.08, 1.0), pin_memory=False, cache_teacher=True,
                       cache_views=4, cache_dir=str(tmp_path / "teacher"), cache_batched=batched)
    dm.setup("fit")
    return dm


def _epochs(loader, epochs) -> list[list[dict]]:
    """The loader's batches of each epoch, the epoch set as Lightning sets it before a pass."""
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def _assert_same(a, b, where: str = "") -> None:
    """Equal nested batches: same keys in the same order, same dtypes, shapes and values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where


def _loaders(make, teacher, **resume):
    per_item, batched = make(False), make(True)
    _attach(per_item, teacher, **resume)
    _attach(batched, teacher, **resume)
    loaders = per_item.train_dataloader(), batched.train_dataloader()
    # the switch works: otherwise this test would compare the per-item path with itself
    assert type(loaders[0].dataset) is SeededItems and isinstance(loaders[1].dataset, CachedViewBatches)
    return loaders


def _check_batched_equals_per_item(make, teacher, num_items: int) -> None:
    per_item, batched = _loaders(make, teacher)
    reference = _epochs(per_item, (0, 1))
    _assert_same(reference, _epochs(batched, (0, 1)), "epochs")
    # not trivially equal: every item once per epoch, the views vary, and some view's labels are
    # not the image's (label-aware crops through view_labels)
    flat = [b for epoch in reference for b in epoch]
    assert [sorted(torch.cat([b["index"] for b in epoch]).tolist()) for epoch in reference] == [
        list(range(num_items))] * 2
    assert len(torch.cat([b["view"] for b in flat]).unique()) > 1
    source = per_item.dataset.dataset.dataset
    full = torch.stack([source[i]["labels"] for i in torch.cat([b["index"] for b in flat]).tolist()])
    assert not torch.equal(full, torch.cat([b["labels"] for b in flat]))
    assert set(flat[0]["teacher_features"]) == {"pool5"}
    # resumed after one batch of epoch 1 (train_dataloader reads the restored loop progress)
    per_item, batched = _loaders(make, teacher, epoch=1, done=1)
    tail = reference[1][1:]
    _assert_same(tail, _epochs(per_item, (1,))[0], "resumed per-item")
    _assert_same(tail, _epochs(batched, (1,))[0], "resumed batched")
    # and the epoch after the resumed one is whole again
    _assert_same(_epochs(per_item, (2,)), _epochs(batched, (2,)), "epoch after resume")


@pytest.mark.parametrize("workers", [0, 1])
def test_synthetic_batches_equal_the_per_item_path(tmp_path, workers):
    _check_batched_equals_per_item(lambda batched: _synthetic(tmp_path, workers, batched), _teacher(3), 10)


@pytest.mark.parametrize("workers", [0, 1])
def test_voc_store_batches_equal_the_per_item_path(voc_root, tmp_path, workers):
    _check_batched_equals_per_item(lambda batched: _voc(voc_root, tmp_path, workers, batched), _teacher(20), 4)


def test_batch_equals_collated_items_for_any_keys(tmp_path):
    """``batch`` on its own: plain indices draw the view from the global generator as
    ``dataset[index]`` does, keys from their draw seed; duplicate indices (DDP padding) are kept;
    a source dataset without ``view_image`` takes the per-item path inside ``batch``."""
    dm = _synthetic(tmp_path, 0, True)
    _attach(dm, _teacher(3))
    data = dm.train_dataloader().dataset.dataset
    assert isinstance(data, CachedViewsDataset) and data.apply_views is not None
    keys = [(4, 11), (0, 12), (4, 13), (9, 14)]
    expected = torch.utils.data.default_collate([SeededItems(data)[key] for key in keys])
    _assert_same(expected, data.batch(keys))
    torch.manual_seed(5)
    expected = torch.utils.data.default_collate([data[i] for i in (2, 7, 2)])
    torch.manual_seed(5)
    _assert_same(expected, data.batch([2, 7, 2]))

    class NoViewImage(torch.utils.data.Dataset):  # only what item() reads
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitem__(self, index):
            return self.source[index]

    plain = CachedViewsDataset(NoViewImage(data.dataset), data.path, ["pool5"], data.apply_view)
    reference = torch.utils.data.default_collate([SeededItems(plain)[key] for key in keys])
    _assert_same(reference, plain.batch(keys))
    # without view_labels the labels are the full image's, so they differ from the label-aware ones
    assert torch.equal(reference["labels"], torch.stack([data.dataset[i]["labels"] for i, _ in keys]))
    with pytest.raises(IndexError):
        data.batch([(10, 1)])


def test_apply_views_checks_its_arguments():
    dm = SyntheticDataModule(num_classes=3)
    x = torch.zeros(3, 40, 48, dtype=torch.uint8)
    with pytest.raises(ValueError, match="as many boxes and flips"):
        dm.apply_views([x, x], [(0, 0, 8, 8)], [False, False])
    with pytest.raises(ValueError, match="as many boxes and flips"):
        dm.apply_views([], [], [])
    with pytest.raises(ValueError, match="one dtype"):
        dm.apply_views([x, x.float()], [(0, 0, 8, 8)] * 2, [False, True])
    with pytest.raises(ValueError, match="cache_batched"):
        SyntheticDataModule(num_classes=3, cache_batched="yes")


def _fit(root, batched: bool, ckpt=None):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from attrpreserve.callbacks import AttributionMatching
    from attrpreserve.modules import DistillationModule

    pl.seed_everything(2)
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8),
                                lr=0.01)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.current_epoch, batch["index"].tolist(), batch["view"].tolist(),
                         float(batch["image"].sum()), float(batch["teacher_features"]["pool5"].sum())))

    data = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4), num_train=12, num_val=4,
                               num_test=4, batch_size=4, num_workers=0, pin_memory=False, cache_teacher=True,
                               cache_views=3, cache_dir=str(root.parent / "teacher"), cache_batched=batched)
    callbacks = [AttributionMatching(mode="sswa", weight=10.0), Record()]
    if ckpt is None:
        callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, deterministic=True, logger=False, limit_val_batches=0,
                         num_sanity_val_steps=0, enable_checkpointing=ckpt is None, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, callbacks=callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return seen, dict(module.student.state_dict())


def test_fit_with_batched_views_equals_per_item_fit_and_resumes(tmp_path):
    """A distillation fit reads the same batches either way and ends with the same weights; a
    batched fit resumed from a mid-epoch checkpoint trains on the rest and ends there too."""
    # A fit that builds the cache draws once from the global generator (the build loop's
    # DataLoader has no generator of its own), shifting dropout and matching draws: build it first.
    _fit(tmp_path / "build", batched=False)
    seen, weights = _fit(tmp_path / "per_item", batched=False)
    assert len(seen) == 6
    seen_batched, weights_batched = _fit(tmp_path / "batched", batched=True)
    assert seen_batched == seen
    _assert_same(weights, weights_batched, "weights")
    seen_resumed, weights_resumed = _fit(tmp_path / "resumed", batched=True,
                                         ckpt=tmp_path / "batched" / "step=4.ckpt")  # epoch 1, after 1 batch
    assert seen_resumed == seen[4:]
    _assert_same(weights, weights_resumed, "resumed weights")


def _voc_online(voc_root, tmp_path, workers: int, store: bool = True) -> VOCDataModule:
    dm = VOCDataModule(voc_root, image_size=32, batch_size=BATCH, num_workers=workers, store=store,
                       store_dir=str(tmp_path / "store"), scale=(0.08, 1.0), pin_memory=False)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("workers", [0, 1])
def test_voc_online_store_batches_equal_the_per_item_path(voc_root, tmp_path, workers):
    """Without a teacher cache, the training loader of a VOC store fetches whole batches
    (``VOCDataset.batch``) equal, tensor for tensor, to the per-item path's over the same keys:
    two epochs, and a loader resumed after one batch of epoch 1."""
    from attrpreserve.data.resumable import BatchedItems, ResumableLoader, ResumableSampler

    dm = _voc_online(voc_root, tmp_path, workers)
    _attach(dm, None)
    batched = dm.train_dataloader()
    assert isinstance(batched.dataset, BatchedItems)  # the batched path is the one under test
    data = batched.dataset.dataset
    seed = batched.sampler.seed

    def per_item(epoch=0, skip=0):
        sampler = ResumableSampler(data, shuffle=True, seed=seed, epoch=epoch, skip=skip)
        return ResumableLoader(SeededItems(data), batch_size=BATCH, sampler=sampler, num_workers=workers)

    reference = _epochs(per_item(), (0, 1))
    _assert_same(reference, _epochs(batched, (0, 1)), "epochs")
    flat = [b for epoch in reference for b in epoch]
    assert [sorted(torch.cat([b["index"] for b in epoch]).tolist()) for epoch in reference] == [list(range(4))] * 2
    # label-aware crops at scale 0.08: some view's labels are not its image's
    full = torch.stack([data.labels[i] for i in torch.cat([b["index"] for b in flat]).tolist()])
    assert not torch.equal(full, torch.cat([b["labels"] for b in flat]))
    _attach(dm, None, epoch=1, done=1)
    _assert_same(reference[1][1:], _epochs(dm.train_dataloader(), (1,))[0], "resumed batched")
    _assert_same(reference[1][1:], _epochs(per_item(1, BATCH), (1,))[0], "resumed per-item")


def test_voc_batch_equals_collated_items(voc_root, tmp_path):
    """``VOCDataset.batch`` on its own: keys from their draw seeds, plain indices from the global
    generator as ``dataset[index]`` draws, duplicates kept; without a store (JPEG decode) the
    items are collated one by one; an index out of range raises."""
    data = _voc_online(voc_root, tmp_path, 0).train_dataset
    keys = [(3, 11), (0, 12), (3, 13), (1, 14)]
    _assert_same(torch.utils.data.default_collate([SeededItems(data)[key] for key in keys]), data.batch(keys))
    torch.manual_seed(5)
    expected = torch.utils.data.default_collate([data[i] for i in (2, 0, 2)])
    torch.manual_seed(5)
    _assert_same(expected, data.batch([2, 0, 2]))
    jpeg = _voc_online(voc_root, tmp_path, 0, store=False).train_dataset
    _assert_same(torch.utils.data.default_collate([SeededItems(jpeg)[key] for key in keys]), jpeg.batch(keys))
    with pytest.raises(IndexError):
        data.batch([(4, 1)])
