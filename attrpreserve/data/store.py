"""Decoded-image store: decode every image of a folder data set once, read it memory-mapped.

A JPEG data set decodes each image again at every epoch (and, before this store, normalised it
at full size before cropping): on a small CPU that is most of a training step. An
:class:`ImageStore` decodes each listed image once, resizes it so that its short side is
``short_side`` (bilinear, antialiased; never enlarged; ``0`` keeps the source size) and writes it
as uint8 ``H x W x 3`` into one flat memory-mapped file, with the label masks (nearest neighbour,
every value, void 255 included, kept) in a second one. Items are then zero-copy uint8 views
``[3, h, w]`` (channels-last strides) that the training augmentation crops and resizes in uint8,
normalising only the small result.

Files (``store_dir/<name>-<key>/``): ``images.npy`` (flat uint8), ``masks.npy`` (flat uint8, with
masks), ``offsets.npy`` (int64 ``[N + 1]``, pixel offsets: an image starts at ``3 * offset``, its
mask at ``offset``), ``shapes.npy`` (stored ``(h, w)``), ``source_shapes.npy`` (decoded
``(H, W)``), ``done.npy`` (per image, saved after its pixels are flushed: a killed build resumes
where it stopped) and ``meta.json``.

The key hashes the format, ``short_side`` and each source file's name, size in bytes and
modification time: editing, replacing or adding a file, or changing the size, gives a new folder
that is built afresh, never a stale image. Size on disk: about ``3 * short_side**2 * aspect``
bytes per image, e.g. VOC train (5,717 images) at ``short_side=261`` (227 px training) about
1.6 GB, at 74 (64 px) 120 MB.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (200, 100), (255, 0, 0)).save(folder / "a.jpg")
    >>> store = ImageStore([folder / "a.jpg"], short_side=50, store_dir=folder / "store").build(progress=False)
    >>> store.size(0), store.source_size(0), tuple(store.image(0).shape), store.image(0).dtype
    ((50, 100), (100, 200), (3, 50, 100), torch.uint8)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

FORMAT_VERSION = 1
DEFAULT_STORE_SCALE = 1.15
"""Default short side of stored images, as a multiple of the training ``image_size``."""

Check = Callable[[int, tuple[int, int], Any], None]
"""``check(index, image_size, mask_size)``: raise for a source image (or its mask) whose decoded
``(height, width)`` is wrong (e.g. :func:`~attrpreserve.data.voc.check_image_size`)."""


def default_store_size(image_size: int) -> int:
    """Short side of stored images for training at ``image_size``: ``round(1.15 * image_size)``.

    The margin keeps crops near the full image (RandomResizedCrop's large scales, the evaluation
    resize) downsampled rather than upsampled.

    Example:
        >>> default_store_size(64), default_store_size(227)
        (74, 261)
    """
    return int(round(DEFAULT_STORE_SCALE * image_size))


def stored_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(h, w)`` of an image of ``(height, width)`` stored with ``short_side`` (0: unchanged).

    The short side becomes ``short_side`` and the long one keeps the aspect ratio (rounded); an
    image already no larger is kept as it is.

    Example:
        >>> stored_size(375, 500, 261), stored_size(100, 80, 261), stored_size(375, 500, 0)
        ((261, 348), (100, 80), (375, 500))
    """
    short = min(height, width)
    if short_side <= 0 or short <= short_side:
        return height, width
    scale = short_side / short
    if height <= width:
        return short_side, max(1, int(round(width * scale)))
    return max(1, int(round(height * scale))), short_side


def _error(path: Path, what: str, expected: str) -> Exception:
    from attrpreserve.data.voc import DataError  # the readers' error type (a ValueError)

    return DataError(path, what, expected)


def _image_header(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for corrupt files
        raise _error(path, f"Could not read image {str(path)!r}: {err}",
                     "a JPEG (or other image) PIL can decode") from None
    return height, width


def decode_resized(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 ``[h, w, 3]`` of the image at ``path`` resized to ``size = (h, w)`` (PIL bilinear,
    antialiased when reducing), and the decoded source ``(height, width)``.

    A JPEG much larger than ``size`` is decoded at a reduced scale first (libjpeg's DCT scaling,
    ``Image.draft``): several times faster, and a smaller image than ``size`` is never produced.

    Raises:
        DataError: (a ValueError) the file cannot be decoded (named).
    """
    try:
        with Image.open(path) as img:
            source = (img.size[1], img.size[0])
            if source != tuple(size):
                img.draft("RGB", (size[1], size[0]))
            rgb = img.convert("RGB")
            if (rgb.size[1], rgb.size[0]) != tuple(size):
                rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(rgb)
    except Exception as err:
        raise _error(path, f"Could not read image {str(path)!r}: {err}",
                     "a JPEG (or other image) PIL can decode") from None
    return array, source


def _mask_resized(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    from attrpreserve.data import transforms as T
    from attrpreserve.data.voc import read_mask

    mask = read_mask(path)
    source = (int(mask.shape[0]), int(mask.shape[1]))
    if source != tuple(size):
        mask = T.apply_view_to_mask(mask, (0, 0, *source), False, size)
    return mask.numpy(), source


class ImageStore:
    """Images (and masks) of a list of files, decoded once and memory-mapped as uint8.

    Args:
        images: image files, in item order.
        masks: label-mask files (palette/grayscale PNGs, one per image), or ``None``.
        short_side: stored short side in pixels (never enlarged); ``0`` keeps the source size
            (decoding only: items equal those of the files).
        store_dir: parent folder; the store lives in ``store_dir/<name>-<key>/``.
        name: a readable prefix of the folder name (e.g. ``"voc-train"``).
        check: called for every image while building, with the decoded source sizes; raises for
            a wrong one (the VOC reader's size checks).
        threads: decoding threads while building (PIL releases the GIL); ``None``: up to 4.

    Raises:
        ValueError: ``short_side < 0``, an empty image list, or a mask list of another length.
        FileNotFoundError: a listed file is missing (named).
    """

    def __init__(
        self,
        images: Sequence[str | os.PathLike],
        masks: Sequence[str | os.PathLike] | None = None,
        short_side: int = 0,
        store_dir: str | os.PathLike = ".cache/images",
        name: str = "images",
        check: Check | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 0:
            raise ValueError(f"Expected argument `store_size` to be an int >= 0 (0: source size), but got "
                             f"{short_side!r}.")
        self.images = [Path(p) for p in images]
        self.masks = None if masks is None else [Path(p) for p in masks]
        if not self.images:
            raise ValueError("Expected argument `images` to list at least one file, but got none.")
        if self.masks is not None and len(self.masks) != len(self.images):
            raise ValueError(f"Expected one mask per image, but got {len(self.masks)} masks for "
                             f"{len(self.images)} images.")
        self.short_side, self.check = short_side, check
        self.threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        h = hashlib.sha256(repr((FORMAT_VERSION, short_side, self.masks is not None)).encode())
        for group in (self.images, self.masks or []):
            for path in group:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    raise FileNotFoundError(f"Image store: file {str(path)!r} not found.") from None
                h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        self.key = h.hexdigest()[:16]
        self.path = Path(store_dir) / f"{name}-{self.key}"
        self._mm: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mm"] = None  # each process (DataLoader worker) maps the files itself
        state["check"] = None
        return state

    # -- building ------------------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        done = self.path / "done.npy"
        return done.is_file() and (self.path / "meta.json").is_file() and bool(np.load(done).all())

    def _allocate(self) -> None:
        with ThreadPoolExecutor(self.threads) as pool:
            sources = list(pool.map(_image_header, self.images))
        shapes = np.array([stored_size(h, w, self.short_side) for h, w in sources], dtype=np.int64)
        offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
        np.cumsum(shapes[:, 0] * shapes[:, 1], out=offsets[1:])
        self.path.mkdir(parents=True, exist_ok=True)
        np.save(self.path / "shapes.npy", shapes)
        np.save(self.path / "offsets.npy", offsets)
        np.save(self.path / "source_shapes.npy", np.array(sources, dtype=np.int64))
        np.save(self.path / "done.npy", np.zeros(len(shapes), dtype=bool))
        total = max(1, int(offsets[-1]))
        np.lib.format.open_memmap(self.path / "images.npy", "w+", np.uint8, (3 * total,)).flush()
        if self.masks is not None:
            np.lib.format.open_memmap(self.path / "masks.npy", "w+", np.uint8, (total,)).flush()
        meta = {"format": FORMAT_VERSION, "short_side": self.short_side, "num_images": len(self),
                "masks": self.masks is not None, "first": str(self.images[0]), "last": str(self.images[-1])}
        (self.path / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the layout as written

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        size = tuple(int(v) for v in self._shapes[index])
        image, source = decode_resized(self.images[index], size)
        if tuple(self._sources[index]) != source:  # header and decoder disagree: a changed file
            raise _error(self.images[index], f"Image {str(self.images[index])!r} changed while the store was built",
                         "files left alone while building")
        mask = mask_source = None
        if self.masks is not None:
            mask, mask_source = _mask_resized(self.masks[index], size)
        if self.check is not None:
            self.check(index, source, mask_source)
        return image, mask

    def build(self, progress: bool = True, chunk: int = 64) -> ImageStore:
        """Decode every image not stored yet; resumable and idempotent. Returns ``self``.

        Raises:
            DataError: (a ValueError) a file cannot be decoded, or ``check`` rejects it.
        """
        if not (self.path / "meta.json").is_file():
            self._allocate()
        done = np.load(self.path / "done.npy")
        todo = np.flatnonzero(~done)
        if len(todo) == 0:
            return self
        self._shapes = np.load(self.path / "shapes.npy")
        self._sources = np.load(self.path / "source_shapes.npy")
        offsets = np.load(self.path / "offsets.npy")
        images = np.load(self.path / "images.npy", mmap_mode="r+")
        masks = np.load(self.path / "masks.npy", mmap_mode="r+") if self.masks is not None else None
        with progress_bar(progress, len(todo), f"image store {self.path.name}") as advance, \
                ThreadPoolExecutor(self.threads) as pool:
            for start in range(0, len(todo), chunk):
                rows = todo[start:start + chunk]
                for row, (image, mask) in zip(rows, pool.map(self._decode, rows)):
                    a, b = offsets[row], offsets[row + 1]
                    images[3 * a: 3 * b] = image.reshape(-1)
                    if masks is not None:
                        masks[a:b] = mask.reshape(-1)
                images.flush()
                if masks is not None:
                    masks.flush()
                done[rows] = True
                np.save(self.path / "done.npy", done)  # after the pixels: resume never trusts a half image
                advance(len(rows))
        self._mm = None
        return self

    # -- reading -------------------------------------------------------------------------
    def _open(self) -> dict[str, np.ndarray]:
        if self._mm is None:
            if not self.is_complete:
                raise ValueError(f"Image store {str(self.path)!r} is incomplete: call build() first.")
            # Copy-on-write maps: writable views (torch.from_numpy needs them), never written.
            mm = {"images": np.load(self.path / "images.npy", mmap_mode="c"),
                  "offsets": np.load(self.path / "offsets.npy"), "shapes": np.load(self.path / "shapes.npy"),
                  "source_shapes": np.load(self.path / "source_shapes.npy")}
            if self.masks is not None:
                mm["masks"] = np.load(self.path / "masks.npy", mmap_mode="c")
            self._mm = mm
        return self._mm

    def size(self, index: int) -> tuple[int, int]:
        """Stored ``(h, w)`` of image ``index``."""
        h, w = self._open()["shapes"][index]
        return int(h), int(w)

    def source_size(self, index: int) -> tuple[int, int]:
        """Decoded ``(height, width)`` of the source file of image ``index``."""
        h, w = self._open()["source_shapes"][index]
        return int(h), int(w)

    def image(self, index: int) -> Tensor:
        """uint8 ``[3, h, w]`` view of the stored image (channels-last strides, no copy)."""
        mm = self._open()
        a, b = mm["offsets"][index], mm["offsets"][index + 1]
        h, w = mm["shapes"][index]
        return torch.from_numpy(mm["images"][3 * a: 3 * b].reshape(h, w, 3)).permute(2, 0, 1)

    def mask(self, index: int) -> Tensor:
        """uint8 ``[h, w]`` view of the stored mask (values as in the file, 255 void kept).

        Raises:
            ValueError: the store holds no masks.
        """
        mm = self._open()
        if "masks" not in mm:
            raise ValueError(f"Image store {str(self.path)!r} holds no masks.")
        a, b = mm["offsets"][index], mm["offsets"][index + 1]
        h, w = mm["shapes"][index]
        return torch.from_numpy(mm["masks"][a:b].reshape(h, w))


def build_on_rank_zero(stores: Sequence[ImageStore], trainer: Any, progress: bool = True) -> None:
    """Build incomplete ``stores`` once: in this process without a trainer, else on global rank 0
    while the other ranks wait at a barrier (then every rank reads the same files)."""
    if trainer is None:
        for store in stores:
            store.build(progress=progress)
        return
    if trainer.is_global_zero:
        for store in stores:
            if not store.is_complete:
                store.build(progress=progress)
    trainer.strategy.barrier("image_store")


class progress_bar:
    """A rich progress bar (or nothing), as a context manager yielding ``advance(n)``."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress(transient=False)
        self.bar.start()
        task = self.bar.add_task(self.description, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()

