"""Decoded-image store: items equal the JPEG path's at source size, close to an independent
resize otherwise; masks by nearest neighbour with void kept; keyed by files and settings;
resumable; built on rank 0; the teacher cache's views read from it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

from attrpreserve.data import VOCDataModule, VOCDataset
from attrpreserve.data.resumable import SeededItems, draw_seed
from attrpreserve.data.store import ImageStore, build_on_rank_zero, default_store_size, stored_size
from attrpreserve.data.voc import DataError, read_image, read_mask
from tests.conftest import HEIGHT, WIDTH, write_voc_folder

IGNORE = 255


def _dm(root, tmp_path, **kwargs):
    args = {"image_size": 32, "batch_size": 2, "num_workers": 0, "store": True, "store_dir": str(tmp_path / "store")}
    dm = VOCDataModule(root, **{**args, **kwargs})
    dm.setup()
    return dm


def _items(dataset, keys):
    items = SeededItems(dataset)
    return [items[key] for key in keys]


def test_source_size_store_gives_the_jpeg_items_exactly(voc_root, tmp_path):
    stored = _dm(voc_root, tmp_path, store_size=0)
    plain = VOCDataModule(voc_root, image_size=32, batch_size=2, num_workers=0)
    plain.setup()
    keys = [(i, draw_seed(3, epoch, i)) for epoch in (0, 1) for i in range(4)]  # as ResumableSampler keys
    for a, b in zip(_items(stored.train_dataset, keys), _items(plain.train_dataset, keys)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    for split in ("val_dataset", "localization_dataset"):
        ours, theirs = getattr(stored, split), getattr(plain, split)
        for i in range(len(ours)):
            assert torch.equal(ours[i]["image"], theirs[i]["image"]), (split, i)
            if "mask" in theirs[i]:
                assert torch.equal(ours[i]["mask"], theirs[i]["mask"]), (split, i)
    # the teacher cache's source items: uint8, at source size, equal to the decoded file
    source = stored.source_dataset()
    assert source.store is not None and source[1]["image"].dtype == torch.uint8
    assert torch.equal(source[1]["image"], read_image(source.image_path(1)))


def test_stored_images_are_the_resized_source(voc_root, tmp_path):
    dm = _dm(voc_root, tmp_path)
    assert dm.store_size == default_store_size(32) == 37
    ds = dm.localization_dataset
    h, w = stored_size(HEIGHT, WIDTH, 37)
    assert (h, w) == (37, 44) and ds.image_size_of(0) == (h, w) and ds.store.source_size(0) == (HEIGHT, WIDTH)
    for i in range(len(ds)):
        image = ds.store.image(i)
        assert image.dtype == torch.uint8 and image.shape == (3, h, w)
        # oracle: full decode + torchvision's antialiased bilinear resize (the store uses PIL's)
        expected = TF.resize(read_image(ds.image_path(i)), [h, w], antialias=True)
        diff = (image.int() - expected.int()).abs().float()
        assert diff.mean() < 2.0 and diff.max() <= 48, (i, diff.mean(), diff.max())
        # masks: nearest neighbour by index arithmetic, every value kept (void 255 included)
        source = read_mask(ds.mask_path(i)).numpy()
        rows = np.floor(np.arange(h) * HEIGHT / h).astype(int)
        cols = np.floor(np.arange(w) * WIDTH / w).astype(int)
        mask = ds.store.mask(i).numpy()
        np.testing.assert_array_equal(mask, source[rows][:, cols])
        assert (mask == IGNORE).any() and set(np.unique(mask)) <= set(np.unique(source))
    item = ds[0]  # evaluation items: resized to image_size from the store, normalised after
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.int64


def test_training_items_are_seeded_per_key(voc_root, tmp_path):
    ds = _dm(voc_root, tmp_path).train_dataset
    keys = [(0, 11), (0, 11), (0, 12), (2, 11)]
    a, b, c, d = _items(ds, keys)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.float32
    # the crop is the torchvision RandomResizedCrop + flip of the stored uint8 image, normalised after
    from attrpreserve.data import transforms as T

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(11)
        view = T.train_transform(32)(TF.to_image(ds.store.image(0)))
    assert torch.equal(a["image"], T.normalize(view, ds.mean, ds.std))


def test_key_follows_files_and_settings(tmp_path):
    voc = write_voc_folder(tmp_path / "voc")
    images = sorted((voc / "JPEGImages").iterdir())
    store = ImageStore(images, short_side=37, store_dir=tmp_path / "s").build(progress=False)
    assert ImageStore(images, short_side=37, store_dir=tmp_path / "s").key == store.key
    assert ImageStore(images, short_side=40, store_dir=tmp_path / "s").key != store.key
    assert ImageStore(images[:-1], short_side=37, store_dir=tmp_path / "s").key != store.key
    before = store.image(2).clone()
    # a changed file: new content, new mtime -> another store, built afresh; the old one untouched
    from PIL import Image

    Image.new("RGB", (WIDTH, HEIGHT), (0, 200, 0)).save(images[2])
    st = images[2].stat()
    os.utime(images[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = ImageStore(images, short_side=37, store_dir=tmp_path / "s")
    assert changed.key != store.key and not changed.is_complete
    changed.build(progress=False)
    assert changed.image(2)[1].float().mean() > 150 and torch.equal(store.image(2), before)
    assert torch.equal(changed.image(3), store.image(3))


def test_build_resumes_after_interruption(tmp_path, monkeypatch):
    voc = write_voc_folder(tmp_path / "voc")
    images = sorted((voc / "JPEGImages").iterdir())
    masks = sorted((voc / "SegmentationClass").iterdir())
    store = ImageStore(images, masks, short_side=37, store_dir=tmp_path / "s", threads=1)
    import attrpreserve.data.store as module

    original, calls = module.decode_resized, {"n": 0}

    def flaky(path, size):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return original(path, size)

    monkeypatch.setattr(module, "decode_resized", flaky)
    with pytest.raises(KeyboardInterrupt):
        store.build(progress=False, chunk=2)
    done = np.load(store.path / "done.npy")
    assert done.sum() == 2 and not store.is_complete
    with pytest.raises(ValueError, match="incomplete"):
        store.image(0)
    monkeypatch.setattr(module, "decode_resized", original)
    ImageStore(images, masks, short_side=37, store_dir=tmp_path / "s").build(progress=False)
    fresh = ImageStore(images, masks, short_side=37, store_dir=tmp_path / "fresh").build(progress=False)
    for name in ("images.npy", "masks.npy", "shapes.npy"):
        np.testing.assert_array_equal(np.load(store.path / name), np.load(fresh.path / name))


def test_broken_files_raise_data_error_from_setup(tmp_path):
    voc = write_voc_folder(tmp_path / "corrupt", corrupt_image=1)
    with pytest.raises(DataError, match="2012_000001.jpg"):
        _dm(voc, tmp_path)
    voc = write_voc_folder(tmp_path / "sizes", mask_scale={4: 2})
    with pytest.raises(DataError, match="2012_000004.png"):
        _dm(voc, tmp_path)


def test_bad_store_arguments(voc_root):
    for kwargs, name in (({"store": 1}, "store"), ({"store_size": 20}, "store_size"),
                         ({"store_size": -1}, "store_size"), ({"store_dir": ""}, "store_dir")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            VOCDataModule(voc_root, image_size=32, **kwargs)


def test_store_pickles_without_its_maps(voc_root, tmp_path):
    ds = _dm(voc_root, tmp_path).localization_dataset
    ds[0]
    assert ds.store._mm is not None
    blob = pickle.dumps(ds)  # what a spawned DataLoader worker receives
    assert len(blob) < 100_000
    clone = pickle.loads(blob)
    assert clone.store._mm is None and torch.equal(clone[1]["image"], ds[1]["image"])


def test_rank_zero_builds_others_wait(tmp_path):
    voc = write_voc_folder(tmp_path / "voc")
    images = sorted((voc / "JPEGImages").iterdir())

    class Strategy:
        calls: list[str] = []

        def barrier(self, name):
            self.calls.append(name)

    class Trainer:
        def __init__(self, zero):
            self.is_global_zero, self.strategy = zero, Strategy()

    store = ImageStore(images, short_side=37, store_dir=tmp_path / "s")
    build_on_rank_zero([store], Trainer(False), progress=False)
    assert not store.is_complete and Strategy.calls == ["image_store"]
    build_on_rank_zero([store], Trainer(True), progress=False)
    assert store.is_complete and Strategy.calls == ["image_store"] * 2


def test_teacher_cache_views_read_the_store(voc_root, tmp_path):
    import pytorch_lightning as pl

    from attrpreserve.callbacks import AttributionMatching
    from attrpreserve.models import vgg_small
    from attrpreserve.modules import DistillationModule
    from attrpreserve.teacher_cache import TeacherCache

    dm = _dm(voc_root, tmp_path, cache_teacher=True, cache_views=2, cache_dir=str(tmp_path / "teacher"))
    torch.manual_seed(0)
    teacher = vgg_small(num_classes=20, width_divisor=8).eval()
    source = dm.source_dataset()
    cache = TeacherCache(teacher, source, dm.sample_view, dm.apply_view, views=2, cache_dir=tmp_path / "teacher",
                         image_size=32, extra_key=f"scale={tuple(dm.scale)},ratio={tuple(dm.ratio)}")
    boxes = np.load(cache.build(progress=False).path / "boxes.npy")
    h, w = source.image_size_of(3)
    assert (h, w) == (37, 44) and all(b[0] + b[2] <= h and b[1] + b[3] <= w for b in boxes[3])
    item = cache.dataset_for_training().item(3, 1)
    flips = np.load(cache.path / "flips.npy")
    expected = dm.apply_view(source.store.image(3), tuple(boxes[3, 1]), bool(flips[3, 1]))
    assert torch.equal(item["image"], expected) and expected.dtype == torch.float32
    with torch.no_grad():
        logits = teacher(item["image"][None])[0]
    torch.testing.assert_close(item["teacher_logits"], logits, rtol=1e-3, atol=2e-3)
    # and a fit reads it (same key: one teacher-cache folder)
    module = DistillationModule(teacher, vgg_small(num_classes=20, width_divisor=8), lr=0.01)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         callbacks=[AttributionMatching(mode="sswa", weight=10.0)])
    trainer.fit(module, dm)
    assert "train/match" in trainer.logged_metrics
    assert len(list((tmp_path / "teacher").iterdir())) == 1
    batch = default_collate([dm.val_dataset[i] for i in range(2)])
    assert batch["image"].shape == (2, 3, 32, 32)
