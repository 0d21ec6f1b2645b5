"""Synthetic shapes data: determinism, masks vs labels, occlusion bound, balance, format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrpreserve.data import (
    IGNORE_INDEX, SHAPES, SYNTHETIC_MEAN, SYNTHETIC_STD, SceneConfig, SyntheticDataModule, SyntheticDataset,
    render_scene, shape_mask,
)


@pytest.fixture(scope="module")
def scenes():
    """300 default scenes with their object lists (rendered once)."""
    cfg = SceneConfig()
    return cfg, [render_scene(cfg, seed=0, split=0, index=i) for i in range(300)]


def small_dm(**kwargs) -> SyntheticDataModule:
    base = dict(num_train=24, num_val=12, num_test=12, batch_size=6)
    return SyntheticDataModule(**{**base, **kwargs})


def test_determinism_and_seed_dependence():
    a, b, c = small_dm(seed=0), small_dm(seed=0), small_dm(seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_dataset.images, b.val_dataset.images)
    assert torch.equal(a.localization_dataset.masks, b.localization_dataset.masks)
    assert torch.equal(a.val_dataset[3]["image"], b.val_dataset[3]["image"])
    assert not torch.equal(a.val_dataset.images, c.val_dataset.images)
    assert not torch.equal(a.val_dataset.images, a.localization_dataset.images)  # splits differ
    # an item depends on (seed, split, index) only, not on the split's length
    longer = SyntheticDataset("val", 20, a.config, seed=0)
    assert torch.equal(longer.images[:12], a.val_dataset.images)
    # augmentation is random per access but follows torch's seed
    torch.manual_seed(5)
    first = a.train_dataset[0]
    torch.manual_seed(5)
    assert torch.equal(first["image"], b.train_dataset[0]["image"])


def test_masks_exactly_match_labels():
    dm = small_dm(num_classes=6, void_border=1, num_train=60)
    dm.setup()
    torch.manual_seed(0)
    for ds in (dm.train_dataset, dm.val_dataset, dm.localization_dataset):
        for _ in range(3 if ds.augment else 1):
            for i in range(len(ds)):
                item = ds[i]
                present = torch.zeros(6)
                values = item["mask"].unique()
                present[values[(values >= 1) & (values <= 6)] - 1] = 1.0
                assert torch.equal(present, item["labels"]), (ds.split, i)
                assert set(values.tolist()) <= set(range(7)) | {IGNORE_INDEX}
                assert item["labels"].sum() >= (0 if ds.augment else 1)  # un-augmented: at least one object
    assert dm.train_dataset.augment and not dm.val_dataset.augment


def test_augmentation_drops_classes_cut_out_by_the_crop():
    ds = SyntheticDataset("train", 40, SceneConfig(), augment=True, scale=(0.2, 0.3), min_visible=0.5)
    torch.manual_seed(0)
    dropped = 0
    for i in range(len(ds)):
        item = ds[i]
        dropped += int((ds.labels[i] - item["labels"]).sum())
        assert (item["labels"] <= ds.labels[i]).all()  # a crop never adds a class
    assert dropped > 0


def test_shape_carries_the_class(scenes):
    cfg, rendered = scenes
    checked = 0
    def overlap(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    for _, mask, objects in rendered:
        for obj in objects:
            if obj["visible"] < obj["area"]:
                continue
            top, left, h, w = obj["box"]
            expected = shape_mask(SHAPES[obj["cls"]], h, w)
            region = mask[top:top + h, left:left + w] == obj["cls"] + 1
            assert region[expected].all()  # unoccluded: the whole silhouette is the class
            if not any(o is not obj and o["cls"] == obj["cls"] and overlap(o["box"], obj["box"]) for o in objects):
                assert np.array_equal(region, expected)  # and nothing else in its box is
                checked += 1
    assert checked > 300
    silhouettes = [shape_mask(s, 16, 16) for s in SHAPES]
    assert len({m.tobytes() for m in silhouettes}) == len(SHAPES)  # all shapes differ


def test_colour_does_not_give_the_class_away(scenes):
    _, rendered = scenes
    colours = {c: [] for c in range(4)}
    for image, mask, _ in rendered:
        for c in range(4):
            pixels = image[mask == c + 1]
            if len(pixels):
                colours[c].append(pixels.mean(0) / 255)
    means = np.stack([np.mean(colours[c], 0) for c in range(4)])
    spreads = np.stack([np.std(colours[c], 0) for c in range(4)])
    assert np.abs(means - means.mean(0)).max() < 0.06  # same colour distribution for every class
    assert spreads.min() > 0.2  # and a wide one within each class


def test_occlusion_is_bounded(scenes):
    cfg, rendered = scenes
    occluded = 0
    for _, mask, objects in rendered:
        assert 1 <= len(objects) <= cfg.max_objects
        for obj in objects:
            assert obj["visible"] >= (1 - cfg.max_occlusion) * obj["area"]
            occluded += int(obj["visible"] < obj["area"])
        for c in {o["cls"] for o in objects}:  # visible pixels are exactly the mask's pixels
            assert sum(o["visible"] for o in objects if o["cls"] == c) == np.count_nonzero(mask == c + 1)
    assert occluded > 0  # overlaps do happen, within the bound


def test_object_sizes_and_counts(scenes):
    cfg, rendered = scenes
    low, high = (f * cfg.image_size for f in cfg.object_size)
    sides = [max(o["box"][2:]) for _, _, objs in rendered for o in objs]
    assert min(sides) >= low * 0.8 and max(sides) <= high * 1.25  # aspect jitter of +-10%
    assert 10 <= np.median(sides) <= 22
    counts = np.bincount([len(objs) for _, _, objs in rendered], minlength=4)
    assert counts[0] == 0 and (counts[1:] > 60).all()


def test_class_balance(scenes):
    _, rendered = scenes
    labels = np.stack([np.isin(np.arange(1, 5), mask).astype(float) for _, mask, _ in rendered])
    frequency = labels.mean(0)
    assert (frequency > 0.3).all() and (frequency < 0.55).all(), frequency


def test_void_border_surrounds_objects_only():
    plain, _, objects = render_scene(SceneConfig(void_border=0), 0, 1, 7)
    image, mask, _ = render_scene(SceneConfig(void_border=2), 0, 1, 7)
    _, mask0, _ = render_scene(SceneConfig(void_border=0), 0, 1, 7)
    assert np.array_equal(image, plain)  # the border changes the mask only
    assert IGNORE_INDEX not in mask0
    objects_px = (mask0 >= 1) & (mask0 <= 10)
    assert np.array_equal(mask[objects_px], mask0[objects_px])  # object pixels are never voided
    void = mask == IGNORE_INDEX
    assert void.any()
    padded = np.pad(objects_px, 2)
    near = np.zeros_like(objects_px)
    for dy in range(5):
        for dx in range(5):
            near |= padded[dy:dy + 64, dx:dx + 64]
    assert np.array_equal(void, near & ~objects_px)  # exactly a 2-px ring


def test_batch_format_and_normalisation():
    dm = small_dm(num_classes=5, batch_size=6)
    dm.setup()
    assert dm.num_classes == 5 and dm.class_names == SHAPES[:5] and dm.image_size == 64
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert sorted(batch) == ["image", "index", "labels", "mask"]
        assert batch["image"].shape == (6, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert batch["labels"].shape == (6, 5) and batch["labels"].dtype == torch.float32
        assert batch["mask"].shape == (6, 64, 64) and batch["mask"].dtype == torch.int64
        assert batch["index"].dtype == torch.int64
    assert next(iter(dm.val_dataloader()))["index"].tolist() == list(range(6))
    item = dm.val_dataset[2]
    raw = dm.val_dataset.images[2].float() / 255
    assert torch.allclose(dm.denormalize(item["image"]), raw, atol=1e-5)
    # the default statistics are the generator's (measured on 2,000 images; 200 here)
    images = SyntheticDataset("train", 200, SceneConfig()).images.float() / 255
    assert np.allclose(images.mean((0, 2, 3)), SYNTHETIC_MEAN, atol=0.02)
    assert np.allclose(images.std((0, 2, 3)), SYNTHETIC_STD, atol=0.02)


def test_views_and_fingerprint():
    dm = small_dm()
    source = dm.source_dataset()
    box, flip = dm.sample_view(torch.Generator().manual_seed(0), 64, 64)
    assert box[2] * box[3] >= 0.5 * 64 * 64 * 0.99  # the module's scale (0.5, 1) is used
    assert dm.apply_view(source[0]["image"], box, flip).shape == (3, 64, 64)
    assert source.fingerprint() == dm.source_dataset().fingerprint()
    assert source.fingerprint() != small_dm(seed=1).source_dataset().fingerprint()
    assert source.image_size_of(3) == (64, 64)


def test_hparams_recorded():
    dm = small_dm(num_classes=3, void_border=1)
    assert dm.hparams.num_classes == 3 and dm.hparams.void_border == 1 and dm.hparams.num_train == 24
    assert dm.num_workers == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 11}, "num_classes"),
        ({"image_size": 16}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_train": 0}, "num_train"),
        ({"seed": -1}, "seed"),
        ({"object_size": (0.3, 0.1)}, "object_size"),
        ({"max_occlusion": 1.0}, "max_occlusion"),
        ({"void_border": -1}, "void_border"),
        ({"min_visible": 1.5}, "min_visible"),
        ({"scale": (0.0, 1.0)}, "scale"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        SyntheticDataModule(**kwargs)


def test_source_dataset_shares_the_rendered_split():
    dm = small_dm()
    dm.setup("fit")
    source = dm.source_dataset("train")
    assert source.images is dm.train_dataset.images and not source.augment and dm.train_dataset.augment
    assert torch.equal(source[4]["image"], source[4]["image"])  # deterministic, un-augmented
    assert source.fingerprint() != dm.train_dataset.fingerprint()
    with pytest.raises(ValueError, match="`split`"):
        dm.source_dataset("holdout")


def test_view_labels_against_counted_pixels():
    ds = SyntheticDataset("val", 30, SceneConfig(), min_visible=0.5)
    box = (0, 0, 32, 64)  # the top half
    for i in range(len(ds)):
        top = ds.masks[i, :32]
        for c in range(4):
            total, kept = int((ds.masks[i] == c + 1).sum()), int((top == c + 1).sum())
            assert ds.view_labels(i, box)[c] == float(total > 0 and kept >= 0.5 * total)
