r"""One pass over a VOC-layout folder that lists every problem, not just the first.

A :class:`~attrpreserve.data.VOCDataset` stops at the first broken file it reads, which may be an
hour into training. ``attrpreserve check-data ROOT`` reads every split file, XML, image and mask
the splits name, with the same readers and checks the dataset uses (:mod:`attrpreserve.data.voc`),
and reports all problems at once: missing files, split files that are empty or repeat an id,
unparsable XMLs, unknown class names, classification images with no object, corrupt images and
masks, mask values outside 0..20/255, masks or XML ``<size>``\ s that disagree with their image.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from attrpreserve.data.voc import (
    VOC_CLASSES, Annotation, DataError, Problem, check_has_objects, check_image_size, check_mask_size,
    check_split_ids, find_voc_root, read_annotation, read_image, read_mask, read_split_ids,
)

SPLIT_FOLDERS = ("Main", "Segmentation")
"""Folders of ``ImageSets/`` whose split files are checked: classification (labels needed) and
segmentation (masks needed)."""

_T = TypeVar("_T")


@dataclass
class DataReport:
    """What :func:`validate_data` found: the VOC2012 folder, the splits read, how many distinct
    images they list, and every problem in the order met (split files first)."""

    root: Path
    splits: list[str]
    num_images: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem was found."""
        return not self.problems

    def summary(self) -> str:
        """``"N images checked, M problems"``."""
        n, m = self.num_images, len(self.problems)
        return f"{n} image{'s' * (n != 1)} checked, {m} problem{'s' * (m != 1)}"

    def __str__(self) -> str:
        head = f"{self.summary()} ({self.root}; splits: {', '.join(self.splits) or 'none'})"
        return "\n".join([head, *(str(p) for p in self.problems)])


def split_files(voc: Path) -> list[str]:
    """``Folder/name`` of every split file under ``ImageSets/Main`` and ``ImageSets/Segmentation``,
    leaving out the per-class lists (``Main/<class>_<split>.txt``), which repeat the ids of their split."""
    names = []
    for folder in SPLIT_FOLDERS:
        for path in sorted((voc / "ImageSets" / folder).glob("*.txt")):
            if folder == "Main" and path.stem.rpartition("_")[0] in VOC_CLASSES:
                continue
            names.append(f"{folder}/{path.stem}")
    return names


def _check_split_name(name: object) -> str:
    folder, _, stem = name.partition("/") if isinstance(name, str) else ("", "", "")
    if folder not in SPLIT_FOLDERS or not stem or "/" in stem or "\\" in stem:
        raise ValueError(
            "Expected argument `splits` to hold split names such as 'Main/train' or 'Segmentation/val' (a file in "
            f"ImageSets/, without .txt), but got {name!r}."
        )
    return name  # type: ignore[return-value]


def _attempt(problems: list[Problem], check: Callable[..., _T], *args: object) -> _T | None:
    """``check(*args)``, or None with its problem added when it raises a :class:`DataError`."""
    try:
        return check(*args)
    except DataError as err:
        problems.append(err.problem)
        return None


def _missing(path: Path, kind: str, split_file: Path) -> Problem:
    folder = path.parent.name
    return Problem(path, f"{kind} {str(path)!r}, listed in {str(split_file)!r}, is missing",
                   f"{folder}/<id>{path.suffix} for every id of the split")


def _check_image(voc: Path, image_id: str, labels: bool, mask: bool, split_file: Path) -> list[Problem]:
    """Every problem of one image's files: XML, image, and (``mask``) its mask; ``labels``: the
    image is in a classification split, so its XML must name an object."""
    image_path = voc / "JPEGImages" / f"{image_id}.jpg"
    xml_path = voc / "Annotations" / f"{image_id}.xml"
    mask_path = voc / "SegmentationClass" / f"{image_id}.png"
    problems: list[Problem] = []
    annotation: Annotation | None = None
    if xml_path.is_file():
        annotation = _attempt(problems, read_annotation, xml_path)
        if annotation is not None and labels:
            _attempt(problems, check_has_objects, annotation, xml_path)
    else:
        problems.append(_missing(xml_path, "Annotation", split_file))
    size = None
    if image_path.is_file():
        image = _attempt(problems, read_image, image_path)
        if image is not None:
            size = tuple(image.shape[-2:])
            if annotation is not None:
                _attempt(problems, check_image_size, size, image_path, annotation, xml_path)
    else:
        problems.append(_missing(image_path, "Image", split_file))
    if mask:
        if mask_path.is_file():
            raw = _attempt(problems, read_mask, mask_path)
            if raw is not None and size is not None:
                _attempt(problems, check_mask_size, tuple(raw.shape), mask_path, size, image_path)
        else:
            problems.append(_missing(mask_path, "Mask", split_file))
    return problems


def validate_data(root: str | os.PathLike, splits: Sequence[str] | None = None) -> DataReport:
    r"""Read every split file, XML, image and mask of a VOC-layout folder and list every problem.

    Each image is checked once, however many splits list it: its XML and image always, the
    XML's objects when a ``Main`` split lists it, its mask when a ``Segmentation`` split does.
    The checks are those :class:`~attrpreserve.data.VOCDataset` runs (the same functions), so a
    clean report means the dataset reads every item. Images no split lists are not read.

    Args:
        root: VOC2012 folder or a parent of it (see :func:`~attrpreserve.data.voc.find_voc_root`).
        splits: ``"Main/<name>"`` or ``"Segmentation/<name>"`` split files to check; default
            every split file of both folders but the per-class lists (:func:`split_files`).

    Returns:
        A :class:`DataReport`; ``report.ok`` when nothing is wrong.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no VOC2012 folder.
        ValueError: a name in ``splits`` is not ``"Main/<name>"`` or ``"Segmentation/<name>"``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> voc = Path(tmp.name)
        >>> for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        ...     (voc / sub).mkdir(parents=True)
        >>> Image.new("RGB", (48, 40)).save(voc / "JPEGImages" / "a.jpg")
        >>> _ = (voc / "Annotations" / "a.xml").write_text(
        ...     "<annotation><size><width>40</width><height>40</height></size></annotation>")
        >>> _ = (voc / "ImageSets" / "Main" / "train.txt").write_text("a\na\n")
        >>> report = validate_data(voc)
        >>> report.summary(), [(p.file.name, p.expected) for p in report.problems]  # doctest: +NORMALIZE_WHITESPACE
        ('1 image checked, 3 problems',
         [('train.txt', 'each image id once'),
          ('a.xml', 'at least one <object><name> per image of a classification split'),
          ('a.xml', "the XML's <size> to match its image")])
        >>> tmp.cleanup()
    """
    if isinstance(splits, str):
        raise ValueError(f"Expected argument `splits` to be a sequence of split names, but got {splits!r}.")
    voc = find_voc_root(root)
    names = split_files(voc) if splits is None else [_check_split_name(s) for s in splits]
    problems: list[Problem] = []
    if not names:
        where = voc / "ImageSets"
        problems.append(Problem(where, f"No split file found in {str(where)!r}",
                                "ImageSets/Main/<split>.txt or ImageSets/Segmentation/<split>.txt"))
    wanted: dict[str, tuple[bool, bool, Path]] = {}  # id -> (needs labels, needs mask, first split file)
    for name in names:
        folder, _, stem = name.partition("/")
        path = voc / "ImageSets" / folder / f"{stem}.txt"
        try:
            ids = read_split_ids(path)
        except FileNotFoundError:
            problems.append(Problem(path, f"Split file {str(path)!r} is missing",
                                    f"ImageSets/{folder}/{stem}.txt with one image id per line"))
            continue
        _attempt(problems, check_split_ids, ids, path)
        for image_id in ids:
            labels, mask, first = wanted.get(image_id, (False, False, path))
            wanted[image_id] = (labels or folder == "Main", mask or folder == "Segmentation", first)
    for image_id, (labels, mask, first) in wanted.items():
        problems += _check_image(voc, image_id, labels, mask, first)
    return DataReport(voc, names, len(wanted), problems)


def parser() -> argparse.ArgumentParser:
    """The ``attrpreserve check-data`` argument parser."""
    p = argparse.ArgumentParser(
        prog="attrpreserve check-data",
        description="Read every split file, XML, image and mask of a PASCAL VOC 2012 folder and list every "
                    "problem (exit status 0: clean, 1: problems found).",
    )
    p.add_argument("root", help="VOC2012 folder, or a parent of VOCdevkit/VOC2012 or VOC2012")
    p.add_argument("--split", action="append", dest="splits", metavar="FOLDER/NAME",
                   help="split file to check, e.g. Main/train or Segmentation/val (repeatable; default: every "
                        "split file in ImageSets/Main and ImageSets/Segmentation but the per-class lists)")
    return p


def main(argv: Sequence[str]) -> int:
    """``attrpreserve check-data ROOT [--split FOLDER/NAME ...]``: print the report, return the status.

    Prints ``N images checked, M problems`` and one line per problem to stdout.

    Returns:
        0 when no problem was found, 1 otherwise.

    Raises:
        SystemExit: (2, with the message on stderr, no traceback) for bad arguments, a missing
            root or a bad ``--split`` name, as argparse does.

    Example:
        >>> main(["/no/such/folder"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    p = parser()
    args = p.parse_args(list(argv))
    try:
        report = validate_data(args.root, args.splits)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    print(report)
    return 0 if report.ok else 1
