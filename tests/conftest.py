"""Shared fixtures: a tiny PASCAL VOC 2012 folder written on the fly (no download, deterministic).

``write_voc_folder(root, ...)`` is a plain function so tests can build variants (corrupt JPEG,
missing XML, unknown class, masks of another size...); ``voc_objects(index)`` is the ground
truth it draws, for tests to compute expected labels and masks independently of the reader.

Threads: every test runs with one torch thread (intra- and, where torch still allows it,
inter-op), and subprocesses the tests start inherit ``OMP_NUM_THREADS=1``/``MKL_NUM_THREADS=1``.
The models and tensors here are tiny and ``make test`` runs two xdist workers on small
machines: more threads per worker only oversubscribe the cores (a 40x slowdown on a busy
2-core box), and a thread count that differs between runs would change float reductions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve.data.voc import voc_palette

VOC_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
HEIGHT, WIDTH = 40, 48
NUM_IMAGES = 6
VOID = 255
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def pytest_configure(config: pytest.Config) -> None:
    """Pin this process (controller and each xdist worker) to one torch thread before any test,
    doctests under ``attrpreserve/`` included; children (xdist workers, the subprocesses that
    tests start) inherit the environment."""
    for name in THREAD_ENV:
        os.environ[name] = "1"
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed once, before any inter-op work; then it keeps its pool
        pass


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Re-pin before and after every test: code under test may set its own thread count
    (``quickstart --threads``, the lottery example) and must not leak it into the next test."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def voc_id(index: int) -> str:
    return f"2012_{index:06d}"


def voc_objects(index: int) -> list[dict]:
    """Objects of image ``index``: class, box (top, left, height, width), difficult flag.

    Two bright boxes of classes ``2i % 20`` and ``(2i + 5) % 20``; even images add a small
    ``difficult`` object of class ``(i + 11) % 20`` whose mask region is all void, as in VOC.
    """
    objects = [
        {"cls": (2 * index) % 20, "box": (4, 4 + index % 3, 12, 14), "difficult": False},
        {"cls": (2 * index + 5) % 20, "box": (20, 26, 14, 16), "difficult": False},
    ]
    if index % 2 == 0:
        objects.append({"cls": (index + 11) % 20, "box": (27, 4, 8, 8), "difficult": True})
    return objects


def voc_mask(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Expected class-id mask: c+1 inside box of class c, a 1-px void ring around it, void on difficult."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for obj in voc_objects(index):
        top, left, h, w = obj["box"]
        mask[max(top - 1, 0):top + h + 1, max(left - 1, 0):left + w + 1] = VOID
    for obj in voc_objects(index):
        if not obj["difficult"]:
            top, left, h, w = obj["box"]
            mask[top:top + h, left:left + w] = obj["cls"] + 1
    return mask


def voc_image(index: int) -> np.ndarray:
    """Dark gradient background, near-white boxes on the objects."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([20 + xx, 30 + yy, np.full_like(xx, 40 + 5 * index)], axis=-1).astype(np.uint8)
    for obj in voc_objects(index):
        top, left, h, w = obj["box"]
        image[top:top + h, left:left + w] = (235, 240, 245)
    return image


def _xml(image_id: str, objects: Sequence[dict], names: Mapping[int, str] | None = None) -> str:
    parts = [f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>",
             f"<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"]
    for k, obj in enumerate(objects):
        top, left, h, w = obj["box"]
        name = (names or {}).get(k, VOC_NAMES[obj["cls"]])
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{int(obj['difficult'])}</difficult><bndbox><xmin>{left + 1}</xmin><ymin>{top + 1}</ymin>"
            f"<xmax>{left + w}</xmax><ymax>{top + h}</ymax></bndbox></object>"
        )
    return "\n".join(parts) + "</annotation>\n"


TRAIN_IDS = [voc_id(i) for i in range(4)]
VAL_IDS = [voc_id(i) for i in (4, 5)]
SEG_IDS = [voc_id(i) for i in (5, 1, 4, 2)]  # deliberately not sorted: items follow the file


def write_voc_folder(
    root: str | Path,
    layout: str = "devkit",
    corrupt_image: int | None = None,
    corrupt_mask: int | None = None,
    missing_xml: int | None = None,
    missing_mask: int | None = None,
    unknown_class: int | None = None,
    mask_scale: Mapping[int, int] | None = None,
    empty_split: str | None = None,
) -> Path:
    """Write a 6-image VOC2012 folder under ``root`` and return the VOC2012 path.

    Args:
        root: parent folder (created).
        layout: ``"devkit"`` (root/VOCdevkit/VOC2012), ``"voc2012"`` (root/VOC2012) or
            ``"flat"`` (root is the VOC2012 folder).
        corrupt_image, corrupt_mask: index whose JPEG / PNG is replaced by garbage bytes.
        missing_xml, missing_mask: index whose annotation XML / segmentation PNG is not written.
        unknown_class: index whose first object is named ``"unicorn"``.
        mask_scale: index -> integer factor; that mask is written that many times larger
            (nearest), so its size differs from the image's.
        empty_split: ``"Main/train"`` style name of a split file written empty.
    """
    root = Path(root)
    voc = {"devkit": root / "VOCdevkit" / "VOC2012", "voc2012": root / "VOC2012", "flat": root}[layout]
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for i in range(NUM_IMAGES):
        image_id = voc_id(i)
        if i == corrupt_image:
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        else:
            Image.fromarray(voc_image(i)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        if i != missing_xml:
            names = {0: "unicorn"} if i == unknown_class else None
            (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, voc_objects(i), names))
        if i == missing_mask:
            continue
        if i == corrupt_mask:
            (voc / "SegmentationClass" / f"{image_id}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
            continue
        mask = voc_mask(i)
        factor = (mask_scale or {}).get(i, 1)
        mask = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
    splits = {"Main/train": TRAIN_IDS, "Main/val": VAL_IDS, "Segmentation/val": SEG_IDS}
    for name, ids in splits.items():
        text = "" if name == empty_split else "\n".join(ids) + "\n"
        (voc / "ImageSets" / f"{name}.txt").write_text(text)
    return voc


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean 6-image VOC2012 folder (``VOCdevkit/VOC2012`` layout); returns the VOC2012 path."""
    return write_voc_folder(tmp_path_factory.mktemp("voc"))


@pytest.fixture(autouse=True)
def _restore_torch_determinism():
    """``Trainer(deterministic=True)`` switches torch's deterministic algorithms on globally and
    leaves them on; restore the flag so one test's trainer does not change the next test's ops."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
