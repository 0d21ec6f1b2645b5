"""VOC reader, joint transforms and view replay, on tiny VOC folders written by conftest."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from attrpreserve.data import (
    IGNORE_INDEX, VOC_CLASSES, VOC_MEAN, VOC_STD, VOCDataModule, VOCDataset, apply_view, apply_view_to_mask,
    denormalize, eval_transform, find_voc_root, normalize, sample_view, train_transform,
)
from attrpreserve.data.common import default_workers
from attrpreserve.data.voc import read_image
from tests.conftest import (
    HEIGHT, NUM_IMAGES, SEG_IDS, TRAIN_IDS, VAL_IDS, VOC_NAMES, WIDTH, voc_id, voc_mask, voc_objects,
    write_voc_folder,
)


def expected_labels(index: int, include_difficult: bool = True) -> torch.Tensor:
    labels = torch.zeros(20)
    for obj in voc_objects(index):
        if include_difficult or not obj["difficult"]:
            labels[obj["cls"]] = 1.0
    return labels


def test_constants():
    assert VOC_CLASSES == VOC_NAMES and len(VOC_CLASSES) == 20 and IGNORE_INDEX == 255
    assert VOC_MEAN == (0.4589, 0.4355, 0.4032) and VOC_STD == (0.2239, 0.2186, 0.2206)


@pytest.mark.parametrize("include_difficult", [True, False])
def test_labels_match_xml(voc_root, include_difficult):
    ds = VOCDataset(voc_root, "train", include_difficult=include_difficult)
    assert ds.ids == TRAIN_IDS
    for row, image_id in enumerate(ds.ids):
        index = int(image_id.split("_")[1])
        item = ds[row]
        assert item["labels"].dtype == torch.float32 and item["index"] == row
        assert torch.equal(item["labels"], expected_labels(index, include_difficult)), image_id
        assert "mask" not in item
    # image 0 has a difficult object of class 11 that no other object of it shares
    assert ds.labels[0, 11] == float(include_difficult)


def test_masks_decode_class_ids_and_keep_void(voc_root):
    ds = VOCDataset(voc_root, "val", segmentation=True)  # no transform: source resolution
    assert ds.ids == SEG_IDS  # split-file order, not sorted
    for row, image_id in enumerate(ds.ids):
        index = int(image_id.split("_")[1])
        item = ds[row]
        expected = torch.from_numpy(voc_mask(index)).long()
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (HEIGHT, WIDTH)
        assert torch.equal(item["mask"], expected), image_id
        assert (item["mask"] == IGNORE_INDEX).any()  # the void ring is there, not folded into 0
        present = set(item["mask"].unique().tolist()) - {0, IGNORE_INDEX}
        assert present == {obj["cls"] + 1 for obj in voc_objects(index) if not obj["difficult"]}


def test_image_normalised_and_denormalize_inverts(voc_root):
    ds = VOCDataset(voc_root, "train")
    raw = read_image(ds.image_path(1)).float() / 255
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, HEIGHT, WIDTH)
    expected = (raw - torch.tensor(VOC_MEAN).view(3, 1, 1)) / torch.tensor(VOC_STD).view(3, 1, 1)
    assert torch.allclose(item["image"], expected, atol=1e-5)
    assert torch.allclose(denormalize(item["image"], VOC_MEAN, VOC_STD), raw, atol=1e-5)


def test_mask_of_other_size_is_an_error_not_resized(tmp_path):
    voc = write_voc_folder(tmp_path, mask_scale={1: 2, 4: 3})
    ds = VOCDataset(voc, "val", segmentation=True)
    for row, image_id in enumerate(ds.ids):
        index = int(image_id.split("_")[1])
        if index in (1, 4):
            with pytest.raises(ValueError, match=rf"SegmentationClass/{image_id}\.png.*JPEGImages/{image_id}\.jpg"):
                ds[row]
        else:
            assert torch.equal(ds[row]["mask"], torch.from_numpy(voc_mask(index)).long()), image_id


@pytest.mark.parametrize("layout", ["devkit", "voc2012", "flat"])
def test_root_may_be_parent_or_folder(tmp_path, layout):
    voc = write_voc_folder(tmp_path, layout=layout)
    assert find_voc_root(tmp_path) == voc
    assert find_voc_root(voc) == voc


def test_data_module_batches(voc_root):
    dm = VOCDataModule(voc_root.parent.parent, image_size=32, batch_size=2, num_workers=0)
    dm.setup()
    assert (dm.num_classes, dm.class_names, dm.image_size) == (20, VOC_CLASSES, 32)
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 2 and len(dm.localization_dataset) == 4
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["image", "index", "labels"]
    assert batch["image"].shape == (2, 3, 32, 32) and batch["labels"].shape == (2, 20)
    val = next(iter(dm.val_dataloader()))
    assert val["index"].tolist() == [0, 1]
    assert torch.equal(val["labels"], torch.stack([expected_labels(4), expected_labels(5)]))
    test = [b for b in dm.test_dataloader()]
    assert sorted(test[0]) == ["image", "index", "labels", "mask"]
    assert test[0]["mask"].shape == (2, 32, 32) and test[0]["mask"].dtype == torch.int64
    assert torch.cat([b["index"] for b in test]).tolist() == [0, 1, 2, 3]
    # the eval resize keeps class ids and void, nothing else appears
    for b, start in zip(test, (0, 2)):
        for k in range(2):
            index = int(SEG_IDS[start + k].split("_")[1])
            allowed = set(np.unique(voc_mask(index)).tolist())
            assert set(b["mask"][k].unique().tolist()) <= allowed
            assert (b["mask"][k] == IGNORE_INDEX).any()


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (3, 3), (4, 4), (16, 4)])
def test_default_workers_leave_small_machines_to_the_step(monkeypatch, cores, workers):
    # What the process may run on counts, not the machine's cores (containers, taskset).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_workers() == workers
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers() == workers


def test_data_module_hparams_and_defaults(voc_root):
    dm = VOCDataModule(voc_root, image_size=64)
    assert dm.hparams.root == voc_root and dm.hparams.image_size == 64 and dm.hparams.batch_size == 64
    assert dm.num_workers == default_workers()
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_data_module_view_helpers_match_functions(voc_root):
    dm = VOCDataModule(voc_root, image_size=32, scale=(0.3, 0.9), num_workers=0)
    box, flip = dm.sample_view(torch.Generator().manual_seed(3), HEIGHT, WIDTH)
    assert (box, flip) == sample_view(torch.Generator().manual_seed(3), HEIGHT, WIDTH, scale=(0.3, 0.9))
    source = dm.source_dataset()
    assert source[0]["image"].shape == (3, HEIGHT, WIDTH)  # un-augmented, source size
    assert dm.apply_view(source[0]["image"], box, flip).shape == (3, 32, 32)
    assert source.fingerprint() == VOCDataset(voc_root, "train", normalize=False).fingerprint()
    assert source.fingerprint() != VOCDataset(voc_root, "val").fingerprint()
    assert source.image_size_of(0) == (HEIGHT, WIDTH)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"image_size": 8}, "image_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"train_split": "Main/train"}, "train_split"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_bad_arguments_raise_in_init(voc_root, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`") as err:
        VOCDataModule(voc_root, **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_missing_root_lists_expected_layout(tmp_path):
    dm = VOCDataModule(tmp_path / "nowhere", num_workers=0)
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        dm.setup()
    for sub in ("JPEGImages/", "Annotations/", "ImageSets/Main/", "SegmentationClass/"):
        assert sub in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        find_voc_root(tmp_path / "empty")


def test_missing_split_file_named(voc_root):
    dm = VOCDataModule(voc_root, seg_split="trainaug", num_workers=0)
    dm.setup("fit")  # the other splits are fine
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/trainaug\.txt"):
        dm.setup("test")


def test_empty_split_file_named(tmp_path):
    voc = write_voc_folder(tmp_path, empty_split="Main/train")
    with pytest.raises(ValueError, match=r"ImageSets/Main/train\.txt.*empty"):
        VOCDataModule(voc, num_workers=0).setup("fit")


def test_unknown_class_names_xml_and_allowed(tmp_path):
    voc = write_voc_folder(tmp_path, unknown_class=2)
    with pytest.raises(ValueError, match=rf"'unicorn'.*{voc_id(2)}\.xml") as err:
        VOCDataset(voc, "train")
    assert "aeroplane" in str(err.value) and "tvmonitor" in str(err.value)
    VOCDataset(voc, "val")  # image 2 is not in Main/val: that split still loads


def test_missing_xml_named(tmp_path):
    voc = write_voc_folder(tmp_path, missing_xml=3)
    with pytest.raises(FileNotFoundError, match=rf"Annotations/{voc_id(3)}\.xml"):
        VOCDataModule(voc, num_workers=0).setup("fit")


def test_missing_mask_named(tmp_path):
    voc = write_voc_folder(tmp_path, missing_mask=5)
    with pytest.raises(FileNotFoundError, match=rf"SegmentationClass/{voc_id(5)}\.png"):
        VOCDataset(voc, "val", segmentation=True)


def test_corrupt_image_named_when_read(tmp_path):
    voc = write_voc_folder(tmp_path, corrupt_image=1)
    ds = VOCDataset(voc, "train")  # existence checks pass
    ds[0]
    with pytest.raises(ValueError, match=rf"JPEGImages/{voc_id(1)}\.jpg"):
        ds[1]


def test_corrupt_mask_named_when_read(tmp_path):
    voc = write_voc_folder(tmp_path, corrupt_mask=4)
    ds = VOCDataset(voc, "val", segmentation=True)
    with pytest.raises(ValueError, match=rf"SegmentationClass/{voc_id(4)}\.png"):
        ds[SEG_IDS.index(voc_id(4))]


# -- transforms ---------------------------------------------------------------------------------
def test_apply_view_hand_made():
    x = torch.arange(24.0).view(1, 4, 6)
    assert torch.equal(apply_view(x, (0, 0, 4, 6), True, (4, 6)), x.flip(-1))  # flip only
    assert torch.equal(apply_view(x, (1, 2, 2, 3), False, (2, 3)), x[:, 1:3, 2:5])  # crop only
    assert torch.equal(apply_view(x, (1, 2, 2, 3), True, (2, 3)), x[:, 1:3, 2:5].flip(-1))  # crop, then flip
    mask = torch.tensor([[0, 1, 1, 255], [0, 2, 2, 255]], dtype=torch.uint8)
    out = apply_view_to_mask(mask, (0, 1, 2, 3), True, (4, 6))  # 2x nearest upscale of the flipped crop
    expected = mask[:, 1:4].flip(-1).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out, expected) and out.dtype == torch.uint8


def test_sample_view_hand_made():
    gen = torch.Generator().manual_seed(0)
    views = [sample_view(gen, 40, 48, scale=(1.0, 1.0), ratio=(1.2, 1.2)) for _ in range(20)]
    # area 1920 at ratio w/h = 1.2 -> w = 48, h = 40: the whole image; the flips vary
    assert {box for box, _ in views} == {(0, 0, 40, 48)}
    assert {flip for _, flip in views} == {True, False}
    # impossible crops (10 tries fail) fall back to the central crop of the largest allowed ratio
    assert sample_view(gen, 10, 100, scale=(1.0, 1.0), ratio=(1.0, 2.0))[0] == (0, 40, 10, 20)


@pytest.mark.parametrize("size", [(40, 48), (48, 40), (30, 120)])
def test_sample_view_replays_torchvision(size):
    """One seed gives the same view from sample_view + apply_view as from v2's RandomResizedCrop + flip."""
    h, w = size
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 21, (h, w), dtype=torch.uint8))
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    reference = v2.Compose([v2.RandomResizedCrop(24, scale=scale, ratio=ratio, antialias=True),
                            v2.RandomHorizontalFlip()])
    boxes, flips = set(), set()
    for seed in range(12):
        torch.manual_seed(seed)
        ref_image, ref_mask = reference(image, mask)
        box, flip = sample_view(torch.Generator().manual_seed(seed), h, w, scale, ratio)
        plain_image, plain_mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        assert torch.equal(apply_view(plain_image, box, flip, 24), ref_image.as_subclass(torch.Tensor))
        assert torch.equal(apply_view_to_mask(plain_mask, box, flip, 24), ref_mask.as_subclass(torch.Tensor))
        boxes.add(box)
        flips.add(flip)
    assert len(boxes) >= 6 and flips == {True, False}  # (30, 120) also hits the central fallback


def test_train_transform_keeps_image_and_mask_aligned(voc_root):
    """Bright boxes and their mask classes coincide after random crops and flips."""
    ds = VOCDataset(voc_root, "val", segmentation=True, transform=train_transform(32, scale=(0.3, 1.0)))
    torch.manual_seed(0)
    flipped = 0
    for _ in range(10):
        for row in range(len(ds)):
            item = ds[row]
            brightness = denormalize(item["image"], VOC_MEAN, VOC_STD).mean(0)
            objects, background = item["mask"].ge(1) & item["mask"].le(20), item["mask"] == 0
            if objects.any():
                assert brightness[objects].mean() > 0.8
            if background.any():
                assert brightness[background].mean() < 0.35
            # the left box of image 5 lies in the left half: a flip moves its class to the right half
            if ds.ids[row] == voc_id(5):
                cols = torch.nonzero(item["mask"] == voc_objects(5)[0]["cls"] + 1)[:, 1]
                flipped += int(len(cols) > 0 and cols.float().mean() > 16)
    assert flipped > 0


def test_eval_transform_nearest_mask(voc_root):
    ds = VOCDataset(voc_root, "val", segmentation=True, transform=eval_transform(96))
    item = ds[0]
    index = int(ds.ids[0].split("_")[1])
    expected = torch.nn.functional.interpolate(torch.from_numpy(voc_mask(index))[None, None].float(),
                                               size=(96, 96), mode="nearest")[0, 0].long()
    assert torch.equal(item["mask"], expected)


def test_normalize_roundtrip():
    x = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    y = normalize(x, VOC_MEAN, VOC_STD)
    assert torch.allclose(denormalize(y, VOC_MEAN, VOC_STD), x.float() / 255, atol=1e-6)


def test_num_images_sanity():
    assert NUM_IMAGES == len(set(TRAIN_IDS) | set(VAL_IDS) | set(SEG_IDS))
