"""PASCAL VOC 2012 from a local folder: multi-label classification and the localisation split.

Layout (the VOC tarball's)::

    VOC2012/
        JPEGImages/<id>.jpg
        Annotations/<id>.xml            every <object><name> gives a positive class
        ImageSets/Main/{train,val}.txt  classification splits
        ImageSets/Segmentation/val.txt  localisation split (1,449 images)
        SegmentationClass/<id>.png      palette PNG: index 0 background, c+1 class c, 255 void

Labels: the 20-class multi-hot vector of the names in the XML. ``difficult`` objects count as
positives by default (as the authors' code does); ``include_difficult=False`` drops them (a class
seen only as difficult is then negative). The localisation split takes its labels from the XML
too, so a model is judged on one label definition; its masks are the palette indices unchanged
(class c is c+1, void stays 255 and is never folded into background).

Label-aware crops (``min_visible``, default 0.5): a training crop keeps a class in ``labels`` only
while at least one of its objects (difficult ones as ``include_difficult`` says) keeps at least
``min_visible`` of its XML box's area inside the crop; the boxes are scaled to the stored image
when a store is used. VOC's objects are often small, and the paper's crop (scale 0.08-1) cuts many
out while their labels stay; ``min_visible=0.0`` reproduces that crop exactly (same images, labels
never change). The teacher cache's views take their labels the same way
(:meth:`VOCDataset.view_labels`). Evaluation splits are not cropped and keep the XML's labels.

Nothing is downloaded. File existence is checked in ``setup()`` (a missing folder, split file,
image, XML or mask raises FileNotFoundError naming it). Broken data never passes silently: a split
file listing an id twice, an unparsable XML, an unknown class name, or (classification splits) an
XML naming no object raises when the dataset is built; a corrupt image or mask, a mask whose size
differs from its image's, or an image whose size differs from its XML's ``<size>`` raises when the
item is read. Each raises a :class:`DataError` (a ValueError) naming the file(s), what is wrong and
what was expected; :func:`attrpreserve.data.check.validate_data` runs the same checks over a whole
folder and lists every problem.

Decoded-image store (``VOCDataModule(store=True)``, off by default): every image (and mask) of a
split is decoded once, resized to a short side of ``store_size`` (default ``1.15 * image_size``)
and memory-mapped as uint8 (:mod:`attrpreserve.data.store`); items are cropped, flipped and
resized from it in uint8 and normalised at the small size. The size checks above then run on every
file while the store is built (in ``setup()``), not when an item is read. Items differ from the
JPEG path's by the store's resize (crops of the stored image, not of the source); ``store_size=0``
keeps the source size and gives the JPEG path's items exactly. The training loader builds each
batch of store items at once (:meth:`VOCDataset.batch`: no per-item dicts, ``tv_tensors`` or
collation, one normalisation), the per-item path's batches bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors

from attrpreserve.data import transforms as T
from attrpreserve.data.common import (
    IGNORE_INDEX, MIN_IMAGE_SIZE, PendingViews, ViewMixin, check_fraction, check_int, check_stats, default_workers,
    plain, void_dropped_classes,
)
from attrpreserve.data.resumable import Key, SeededItems
from attrpreserve.data.store import ImageStore, build_on_rank_zero, default_store_size

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The 20 VOC classes in the standard order (class c is mask value c + 1)."""

VOC_MEAN = (0.4589, 0.4355, 0.4032)
VOC_STD = (0.2239, 0.2186, 0.2206)

VOC_LAYOUT = ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass")
"""Sub-folders expected under the VOC2012 folder."""

_LAYOUT_HINT = (
    "Expected a PASCAL VOC 2012 folder (VOCdevkit/VOC2012, as extracted from VOCtrainval_11-May-2012.tar) "
    "holding " + ", ".join(f"{d}/" for d in VOC_LAYOUT) + "; `root` may be that folder or a parent of "
    "VOCdevkit/VOC2012 or VOC2012."
)
_VALID_MASK_VALUES = frozenset(range(len(VOC_CLASSES) + 1)) | {IGNORE_INDEX}

JointTransform = Callable[..., Any]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a data folder: the file, what is wrong, what was expected."""

    file: Path
    what: str
    expected: str

    def __str__(self) -> str:
        return f"{self.what}; expected {self.expected}."


class DataError(ValueError):
    """A data file is not what the reader expects; a ValueError that carries its :class:`Problem`.

    The readers below raise it, so a data set fails on the first broken file it reads and
    :func:`attrpreserve.data.check.validate_data` can collect every one instead.
    """

    def __init__(self, file: str | os.PathLike, what: str, expected: str) -> None:
        self.problem = Problem(Path(file), what, expected)
        super().__init__(str(self.problem))


class VOCObject(NamedTuple):
    """One ``<object>`` of a VOC XML: class index, ``<bndbox>`` as ``(xmin, ymin, xmax, ymax)`` in
    VOC's 1-based inclusive pixel coordinates (None when missing or not four integers with
    ``xmin <= xmax``, ``ymin <= ymax``), and its ``difficult`` flag."""

    cls: int
    box: tuple[int, int, int, int] | None
    difficult: bool


class Annotation(NamedTuple):
    """What a VOC XML says: positive class indices (sorted), ``<size>`` as ``(height, width)`` or
    None, the number of ``<object>``s (difficult ones included), and every object with its box
    (difficult ones included; label-aware crops need the boxes)."""

    classes: list[int]
    size: tuple[int, int] | None
    num_objects: int
    objects: tuple[VOCObject, ...] = ()


def _wxh(size: Sequence[int]) -> str:
    """``(height, width)`` as the ``WxH`` people read."""
    return f"{size[1]}x{size[0]}"


def voc_palette() -> list[int]:
    """The standard VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list (768 values) for
    ``PIL.Image.putpalette``: write class-id masks the way SegmentationClass/ stores them.

    Example:
        >>> voc_palette()[3:6], voc_palette()[255 * 3:]
        ([128, 0, 0], [224, 224, 192])
    """
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def find_voc_root(root: str | os.PathLike) -> Path:
    """The VOC2012 folder: ``root`` itself, ``root/VOCdevkit/VOC2012`` or ``root/VOC2012``.

    A folder counts when it holds ``JPEGImages/`` and ``ImageSets/``.

    Raises:
        FileNotFoundError: ``root`` is missing or none of the candidates looks like VOC2012
            (the message lists the expected sub-folders).

    Example:
        >>> find_voc_root("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: VOC root '/no/such/folder' does not exist. Expected a PASCAL VOC 2012 folder ...
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"VOC root {str(base)!r} does not exist. {_LAYOUT_HINT}")
    candidates = [base, base / "VOCdevkit" / "VOC2012", base / "VOC2012"]
    for folder in candidates:
        if (folder / "JPEGImages").is_dir() and (folder / "ImageSets").is_dir():
            return folder
    tried = ", ".join(repr(str(c)) for c in candidates)
    raise FileNotFoundError(f"No VOC2012 folder found under {str(base)!r} (tried {tried}). {_LAYOUT_HINT}")


def read_split_ids(path: Path) -> list[str]:
    """Image ids of a split file as listed (first token of each non-blank line), unchecked.

    Raises:
        FileNotFoundError: the file is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Split file {str(path)!r} not found. {_LAYOUT_HINT}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def check_split_ids(ids: Sequence[str], path: Path) -> None:
    """A split lists each image once: a repeated id would weigh that image twice in training and
    in every metric, and is a sign of a badly merged split file.

    Raises:
        DataError: the file lists no ids, or some id more than once (all repeated ids named).
    """
    if not ids:
        raise DataError(path, f"Split file {str(path)!r} is empty", "one image id per line")
    repeated = [image_id for image_id, n in Counter(ids).items() if n > 1]
    if repeated:
        shown = ", ".join(repr(i) for i in repeated[:10]) + (f" and {len(repeated) - 10} more" if len(repeated) > 10
                                                              else "")
        raise DataError(path, f"Split file {str(path)!r} lists {len(repeated)} image ids more than once: {shown}",
                        "each image id once")


def read_split(path: Path) -> list[str]:
    """Image ids of a split file (first token of each non-blank line), each once.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: (a ValueError) the file lists no ids or repeats one (see :func:`check_split_ids`).
    """
    ids = read_split_ids(path)
    check_split_ids(ids, path)
    return ids


def _annotation_size(root: ET.Element, path: Path) -> tuple[int, int] | None:
    """``(height, width)`` of the XML's ``<size>``; None without one."""
    size = root.find("size")
    if size is None:
        return None
    try:
        height, width = int((size.findtext("height") or "").strip()), int((size.findtext("width") or "").strip())
    except ValueError:
        height = width = 0
    if height < 1 or width < 1:
        raise DataError(path, f"Annotation {str(path)!r} has a <size> without a positive integer <width> and "
                        "<height>", "positive integers, as in VOC, or no <size> element")
    return height, width


def _bndbox(obj: ET.Element) -> tuple[int, int, int, int] | None:
    """``(xmin, ymin, xmax, ymax)`` of an object's ``<bndbox>``; None when it is not four integers
    (VOC writes some as ``"273.0"``) forming a non-empty box. Only label-aware crops need boxes, so
    a bad one raises there (:meth:`VOCDataset.view_labels`), not for every reader."""
    box = obj.find("bndbox")
    try:
        xmin, ymin, xmax, ymax = (int(float((box.findtext(k) or "").strip()))  # type: ignore[union-attr]
                                  for k in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, ValueError, OverflowError):
        return None
    return (xmin, ymin, xmax, ymax) if xmin <= xmax and ymin <= ymax else None


def read_annotation(path: Path, include_difficult: bool = True) -> Annotation:
    """Positive classes, ``<size>``, object count and objects (with boxes) of one VOC XML.

    ``include_difficult`` decides the positive classes only; ``objects`` lists every object.

    Raises:
        DataError: (a ValueError) the XML does not parse, names a class not in
            :data:`VOC_CLASSES` (the message lists the allowed names), or has a ``<size>`` that is
            not two positive integers.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(path, f"Could not parse annotation {str(path)!r}: {err}", "a VOC annotation XML") from None
    classes = set()
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DataError(path, f"Unknown class {name!r} in annotation {str(path)!r}",
                            f"one of the VOC class names: {', '.join(VOC_CLASSES)}")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(VOCObject(VOC_CLASSES.index(name), _bndbox(obj), difficult))
        if include_difficult or not difficult:
            classes.add(VOC_CLASSES.index(name))
    return Annotation(sorted(classes), _annotation_size(root, path), len(objects), tuple(objects))


def parse_annotation(path: Path, include_difficult: bool = True) -> list[int]:
    """Sorted class indices of the ``<object><name>``s of one VOC XML (see :func:`read_annotation`).

    Raises:
        DataError: (a ValueError) the XML does not parse or names a class not in
            :data:`VOC_CLASSES` (the message names the file and lists the allowed names).
    """
    return read_annotation(path, include_difficult).classes


def check_has_objects(annotation: Annotation, path: Path) -> None:
    """A classification image has at least one object: an XML naming none is an all-negative
    image, which VOC never has, so the XML is empty or belongs to another data set.

    With ``include_difficult=False`` an image whose objects are all difficult has no positive
    label and still passes: that is VOC's own definition, not broken data.

    Raises:
        DataError: the XML has no ``<object>``.
    """
    if annotation.num_objects == 0:
        raise DataError(path, f"Annotation {str(path)!r} names no object, so its image has no positive label",
                        "at least one <object><name> per image of a classification split")


def check_image_size(image_size: Sequence[int], image_path: Path, annotation: Annotation, xml_path: Path) -> None:
    """The decoded image has the size its XML gives, so the XML describes this very image.

    ``image_size`` is ``(height, width)``; an XML without ``<size>`` is accepted.

    Raises:
        DataError: the sizes differ (both files and both sizes named).
    """
    if annotation.size is not None and tuple(annotation.size) != tuple(image_size):
        raise DataError(xml_path, f"Annotation {str(xml_path)!r} gives the size {_wxh(annotation.size)} (width x "
                        f"height) but image {str(image_path)!r} is {_wxh(image_size)}",
                        "the XML's <size> to match its image")


def check_mask_size(mask_size: Sequence[int], mask_path: Path, image_size: Sequence[int], image_path: Path) -> None:
    """A mask has its image's size: VOC's always do, so a mismatch means the wrong mask or image
    (resizing it would silently misplace every object).

    Sizes are ``(height, width)``.

    Raises:
        DataError: the sizes differ (both files and both sizes named).
    """
    if tuple(mask_size) != tuple(image_size):
        raise DataError(mask_path, f"Mask {str(mask_path)!r} is {_wxh(mask_size)} (width x height) but its image "
                        f"{str(image_path)!r} is {_wxh(image_size)}", "a mask of its image's size")


def _missing(folder: Path, ids: Sequence[str], suffix: str, what: str, split_file: Path) -> None:
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [i for i in ids if i + suffix not in present]
    if missing:
        shown = ", ".join(repr(str(folder / (i + suffix))) for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(
            f"{len(missing)} {what} listed in {str(split_file)!r} not found: {shown}{more}. {_LAYOUT_HINT}"
        )


def read_image(path: Path) -> Tensor:
    """RGB uint8 ``[3, H, W]`` image.

    Raises:
        DataError: (a ValueError) the file cannot be decoded (named).
    """
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for corrupt files
        raise DataError(path, f"Could not read image {str(path)!r}: {err}", "a JPEG (or other image) PIL can "
                        "decode") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_mask(path: Path) -> Tensor:
    """Class-id mask ``[H, W]`` (uint8) of a palette (or grayscale) PNG; the palette index is the id.

    Raises:
        DataError: (a ValueError) the file cannot be decoded, is not a palette/grayscale image, or
            holds values other than 0..20 and 255.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            array = np.array(img) if mode in ("P", "L") else None
    except Exception as err:
        raise DataError(path, f"Could not read mask {str(path)!r}: {err}", "a palette PNG PIL can decode") from None
    if array is None:
        raise DataError(path, f"Mask {str(path)!r} has PIL mode {mode!r}", "a palette ('P') or grayscale ('L') PNG "
                        "whose values are class ids (0 background, c+1 class c, 255 void), like SegmentationClass/")
    bad = sorted(set(np.unique(array).tolist()) - _VALID_MASK_VALUES)
    if bad:
        raise DataError(path, f"Mask {str(path)!r} holds values {bad[:10]}",
                        f"only 0..{len(VOC_CLASSES)} and 255 (allowed)")
    return torch.from_numpy(array.astype(np.uint8))


class VOCDataset(Dataset):
    """One VOC split as dict items (``image``, ``labels``, ``index``, plus ``mask`` if segmentation).

    Args:
        root: VOC2012 folder or a parent of it (see :func:`find_voc_root`).
        split: split name, a file in ``ImageSets/Main/`` (or ``ImageSets/Segmentation/``).
        segmentation: read the split from ``ImageSets/Segmentation/`` and add ``SegmentationClass``
            masks (the localisation split).
        transform: joint v2 transform called as ``t(image, mask)`` (or ``t(image)``) on
            ``tv_tensors.Image`` uint8 / ``tv_tensors.Mask``; ``None`` keeps the source size.
            Labels never follow it; use ``augment`` for crops whose labels do.
        mean, std: normalisation applied after the transform.
        include_difficult: count objects marked ``difficult`` as positives.
        normalize: ``False`` leaves ``image`` uint8 (0..255), for a caller that crops first and
            normalises the small result (a teacher cache's views).
        store_dir: read decoded images (and masks) from an :class:`~attrpreserve.data.store.ImageStore`
            in this folder instead of decoding the files (``build_store()`` makes it); ``None``
            reads the files.
        store_size: short side of the stored images (0: source size).
        augment: the training augmentation, RandomResizedCrop(``image_size``, ``scale``,
            ``ratio``) + horizontal flip, drawn per access from torch's global generator with the
            draws of :func:`~attrpreserve.data.transforms.train_transform` (same seed, same
            images), with label-aware crops (``min_visible``); excludes ``transform``.
        image_size, scale, ratio: output size and crop ranges of ``augment``.
        min_visible: a class stays in an augmented item's ``labels`` only while at least one of
            its objects keeps at least this fraction of its XML box's area inside the crop
            (:meth:`view_labels`); with masks, the pixels of a dropped class turn void (255).
            ``0.0`` reproduces the paper's crop (labels never change).
        augment_on_device: :meth:`batch` only crops (uint8) and leaves the resize, flip and
            normalisation to the model's device: its ``image`` is a
            :class:`~attrpreserve.data.common.PendingViews`. Needs ``augment`` and a store.

    Items: ``image`` float32 [3,H,W] normalised (uint8 with ``normalize=False``); ``labels`` float32
    [20] multi-hot (the crop's with ``augment``); ``mask`` int64 [H,W] (0 background, c+1 class c,
    255 void; the source mask has the source image's size, any resizing is the transform's);
    ``index`` int.

    Raises:
        ValueError: a bad ``image_size``, ``scale``, ``ratio`` or ``min_visible``, or both
            ``augment`` and ``transform``.
        FileNotFoundError: missing root, split file, image, XML or mask (named in the message).
        DataError: (a ValueError, naming the file and what was expected) at construction, for an
            empty split file or one listing an id twice, an unparsable XML, an unknown class name,
            or, in a classification split, an XML naming no object; when an item is read, for a
            corrupt image or mask, a mask whose size differs from its image's, or an image whose
            size differs from its XML's ``<size>``; with ``min_visible > 0``, when a label-aware
            crop meets a counted object without a valid ``<bndbox>``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        segmentation: bool = False,
        transform: JointTransform | None = None,
        mean: Sequence[float] = VOC_MEAN,
        std: Sequence[float] = VOC_STD,
        include_difficult: bool = True,
        normalize: bool = True,
        store_dir: str | os.PathLike | None = None,
        store_size: int = 0,
        augment: bool = False,
        image_size: int = 227,
        scale: tuple[float, float] = T.DEFAULT_SCALE,
        ratio: tuple[float, float] = T.DEFAULT_RATIO,
        min_visible: float = 0.5,
        augment_on_device: bool = False,
    ) -> None:
        self.augment = bool(augment)
        if self.augment and transform is not None:
            raise ValueError("Expected argument `transform` to be None with `augment=True` (the augmentation is the "
                             f"transform), but got {transform!r}.")
        if not isinstance(augment_on_device, bool):
            raise ValueError(f"Expected argument `augment_on_device` to be a bool, but got {augment_on_device!r}.")
        if augment_on_device and not (self.augment and store_dir is not None and normalize and not segmentation):
            raise ValueError("Expected argument `augment_on_device=True` to come with `augment=True`, a `store_dir`, "
                             "`normalize=True` and `segmentation=False` (the batched training views of a store).")
        self.augment_on_device = augment_on_device
        self.image_size = check_int("image_size", image_size, 1)
        self.scale = T.check_range("scale", scale, 0.0, 1.0)
        self.ratio = T.check_range("ratio", ratio, 0.0, None)
        self.min_visible = check_fraction("min_visible", min_visible, " (0.0 reproduces the paper's crop)")
        self.root = find_voc_root(root)
        self.normalize = bool(normalize)
        self.split, self.segmentation = split, segmentation
        self.transform = transform
        self.mean, self.std = check_stats("mean", mean, False), check_stats("std", std, True)
        self.include_difficult = include_difficult
        self.split_file = self.root / "ImageSets" / ("Segmentation" if segmentation else "Main") / f"{split}.txt"
        self.ids = read_split(self.split_file)
        _missing(self.root / "JPEGImages", self.ids, ".jpg", "images", self.split_file)
        _missing(self.root / "Annotations", self.ids, ".xml", "annotation XMLs", self.split_file)
        if segmentation:
            _missing(self.root / "SegmentationClass", self.ids, ".png", "masks", self.split_file)
        labels = torch.zeros(len(self.ids), len(VOC_CLASSES))
        self.annotations: list[Annotation] = []
        for row in range(len(self.ids)):
            annotation = read_annotation(self.annotation_path(row), include_difficult)
            if not segmentation:  # classification needs labels; a mask carries the localisation split's
                check_has_objects(annotation, self.annotation_path(row))
            labels[row, annotation.classes] = 1.0
            self.annotations.append(annotation)
        self.labels = labels
        self.store: ImageStore | None = None
        if store_dir is not None:
            self.store = ImageStore(
                [self.image_path(i) for i in range(len(self.ids))],
                [self.mask_path(i) for i in range(len(self.ids))] if segmentation else None,
                short_side=store_size, store_dir=store_dir,
                name=f"voc-{'seg-' if segmentation else ''}{split}", check=self._check_sizes,
            )

    def _check_sizes(self, index: int, image_size: tuple[int, int], mask_size: tuple[int, int] | None) -> None:
        """The item-time size checks, run on the decoded sizes while the store is built."""
        check_image_size(image_size, self.image_path(index), self.annotations[index], self.annotation_path(index))
        if mask_size is not None:
            check_mask_size(mask_size, self.mask_path(index), image_size, self.image_path(index))

    def build_store(self, progress: bool = True) -> None:
        """Decode the split into its store (resumable; nothing to do when complete or storeless).

        Raises:
            DataError: (a ValueError) a corrupt image or mask, or a size check failing (named).
        """
        if self.store is not None and not self.store.is_complete:
            self.store.build(progress=progress)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        return self.root / "SegmentationClass" / f"{self.ids[index]}.png"

    def annotation_path(self, index: int) -> Path:
        return self.root / "Annotations" / f"{self.ids[index]}.xml"

    def image_size_of(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of the image items are made from (header only; the stored size
        with a store), for view sampling."""
        if self.store is not None:
            return self.store.size(index)
        try:
            with Image.open(self.image_path(index)) as img:
                width, height = img.size
        except Exception as err:
            raise DataError(self.image_path(index), f"Could not read image {str(self.image_path(index))!r}: {err}",
                            "a JPEG (or other image) PIL can decode") from None
        return height, width

    def view_image(self, index: int) -> Tensor:
        """``self[index]["image"]`` without the rest of the item: with a store, and items neither
        augmented, transformed nor normalised (a teacher cache's source), the stored uint8 image
        itself (a view of the memory map; nothing else read); otherwise the item's image.

        Raises:
            IndexError: ``index`` out of range.
            DataError: (a ValueError) from the item, as ``self[index]``.
        """
        if (self.store is None or self.augment or self.transform is not None or self.normalize
                or not 0 <= index < len(self.ids)):
            return self[index]["image"]
        return self.store.image(index)

    def view_labels(self, index: int, box: Sequence[int]) -> Tensor:
        """Labels of item ``index`` seen through crop ``box``: a class stays while at least one of
        its objects keeps at least ``min_visible`` of its box's area inside the crop (what
        augmented items use; a teacher-output cache uses it for its stored views).

        Args:
            index: item index.
            box: ``(top, left, height, width)`` in the pixels of the image items are made from
                (the stored image with a store, see :meth:`image_size_of`).

        Returns:
            float32 ``[20]`` multi-hot, a subset of ``labels[index]`` (equal to it for
            ``min_visible=0`` or a crop holding every box).

        Raises:
            DataError: (a ValueError) with ``min_visible > 0``, a counted object has no valid
                ``<bndbox>`` (its XML named).
        """
        if self.min_visible == 0.0:  # the paper's crop: no box needed, nothing read
            return self.labels[index].clone()
        frame = self.image_size_of(index)
        return self._view_labels(index, box, frame, frame if self.store is None else self.store.source_size(index))

    def _view_labels(self, index: int, box: Sequence[int], frame: tuple[int, int],
                     source: tuple[int, int]) -> Tensor:
        """:meth:`view_labels` with the crop's frame ``(h, w)`` and the source image's size known."""
        if self.min_visible == 0.0:
            return self.labels[index].clone()
        top, left, height, width = (int(v) for v in box)
        sy, sx = frame[0] / source[0], frame[1] / source[1]
        labels = torch.zeros(len(VOC_CLASSES))
        for k, obj in enumerate(self.annotations[index].objects):
            if (obj.difficult and not self.include_difficult) or labels[obj.cls]:
                continue
            if obj.box is None:
                path = self.annotation_path(index)
                raise DataError(path, f"Object {k} ({VOC_CLASSES[obj.cls]}) of annotation {str(path)!r} has no "
                                "valid <bndbox>, so a crop cannot tell whether it stays visible",
                                "<bndbox> with integers xmin <= xmax and ymin <= ymax (or min_visible=0)")
            xmin, ymin, xmax, ymax = obj.box
            # 1-based inclusive pixels are the half-open area [xmin - 1, xmax); clipped to the image,
            # then scaled into the frame the crop was drawn in (the stored image's with a store).
            x0, x1 = max(xmin - 1, 0) * sx, min(xmax, source[1]) * sx
            y0, y1 = max(ymin - 1, 0) * sy, min(ymax, source[0]) * sy
            area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
            kept_w = max(min(x1, left + width) - max(x0, left), 0.0)
            kept_h = max(min(y1, top + height) - max(y0, top), 0.0)
            if kept_w * kept_h >= self.min_visible * area:
                labels[obj.cls] = 1.0
        return labels

    def fingerprint(self) -> str:
        """Hash of what the items depend on (split, ids, labels, normalisation, augmentation), not
        of the path."""
        h = hashlib.sha256(repr((self.split, self.segmentation, self.mean, self.std)).encode())
        h.update("\n".join(self.ids).encode())
        h.update(self.labels.numpy().tobytes())
        if not self.normalize:
            h.update(b"uint8")
        if self.augment:  # un-augmented fingerprints (teacher-cache keys) stay as they were
            h.update(repr(("augment", self.image_size, self.scale, self.ratio, self.min_visible)).encode())
        if self.store is not None:  # the files' names, sizes, mtimes and the stored size
            h.update(f"store:{self.store.key}".encode())
        return f"VOCDataset:{h.hexdigest()[:16]}"

    def _draw_view(self, index: int, image: Tensor, source: tuple[int, int],
                   generator: torch.Generator | None) -> tuple[T.Box, bool, Tensor]:
        """A training view of item ``index``'s ``image`` (a crop box in its pixels, a flip) drawn
        from ``generator`` (``None``: torch's global one), and the labels the crop keeps."""
        frame = (int(image.shape[-2]), int(image.shape[-1]))
        box, flip = T.sample_view(generator, frame[0], frame[1], self.scale, self.ratio)
        return box, flip, self._view_labels(index, box, frame, source)

    def batch(self, keys: Sequence[int | Key]) -> dict[str, Any]:
        """The collated batch of ``keys`` (``(index, draw_seed)`` as a ``ResumableSampler`` yields
        them, or plain indices): equal, tensor for tensor, to
        ``default_collate([SeededItems(self)[k] for k in keys])``.

        Augmented items read from a store (the training set of ``VOCDataModule(store=True)``) are
        built without per-item dicts, ``tv_tensors`` or collation: each view is drawn from its key's
        seed, cropped and resized in uint8, and the batch normalised once (normalising is
        elementwise: the same floats); with ``augment_on_device`` only cropped (``image`` is a
        :class:`~attrpreserve.data.common.PendingViews`, the rest done on the device). Other items
        are collated one by one.

        Raises:
            IndexError: an index out of range.
        """
        if self.store is None or not self.augment or self.segmentation or not self.normalize:
            seeded = SeededItems(self)
            return default_collate([seeded[key] for key in keys])
        draws = torch.Generator()  # re-seeded per key: the draws SeededItems' forked global RNG makes
        images, labels, indices, flips = [], [], [], []
        for key in keys:
            index, seed = key if isinstance(key, tuple) else (key, None)
            index = int(index)
            if not 0 <= index < len(self.ids):
                raise IndexError(f"index {index} out of range for {len(self.ids)} items")
            image = self.store.image(index)
            generator = None if seed is None else draws.manual_seed(int(seed))  # int keys: the global RNG, as items
            box, flip, kept = self._draw_view(index, image, self.store.source_size(index), generator)
            labels.append(kept)
            if self.augment_on_device:
                images.append(T.crop_view(image, box))
                flips.append(flip)
            else:
                images.append(T.apply_view(image, box, flip, self.image_size))
            indices.append(index)
        return {
            "image": PendingViews(images, flips) if self.augment_on_device else T.normalize(
                torch.stack(images), self.mean, self.std),
            "labels": torch.stack(labels),
            "index": torch.tensor(indices, dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} items")
        mask = None
        if self.store is not None:  # decoded, resized and checked once, when the store was built
            image = tv_tensors.Image(self.store.image(index))
            source = self.store.source_size(index)
            if self.segmentation:
                mask = tv_tensors.Mask(self.store.mask(index))
        else:
            image = tv_tensors.Image(read_image(self.image_path(index)))
            size = source = tuple(image.shape[-2:])
            check_image_size(size, self.image_path(index), self.annotations[index], self.annotation_path(index))
            if self.segmentation:
                raw = read_mask(self.mask_path(index))
                check_mask_size(tuple(raw.shape), self.mask_path(index), size, self.image_path(index))
                mask = tv_tensors.Mask(raw)
        labels = self.labels[index].clone()
        if self.augment:
            # torch's global generator, the draws v2's RandomResizedCrop + flip make: worker seeding
            # and resume work as before, and min_visible=0 gives train_transform's images exactly.
            box, flip, labels = self._draw_view(index, image, source, None)
            image = T.apply_view(image, box, flip, self.image_size)
            if mask is not None:
                mask = T.apply_view(mask, box, flip, self.image_size)  # a tv Mask: nearest neighbour
                mask = void_dropped_classes(mask, self.labels[index], labels)
        elif self.transform is not None:
            if mask is None:
                image = self.transform(image)
            else:
                image, mask = self.transform(image, mask)
        item: dict[str, Any] = {
            "image": T.normalize(image, self.mean, self.std) if self.normalize else plain(image),
            "labels": labels,
            "index": index,
        }
        if mask is not None:
            item["mask"] = plain(mask).long()
        return item


def download_voc(root: str | os.PathLike) -> Path:
    """The VOC2012 folder under ``root``, downloaded and extracted there first (torchvision's VOC 2012
    trainval archive, md5-checked; an archive already in ``root`` that passes the check is used as
    it is) when ``root`` holds none."""
    try:
        return find_voc_root(root)
    except FileNotFoundError:
        pass
    from torchvision.datasets.utils import download_and_extract_archive
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    info = DATASET_YEAR_DICT["2012"]
    Path(root).mkdir(parents=True, exist_ok=True)
    download_and_extract_archive(info["url"], str(root), filename=info["filename"], md5=info["md5"])
    return find_voc_root(root)


class VOCDataModule(ViewMixin, pl.LightningDataModule):
    """PASCAL VOC 2012 (local folder): classification train/val and the localisation split.

    Args:
        root: VOC2012 folder, or a parent of ``VOCdevkit/VOC2012`` or ``VOC2012``.
        image_size: square input size (paper: 227).
        batch_size: samples per batch (paper: 64).
        num_workers: DataLoader workers; ``None``: ``min(4, cores)``, 0 on one or two cores
            (:func:`~attrpreserve.data.common.default_workers`).
        train_split, val_split: files in ``ImageSets/Main/``.
        seg_split: file in ``ImageSets/Segmentation/`` (the localisation split, served by
            ``test_dataloader``).
        scale, ratio: RandomResizedCrop ranges of the training augmentation.
        train_augment: crop + flip the training images (else resize like evaluation).
        min_visible: label-aware crops: in a training crop a class stays in ``labels`` only while
            at least one of its objects keeps at least this fraction of its XML box's area
            inside the crop (boxes scaled to the stored image with ``store``); the teacher
            cache's views get their labels the same way. ``0.0`` reproduces the paper's crop
            (labels never change); a small crop often cuts a small object out, and its label
            then is noise. Evaluation splits are never cropped.
        include_difficult: count ``difficult`` objects as positives (the reference code does).
        mean, std: normalisation (paper's VOC statistics by default).
        pin_memory: ``None`` pins when CUDA is available.
        cache_teacher: in a distillation fit, serve training images through a
            :class:`~attrpreserve.teacher_cache.TeacherCache` of the frozen teacher's outputs
            (built on first use, keyed by teacher, data, views and size).
        cache_views: K, fixed augmented views per training image in the cache.
        cache_dir: where caches live; cache_seed: seed of the views.
        download: when ``root`` holds no VOC2012 folder, fetch VOC 2012 trainval (2 GB) through
            torchvision's downloader into ``root`` (``root/VOCdevkit/VOC2012``) in
            ``prepare_data``. Off by default: nothing is downloaded unless asked.
        store: decode every image (and mask) of each split once into a memory-mapped uint8
            :class:`~attrpreserve.data.store.ImageStore` (built in ``setup()``, on global rank 0
            under DDP while the others wait; resumable; rebuilt when a file's name, size or mtime
            or ``store_size`` changes) and train and evaluate from it. Several times faster on
            CPU; items are crops of the stored (resized) image, so they differ slightly from the
            JPEG path's. Training batches of the store are built whole (:meth:`VOCDataset.batch`,
            bit for bit the per-item path's). Off by default.
        store_dir: parent folder of the stores.
        store_size: short side of stored images in pixels, ``0`` (source size: items equal the
            JPEG path's) or ``>= image_size``; ``None`` is ``round(1.15 * image_size)``.
        cache_batched: fetch each training batch of the cache whole
            (:meth:`~attrpreserve.teacher_cache.CachedViewsDataset.batch`: one read per cache
            file, no per-item dicts or collation); the batches are the per-item path's, bit for
            bit. ``False`` fetches items one by one.
        augment_on_device: the training loader only crops (uint8, which is also what travels to
            the device); the resize, flip and normalisation run on the model's device after the
            batch transfer (``on_after_batch_transfer``, :class:`~attrpreserve.data.common.PendingViews`),
            for a GPU whose host has few cores per device. Same batches as the loader's on the
            CPU, bit for bit. Needs ``train_augment`` and ``store=True`` or a batched teacher cache.

    Raises:
        ValueError: a bad argument (named, with the allowed values).
        FileNotFoundError: from ``setup()``, when the folder, a split file or a listed file is
            missing (the message says what layout is expected).
        DataError: (a ValueError) from ``setup()`` with ``store=True``, for the first corrupt or
            mis-sized file met while building a store (without a store: when the item is read).

    Example:
        >>> dm = VOCDataModule("/data/voc", image_size=64, batch_size=8, num_workers=0)
        >>> dm.num_classes, dm.class_names[:2], dm.hparams.image_size
        (20, ('aeroplane', 'bicycle'), 64)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 227,
        batch_size: int = 64,
        num_workers: int | None = None,
        train_split: str = "train",
        val_split: str = "val",
        seg_split: str = "val",
        scale: tuple[float, float] = T.DEFAULT_SCALE,
        ratio: tuple[float, float] = T.DEFAULT_RATIO,
        train_augment: bool = True,
        min_visible: float = 0.5,
        include_difficult: bool = True,
        mean: tuple[float, float, float] = VOC_MEAN,
        std: tuple[float, float, float] = VOC_STD,
        pin_memory: bool | None = None,
        cache_teacher: bool = False,
        cache_views: int = 8,
        cache_dir: str = ".cache/teacher",
        cache_seed: int = 0,
        download: bool = False,
        store: bool = False,
        store_dir: str = ".cache/images",
        store_size: int | None = None,
        cache_batched: bool = True,
        augment_on_device: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"Expected argument `root` to be a path to a VOC2012 folder, but got {root!r}.")
        if not isinstance(download, bool):
            raise ValueError(f"Expected argument `download` to be a bool, but got {download!r}.")
        self.download = download
        self.image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = default_workers() if num_workers is None else check_int("num_workers", num_workers, 0)
        for name, value in (("train_split", train_split), ("val_split", val_split), ("seg_split", seg_split)):
            if not isinstance(value, str) or not value or "/" in value or "\\" in value:
                raise ValueError(
                    f"Expected argument `{name}` to be a split name (a file name in ImageSets/, without .txt), "
                    f"but got {value!r}."
                )
        self.scale = T.check_range("scale", scale, 0.0, 1.0)
        self.ratio = T.check_range("ratio", ratio, 0.0, None)
        self.mean, self.std = check_stats("mean", mean, False), check_stats("std", std, True)
        self.train_augment, self.include_difficult, self.pin_memory = train_augment, include_difficult, pin_memory
        self.min_visible = check_fraction("min_visible", min_visible, " (0.0 reproduces the paper's crop)")
        self.root = root
        if not isinstance(store, bool):
            raise ValueError(f"Expected argument `store` to be a bool, but got {store!r}.")
        if not isinstance(store_dir, (str, os.PathLike)) or not str(store_dir):
            raise ValueError(f"Expected argument `store_dir` to be a folder path, but got {store_dir!r}.")
        if store_size is None:
            store_size = default_store_size(self.image_size)
        if isinstance(store_size, bool) or not isinstance(store_size, int) or not (
                store_size == 0 or store_size >= self.image_size):
            raise ValueError(f"Expected argument `store_size` to be None, 0 (source size) or an int >= image_size "
                             f"({self.image_size}), but got {store_size!r}.")
        self.store, self.store_dir, self.store_size = store, store_dir, store_size
        self._init_cache(cache_teacher, cache_views, cache_dir, cache_seed, cache_batched)
        if not isinstance(augment_on_device, bool):
            raise ValueError(f"Expected argument `augment_on_device` to be a bool, but got {augment_on_device!r}.")
        if augment_on_device and not (train_augment and (store or (cache_teacher and cache_batched))):
            raise ValueError(
                "Expected argument `augment_on_device=True` to come with `train_augment=True` and either `store=True` "
                "or `cache_teacher=True` with `cache_batched=True` (the batched training views it defers), but got "
                f"train_augment={train_augment}, store={store}, cache_teacher={cache_teacher}, "
                f"cache_batched={cache_batched}."
            )
        self.augment_on_device = augment_on_device
        if augment_on_device:  # take Lightning's transfer hook over only when there are views to finish
            self.on_after_batch_transfer = self._finish_views_on_device
        self.save_hyperparameters()
        self.train_dataset: VOCDataset | None = None
        self.val_dataset: VOCDataset | None = None
        self.localization_dataset: VOCDataset | None = None

    @property
    def num_classes(self) -> int:
        return len(VOC_CLASSES)

    @property
    def class_names(self) -> tuple[str, ...]:
        return VOC_CLASSES

    def _dataset(self, split: str, segmentation: bool, train: bool) -> VOCDataset:
        augment = train and self.train_augment
        return VOCDataset(self.root, split, segmentation=segmentation,
                          transform=None if augment else T.eval_transform(self.image_size), mean=self.mean,
                          std=self.std, include_difficult=self.include_difficult, augment=augment,
                          augment_on_device=augment and self.augment_on_device and self.store,
                          **self._view_args(), **self._store_args())

    def _finish_views_on_device(self, batch: Any, dataloader_idx: int) -> Any:
        """``on_after_batch_transfer`` with ``augment_on_device``: finish the training views on the
        device, then run the LightningModule's own hook if it has one (Lightning calls only the
        data module's when both have one)."""
        batch = self.render_views(batch)
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if isinstance(module, pl.LightningModule) and is_overridden("on_after_batch_transfer", module):
            batch = module.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    def _view_args(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "scale": self.scale, "ratio": self.ratio,
                "min_visible": self.min_visible}

    def _store_args(self) -> dict[str, Any]:
        return {"store_dir": self.store_dir, "store_size": self.store_size} if self.store else {}

    def _build_stores(self, datasets: Sequence[VOCDataset | None]) -> None:
        stores = [d.store for d in datasets if d is not None and d.store is not None]
        if stores and not all(s.is_complete for s in stores):
            build_on_rank_zero(stores, getattr(self, "trainer", None))

    def prepare_data(self) -> None:
        """With ``download=True`` and no VOC2012 folder under ``root``: download and extract VOC 2012."""
        if self.download:
            download_voc(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Index the splits a stage needs (all of them for ``stage=None``); checks every file exists."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.hparams.train_split, False, train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset(self.hparams.val_split, False, train=False)
        if stage in (None, "test", "predict") and self.localization_dataset is None:
            self.localization_dataset = self._dataset(self.hparams.seg_split, True, train=False)
        self._build_stores([self.train_dataset, self.val_dataset, self.localization_dataset])

    def source_dataset(self, split: str | None = None) -> VOCDataset:
        """Un-augmented uint8 items at source resolution (the stored one with ``store``), for a
        teacher-output cache's views: :meth:`apply_view` crops them and normalises the result,
        and ``view_labels`` gives the labels of a view (this module's ``min_visible``)."""
        dataset = VOCDataset(self.root, split or self.hparams.train_split, transform=None, mean=self.mean,
                             std=self.std, include_difficult=self.include_difficult, normalize=False,
                             **self._view_args(), **self._store_args())
        self._build_stores([dataset])
        return dataset
