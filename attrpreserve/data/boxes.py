"""Bounding boxes and ``difficult`` flags from VOC XMLs, as padded tensors a DataLoader collates.

The box protocol of :func:`attrpreserve.evaluate.evaluate` (TorchRay's pointing game on
PASCAL VOC 2007 test, which has no segmentation masks) reads a batch's ``boxes``:

- ``boxes``: float ``[B, M, 6]`` rows ``(class, x0, y0, x1, y1, difficult)``; ``x0..x1`` and
  ``y0..y1`` are the **0-based, inclusive** pixel columns and rows the box covers (VOC's 1-based
  ``xmin..xmax`` minus one, as TorchRay's ``voc_as_mask``); ``difficult`` is 0 or 1; rows with
  ``class == -1`` are padding.
- ``box_size``: long ``[B, 2]``, the ``(height, width)`` of the frame the boxes are in (the
  original image for VOC). Maps are resized to this frame before they are scored, so the 15 px
  tolerance is in original pixels, as in TorchRay. Without it the boxes are in image pixels.

:class:`VOCBoxDataset` serves such items from a VOC 2007-style folder (``JPEGImages``,
``Annotations``, ``ImageSets/Main/<split>.txt``); :func:`read_boxes` reads one XML.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from attrpreserve.data.voc import (
    VOC_CLASSES, VOC_MEAN, VOC_STD, DataError, read_annotation, read_image, read_split,
)
from attrpreserve.data import transforms as T

PAD_CLASS = -1
"""Class of a padding row of ``boxes``."""


class Boxes(NamedTuple):
    """The objects of one VOC XML: ``classes`` ``[M]`` long, ``boxes`` ``[M, 4]`` float
    ``(x0, y0, x1, y1)`` 0-based inclusive, ``difficult`` ``[M]`` bool, ``size`` ``(height, width)``
    from ``<size>`` (None without one)."""

    classes: Tensor
    boxes: Tensor
    difficult: Tensor
    size: tuple[int, int] | None


def read_boxes(path: str | os.PathLike) -> Boxes:
    """Every ``<object>`` of a VOC XML with its box and ``difficult`` flag (difficult ones kept).

    Raises:
        DataError: (a ValueError) the XML does not parse, names an unknown class (see
            :func:`~attrpreserve.data.voc.read_annotation`), or an object lacks a ``<bndbox>`` of
            four integers with ``xmin <= xmax`` and ``ymin <= ymax``.

    Example:
        >>> import tempfile
        >>> xml = ("<annotation><size><width>40</width><height>30</height></size>"
        ...        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin>"
        ...        "<xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>")
        >>> path = Path(tempfile.mkdtemp()) / "a.xml"
        >>> _ = path.write_text(xml)
        >>> found = read_boxes(path)
        >>> found.classes.tolist(), found.boxes.tolist(), found.difficult.tolist(), found.size
        ([11], [[0.0, 1.0, 9.0, 19.0]], [False], (30, 40))
    """
    path = Path(path)
    size = read_annotation(path).size  # parses, checks class names and <size>
    classes, boxes, difficult = [], [], []
    for obj in ET.parse(path).getroot().iter("object"):
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (int(float((box.findtext(k) or "").strip())) - 1  # type: ignore[union-attr]
                              for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, ValueError):
            raise DataError(path, f"An object of {str(path)!r} has no <bndbox> of four numbers",
                            "<bndbox> with <xmin>, <ymin>, <xmax>, <ymax>") from None
        if x1 < x0 or y1 < y0:
            raise DataError(path, f"An object of {str(path)!r} has an empty box ({x0 + 1}, {y0 + 1}, {x1 + 1}, "
                            f"{y1 + 1})", "xmin <= xmax and ymin <= ymax")
        classes.append(VOC_CLASSES.index((obj.findtext("name") or "").strip()))
        boxes.append([x0, y0, x1, y1])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return Boxes(torch.tensor(classes, dtype=torch.long), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                 torch.tensor(difficult, dtype=torch.bool), size)


def pad_boxes(found: Boxes, max_boxes: int) -> Tensor:
    """``[max_boxes, 6]`` rows ``(class, x0, y0, x1, y1, difficult)``, padding rows of class -1.

    Raises:
        ValueError: more than ``max_boxes`` objects.

    Example:
        >>> found = Boxes(torch.tensor([2]), torch.tensor([[0.0, 1.0, 3.0, 4.0]]), torch.tensor([True]), None)
        >>> pad_boxes(found, 2).tolist()
        [[2.0, 0.0, 1.0, 3.0, 4.0, 1.0], [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    m = found.classes.numel()
    if m > max_boxes:
        raise ValueError(f"Expected at most `max_boxes`={max_boxes} objects per image, but got {m}; raise max_boxes.")
    out = torch.zeros(max_boxes, 6)
    out[:, 0] = PAD_CLASS
    out[:m, 0] = found.classes.float()
    out[:m, 1:5] = found.boxes
    out[:m, 5] = found.difficult.float()
    return out


def box_masks(boxes: Tensor, image_index: Tensor, classes: Tensor, size: Sequence[int],
              difficult: bool = True) -> Tensor:
    """``[N, H, W]`` bool: the union of the boxes of class ``classes[n]`` in image ``image_index[n]``.

    As TorchRay's ``voc_as_mask``: every box of the class, ``difficult`` ones included (set
    ``difficult=False`` to leave them out), pixels ``y0..y1`` x ``x0..x1`` inclusive, clipped to
    the frame. One 2-D difference array per pair, no loop over pixels or boxes.

    Args:
        boxes: ``[B, M, 6]`` (see the module docstring).
        image_index, classes: long ``[N]``, the pairs.
        size: ``(H, W)`` of the frame.
        difficult: include difficult boxes.

    Example:
        >>> boxes = torch.tensor([[[0, 1, 0, 2, 1, 0], [0, 0, 2, 0, 2, 1], [1, 0, 0, 0, 0, 0]]]).float()
        >>> box_masks(boxes, torch.tensor([0]), torch.tensor([0]), (3, 4)).int()
        tensor([[[0, 1, 1, 0],
                 [0, 1, 1, 0],
                 [1, 0, 0, 0]]], dtype=torch.int32)
    """
    h, w = int(size[0]), int(size[1])
    rows = boxes[image_index]  # [N, M, 6]
    keep = rows[..., 0] == classes[:, None].to(rows.dtype)
    if not difficult:
        keep &= rows[..., 5] == 0
    x0 = rows[..., 1].clamp(0, w).long()
    y0 = rows[..., 2].clamp(0, h).long()
    x1 = (rows[..., 3] + 1).clamp(0, w).long()
    y1 = (rows[..., 4] + 1).clamp(0, h).long()
    keep &= (x1 > x0) & (y1 > y0)
    n, m = keep.shape
    diff = torch.zeros(n, (h + 1) * (w + 1), device=boxes.device)
    one = keep.to(diff.dtype)
    for ys, xs, sign in ((y0, x0, 1.0), (y0, x1, -1.0), (y1, x0, -1.0), (y1, x1, 1.0)):
        diff.scatter_add_(1, ys * (w + 1) + xs, sign * one)
    cover = diff.view(n, h + 1, w + 1).cumsum(1).cumsum(2)[:, :h, :w]
    return cover > 0.5


class VOCBoxDataset(Dataset):
    """PASCAL VOC 2007-style detection data (boxes, no masks) for the box pointing game.

    Items: ``image`` float32 ``[3, S, S]`` (resized, normalised), ``labels`` float32 ``[20]`` (every
    class named in the XML, difficult ones included, as TorchRay's ``voc_as_class_ids``),
    ``boxes`` ``[max_boxes, 6]`` in original pixels, ``box_size`` long ``[2]`` (original height,
    width), ``index``.

    Args:
        root: the VOC2007 folder (holding ``JPEGImages``, ``Annotations``, ``ImageSets/Main``).
        split: file in ``ImageSets/Main/`` (TorchRay: ``test``).
        image_size: square input size S.
        max_boxes: padding length of ``boxes`` (VOC 2007 has at most 42 objects per image).
        mean, std: normalisation.

    Raises:
        FileNotFoundError: missing folder or split file.
        DataError: (ValueError) a broken XML, when the dataset is built.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", image_size: int = 224, max_boxes: int = 64,
                 mean: Sequence[float] = VOC_MEAN, std: Sequence[float] = VOC_STD) -> None:
        self.root = Path(root)
        if not (self.root / "Annotations").is_dir() or not (self.root / "JPEGImages").is_dir():
            raise FileNotFoundError(f"Expected argument `root` to be a VOC2007 folder holding JPEGImages/, "
                                    f"Annotations/ and ImageSets/Main/, but got {str(self.root)!r}.")
        for name, value in (("image_size", image_size), ("max_boxes", max_boxes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}.")
        self.ids = read_split(self.root / "ImageSets" / "Main" / f"{split}.txt")
        self.image_size, self.max_boxes, self.mean, self.std = image_size, max_boxes, tuple(mean), tuple(std)
        self.objects = [read_boxes(self.root / "Annotations" / f"{i}.xml") for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = read_image(self.root / "JPEGImages" / f"{self.ids[index]}.jpg").float() / 255
        found = self.objects[index]
        labels = torch.zeros(len(VOC_CLASSES))
        labels[found.classes] = 1.0
        resized = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        return {"image": T.normalize(resized, self.mean, self.std), "labels": labels,
                "boxes": pad_boxes(found, self.max_boxes), "box_size": torch.tensor(image.shape[-2:]),
                "index": index}


__all__ = ["Boxes", "PAD_CLASS", "VOCBoxDataset", "box_masks", "pad_boxes", "read_boxes"]
