"""Training views finished on the model's device (``VOCDataModule(augment_on_device=True)``): the
loader only crops, the batch carries a ``PendingViews`` and the data module's
``on_after_batch_transfer`` resizes, flips and normalises it where the model is. On the CPU the
finished batches and a whole fit are, bit for bit, those of the loader path: the VOC store without
a teacher cache and the batched teacher cache, 0 and 1 workers."""

from __future__ import annotations

import pickle

import pytest
import pytorch_lightning as pl
import torch

from attrpreserve.data import SyntheticDataModule, VOCDataModule
from attrpreserve.data.common import PendingViews
from attrpreserve.models import vgg_small
from tests.test_batched_views import BATCH, _assert_same, _attach, _epochs, _teacher


def _finish(dm, batch):
    """What Lightning does with a training batch before the step, on the CPU."""
    return dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, torch.device("cpu"), 0), 0)


def _module(voc_root, tmp_path, workers: int, on_device: bool, cached: bool, store: bool = True) -> VOCDataModule:
    dm = VOCDataModule(voc_root, image_size=32, batch_size=BATCH, num_workers=workers, store=store,
                       store_dir=str(tmp_path / "store"), scale=(0.08, 1.0), pin_memory=False, cache_teacher=cached,
                       cache_views=4, cache_dir=str(tmp_path / "teacher"), augment_on_device=on_device)
    dm.setup("fit")
    return dm


def test_pending_views_render_what_apply_views_builds():
    dm = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4))
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
              for h, w in ((40, 48), (33, 61), (24, 24))]
    boxes, flips = [(4, 8, 20, 30), (0, 17, 33, 40), (0, 0, 24, 24)], [True, False, True]
    expected = dm.apply_views(images, boxes, flips)
    pending = dm.crop_views(images, boxes, flips)
    assert [tuple(c.shape) for c in pending.crops] == [(3, 20, 30), (3, 33, 40), (3, 24, 24)]
    assert all(c.is_contiguous() and c.dtype == torch.uint8 for c in pending.crops)
    assert torch.equal(pending.render(32, dm.mean, dm.std), expected)
    # what workers and Lightning do to it on the way: pickled (shared memory), moved with .to()
    moved = pickle.loads(pickle.dumps(pending)).to("cpu")
    assert isinstance(moved, PendingViews) and torch.equal(moved.render(32, dm.mean, dm.std), expected)
    assert torch.equal(dm.render_views({"image": pending})["image"], expected)
    plain = {"image": expected, "labels": torch.zeros(3)}
    assert dm.render_views(plain) is plain  # a finished batch passes through
    with pytest.raises(ValueError, match="as many flips as crops"):
        PendingViews(pending.crops, [True])
    with pytest.raises(ValueError, match="uint8"):
        dm.crop_views([images[0].float()], boxes[:1], flips[:1])
    with pytest.raises(ValueError, match="as many boxes and flips"):
        dm.crop_views(images, boxes[:2], flips)


@pytest.mark.parametrize(("cached", "workers", "store"),
                         [(False, 0, True), (False, 1, True), (True, 0, True), (True, 1, True), (True, 0, False)])
def test_batches_finished_on_the_device_equal_the_loaders(voc_root, tmp_path, cached, workers, store):
    """Two epochs and a loader resumed after one batch of epoch 1: every batch defers its views
    and, once finished, equals the loader path's batch over the same keys (the teacher cache's
    views also from decoded JPEGs, without a store)."""
    teacher = _teacher(20)
    loader_dm, device_dm = (_module(voc_root, tmp_path, workers, on, cached, store) for on in (False, True))
    _attach(loader_dm, teacher)
    _attach(device_dm, teacher)
    reference = _epochs(loader_dm.train_dataloader(), (0, 1))
    deferred = _epochs(device_dm.train_dataloader(), (0, 1))
    assert all(isinstance(b["image"], PendingViews) and len(b["image"]) == len(b["index"])
               for epoch in deferred for b in epoch)
    _assert_same(reference, [[_finish(device_dm, b) for b in epoch] for epoch in deferred], "epochs")
    assert reference[0][0]["image"].shape[-2:] == (32, 32) and ("teacher_logits" in reference[0][0]) == cached
    # not trivially equal: the crops differ in size, so the resize did real work
    assert len({tuple(c.shape) for epoch in deferred for b in epoch for c in b["image"].crops}) > 1
    _attach(device_dm, teacher, epoch=1, done=1)
    resumed = _epochs(device_dm.train_dataloader(), (1,))[0]
    _assert_same(reference[1][1:], [_finish(device_dm, b) for b in resumed], "resumed")


def test_augment_on_device_checks_its_setting(voc_root, tmp_path):
    with pytest.raises(ValueError, match="augment_on_device"):
        VOCDataModule(voc_root, augment_on_device=True)  # no store, no cache: nothing batched to defer
    with pytest.raises(ValueError, match="augment_on_device"):
        VOCDataModule(voc_root, augment_on_device=True, cache_teacher=True, cache_batched=False)
    with pytest.raises(ValueError, match="augment_on_device"):
        VOCDataModule(voc_root, augment_on_device=True, store=True, train_augment=False)
    with pytest.raises(ValueError, match="augment_on_device"):
        VOCDataModule(voc_root, augment_on_device="yes", store=True)
    from pytorch_lightning.utilities.model_helpers import is_overridden

    # the cache defers without a store; only a module that defers takes Lightning's transfer hook
    assert is_overridden("on_after_batch_transfer", VOCDataModule(voc_root, augment_on_device=True, cache_teacher=True))
    assert not is_overridden("on_after_batch_transfer", VOCDataModule(voc_root, store=True))


def _fit(voc_root, tmp_path, on_device: bool, cached: bool):
    from attrpreserve.callbacks import AttributionMatching
    from attrpreserve.modules import DistillationModule

    pl.seed_everything(3)
    hooked = []

    class Module(DistillationModule):  # a module hook of its own still runs after the data module's
        def on_after_batch_transfer(self, batch, dataloader_idx):
            if self.training:
                hooked.append(type(batch["image"]))
            return batch

    module = Module(vgg_small(num_classes=20, width_divisor=4), vgg_small(num_classes=20, width_divisor=8), lr=0.01)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch["image"].clone())

    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, deterministic=True, logger=False, limit_val_batches=0,
                         num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[AttributionMatching(mode="sswa", weight=10.0), Record()])
    trainer.fit(module, datamodule=_module(voc_root, tmp_path, 0, on_device, cached))
    assert hooked == [torch.Tensor] * len(seen)  # Lightning calls the data module's hook; it forwards
    return seen, dict(module.student.state_dict())


@pytest.mark.parametrize("cached", [False, True])
def test_fit_with_views_finished_on_the_device_equals_the_loader_fit(voc_root, tmp_path, cached):
    # A fit that builds the cache draws once from the global generator: build it first.
    _fit(voc_root, tmp_path, False, cached)
    seen, weights = _fit(voc_root, tmp_path, False, cached)
    seen_device, weights_device = _fit(voc_root, tmp_path, True, cached)
    assert len(seen) == 4
    _assert_same(seen, seen_device, "batches")
    _assert_same(weights, weights_device, "weights")
