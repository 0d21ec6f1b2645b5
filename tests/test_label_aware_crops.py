"""Label-aware crops (issue 14): a crop keeps a class only while enough of its object stays inside.

Oracles are independent of the reader: the VOC boxes come from ``conftest.voc_objects`` (the
ground truth the fixture writes into the XMLs), the synthetic ones from the rendered masks, and
visibility is counted on pixel grids (or, for a store, on the scaled rectangles).
"""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from attrpreserve.data import SyntheticDataModule
from attrpreserve.data.transforms import sample_view, train_transform
from attrpreserve.data.voc import VOCDataModule, VOCDataset
from attrpreserve.models import vgg_small
from attrpreserve.teacher_cache import TeacherCache
from tests.conftest import HEIGHT, TRAIN_IDS, VOC_NAMES, WIDTH, voc_objects, write_voc_folder

SCALE = (0.08, 1.0)  # the paper's: small crops, many objects cut out


def _train_index(i):
    return int(TRAIN_IDS[i].split("_")[1])


def _expected_labels(image_index, box, min_visible, include_difficult=True, frame=(HEIGHT, WIDTH)):
    """Multi-hot of the ground-truth objects keeping >= min_visible of their area in ``box``.

    ``frame`` is the (h, w) the crop was drawn in: the source size counts whole pixels on a
    grid, another size (a store) scales each object's rectangle and intersects areas.
    """
    top, left, h, w = box
    labels = torch.zeros(20)
    for obj in voc_objects(image_index):
        if obj["difficult"] and not include_difficult:
            continue
        o_top, o_left, o_h, o_w = obj["box"]
        if frame == (HEIGHT, WIDTH):
            grid = np.zeros((HEIGHT, WIDTH), dtype=bool)
            grid[o_top:o_top + o_h, o_left:o_left + o_w] = True
            kept, total = grid[top:top + h, left:left + w].sum(), grid.sum()
        else:
            sy, sx = frame[0] / HEIGHT, frame[1] / WIDTH
            y0, y1, x0, x1 = o_top * sy, (o_top + o_h) * sy, o_left * sx, (o_left + o_w) * sx
            kept = max(0.0, min(y1, top + h) - max(y0, top)) * max(0.0, min(x1, left + w) - max(x0, left))
            total = (y1 - y0) * (x1 - x0)
        if kept >= min_visible * total:
            labels[obj["cls"]] = 1.0
    return labels


def _full_labels(image_index, include_difficult=True):
    labels = torch.zeros(20)
    for obj in voc_objects(image_index):
        if include_difficult or not obj["difficult"]:
            labels[obj["cls"]] = 1.0
    return labels


def _one_box_folder(tmp_path):
    """The fixture folder with image 0's XML replaced by one dog box: 0-based pixels 10..19 x 10..19."""
    voc = write_voc_folder(tmp_path)
    (voc / "Annotations" / f"{TRAIN_IDS[0]}.xml").write_text(
        f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>11</ymin>"
        "<xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>\n")
    return voc


def test_hand_worked_crop_keeping_30_percent(tmp_path):
    """Columns 0..12 hold 3 of the box's 10 columns (all its rows): 30 % of it stays."""
    voc = _one_box_folder(tmp_path)
    dog = VOC_NAMES.index("dog")
    crop = (0, 0, HEIGHT, 13)
    for min_visible, kept in ((0.5, False), (0.31, False), (0.3, True), (0.25, True), (0.0, True)):
        labels = VOCDataset(voc, "train", min_visible=min_visible).view_labels(0, crop)
        assert labels.sum() == int(kept) and labels[dog] == int(kept), min_visible
    # 1-based inclusive coordinates: columns 0..10 hold only xmin's pixel (index 10), i.e. 10 %;
    # reading the box as 0-based would see 0 % there and 40 % at (0, 0, H, 13).
    assert VOCDataset(voc, "train", min_visible=0.1).view_labels(0, (0, 0, HEIGHT, 11))[dog] == 1
    assert VOCDataset(voc, "train", min_visible=0.11).view_labels(0, (0, 0, HEIGHT, 11))[dog] == 0
    assert VOCDataset(voc, "train", min_visible=0.35).view_labels(0, crop)[dog] == 0


@pytest.mark.parametrize("include_difficult", [True, False])
def test_random_crops_match_the_boxes(voc_root, include_difficult):
    """Augmented items: labels from the crop the item drew (replayed from its seed), and images
    exactly those of the paper's transform."""
    ds = VOCDataset(voc_root, "train", augment=True, image_size=32, scale=SCALE, min_visible=0.5,
                    include_difficult=include_difficult)
    reference = VOCDataset(voc_root, "train", transform=train_transform(32, SCALE))
    dropped = 0
    for seed in range(40):
        i = seed % len(ds)
        torch.manual_seed(seed)
        item = ds[i]
        box, _ = sample_view(torch.Generator().manual_seed(seed), HEIGHT, WIDTH, SCALE)
        expected = _expected_labels(_train_index(i), box, 0.5, include_difficult)
        assert torch.equal(item["labels"], expected), (seed, box)
        dropped += int(not torch.equal(expected, _full_labels(_train_index(i), include_difficult)))
        torch.manual_seed(seed)
        assert torch.equal(item["image"], reference[i]["image"])
    assert dropped >= 5  # the crops did cut objects out, so the comparison above had teeth


def test_random_crops_from_a_store_use_stored_coordinates(voc_root, tmp_path):
    """Stored at short side 30 (30 x 36 from 40 x 48): boxes are scaled into the stored frame."""
    ds = VOCDataset(voc_root, "train", augment=True, image_size=32, scale=SCALE, min_visible=0.5,
                    store_dir=tmp_path, store_size=30)
    ds.build_store(progress=False)
    frame = (30, 36)
    assert ds.image_size_of(0) == frame
    dropped = 0
    for seed in range(40):
        i = seed % len(ds)
        torch.manual_seed(seed)
        item = ds[i]
        box, _ = sample_view(torch.Generator().manual_seed(seed), *frame, SCALE)
        expected = _expected_labels(_train_index(i), box, 0.5, frame=frame)
        assert torch.equal(item["labels"], expected), (seed, box)
        assert torch.equal(ds.view_labels(i, box), expected)
        dropped += int(not torch.equal(expected, _full_labels(_train_index(i))))
    assert dropped >= 5


def test_min_visible_zero_is_the_papers_crop(voc_root, tmp_path):
    """Labels never change, and the training batches equal those of the v2 transform."""
    for store in (False, True):
        dm = VOCDataModule(voc_root, image_size=32, batch_size=2, num_workers=0, scale=SCALE, min_visible=0.0,
                           store=store, store_dir=tmp_path)
        dm.setup("fit")
        reference = VOCDataset(voc_root, "train", transform=train_transform(32, SCALE),
                               **({"store_dir": tmp_path, "store_size": dm.store_size} if store else {}))
        for seed in range(24):
            i = seed % 4
            torch.manual_seed(seed)
            item = dm.train_dataset[i]
            torch.manual_seed(seed)
            expected = reference[i]
            assert torch.equal(item["labels"], _full_labels(_train_index(i)))
            assert torch.equal(item["image"], expected["image"]) and torch.equal(item["labels"], expected["labels"])
        assert torch.equal(dm.source_dataset().view_labels(0, (0, 0, 2, 2)), _full_labels(_train_index(0)))


def test_data_module_passes_min_visible_to_training_only(voc_root):
    dm = VOCDataModule(voc_root, image_size=32, batch_size=4, num_workers=0, scale=SCALE)
    assert dm.min_visible == 0.5 and dm.hparams.min_visible == 0.5
    dm.setup()
    assert dm.train_dataset.augment and dm.train_dataset.min_visible == 0.5
    assert not dm.val_dataset.augment and not dm.localization_dataset.augment
    torch.manual_seed(0)
    batches = [b for _ in range(6) for b in dm.train_dataloader()]
    labels = torch.cat([b["labels"] for b in batches])
    full = torch.stack([_full_labels(_train_index(int(i))) for b in batches for i in b["index"]])
    assert (labels <= full).all() and (labels < full).any()
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["labels"], torch.stack([_full_labels(4), _full_labels(5)]))


def test_augmented_masks_void_the_dropped_classes(voc_root):
    ds = VOCDataset(voc_root, "val", segmentation=True, augment=True, image_size=32, scale=SCALE)
    voided = 0
    for seed in range(24):
        torch.manual_seed(seed)
        item = ds[seed % len(ds)]
        present = set(item["mask"].unique().tolist()) - {0, 255}
        assert all(item["labels"][v - 1] == 1 for v in present), seed
        voided += int((item["labels"] < ds.labels[seed % len(ds)]).any())
    assert voided >= 3


def _teacher(num_classes):
    torch.manual_seed(0)
    return vgg_small(num_classes=num_classes, width_divisor=8).eval()


def _cached(dm, tmp_path, num_classes):
    cache = TeacherCache(_teacher(num_classes), dm.source_dataset("train"), dm.sample_view, dm.apply_view,
                         layers=("pool5",), views=6, seed=0, cache_dir=tmp_path / "teacher",
                         image_size=dm.image_size, batch_size=12)
    return cache.build(progress=False).dataset_for_training()


def test_cached_voc_views_carry_the_views_labels(voc_root, tmp_path):
    """With a store the cache's boxes are in stored pixels, and so are the labels' boxes."""
    dm = VOCDataModule(voc_root, image_size=32, batch_size=2, num_workers=0, scale=SCALE, store=True,
                       store_dir=tmp_path / "images", store_size=36)
    dm.setup("fit")
    data = _cached(dm, tmp_path, 20)
    source = dm.source_dataset("train")
    dropped = 0
    for i in range(len(data)):
        frame = source.image_size_of(i)
        assert frame == (36, round(36 * WIDTH / HEIGHT))
        for view in range(data.views):
            box = tuple(int(v) for v in data.boxes[i, view])
            item = data.item(i, view)
            expected = _expected_labels(_train_index(i), box, 0.5, frame=frame)
            assert torch.equal(item["labels"], expected), (i, view, box)
            assert torch.equal(item["labels"], source.view_labels(i, box))
            dropped += int(not torch.equal(expected, _full_labels(_train_index(i))))
    assert dropped >= 3
    assert default_collate([data.item(0, 0), data.item(1, 1)])["labels"].shape == (2, 20)


def test_cached_synthetic_views_carry_the_views_labels(tmp_path):
    dm = SyntheticDataModule(num_classes=3, num_train=8, num_val=2, num_test=2, batch_size=4, scale=SCALE)
    dm.setup("fit")
    data = _cached(dm, tmp_path, 3)
    source = dm.source_dataset("train")
    dropped = 0
    for i in range(len(data)):
        mask = source.masks[i].numpy()
        for view in range(data.views):
            top, left, h, w = (int(v) for v in data.boxes[i, view])
            item = data.item(i, view)
            crop = mask[top:top + h, left:left + w]
            total = [(mask == c + 1).sum() for c in range(3)]
            expected = torch.tensor([float(total[c] > 0 and (crop == c + 1).sum() >= 0.5 * total[c]) for c in range(3)])
            assert torch.equal(item["labels"], expected), (i, view)
            assert torch.equal(item["labels"], source.view_labels(i, (top, left, h, w)))
            dropped += int(not torch.equal(expected, source.labels[i]))
    assert dropped >= 3


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "0.5", True, None])
def test_bad_min_visible_raises(voc_root, bad):
    with pytest.raises(ValueError, match=r"`min_visible`.*\[0, 1\].*paper"):
        VOCDataModule(voc_root, min_visible=bad)
    with pytest.raises(ValueError, match=r"`min_visible`"):
        VOCDataset(voc_root, "train", min_visible=bad)


def test_a_missing_box_raises_only_when_needed(tmp_path):
    voc = write_voc_folder(tmp_path)
    xml = voc / "Annotations" / f"{TRAIN_IDS[1]}.xml"
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>x", 1))
    assert VOCDataset(voc, "train", min_visible=0.0).view_labels(1, (0, 0, 5, 5)).sum() == 2
    with pytest.raises(ValueError, match=rf"{TRAIN_IDS[1]}\.xml.*<bndbox>"):
        VOCDataset(voc, "train", min_visible=0.5).view_labels(1, (0, 0, 5, 5))
