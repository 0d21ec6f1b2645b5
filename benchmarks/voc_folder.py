"""A generated VOC-layout folder for the throughput benchmarks (nothing is downloaded).

``make_voc_folder(root, n, min_side, max_side)`` writes ``n`` JPEGs of random sizes (each side
uniform in ``[min_side, max_side]``), each a textured background with 1-3 objects drawn as boxes,
their XMLs (classes, boxes, ``<size>``), palette segmentation masks (class c + 1 in the box, a
void ring of 255 around it) and the split files ``Main/train.txt`` (every image),
``Main/val.txt`` and ``Segmentation/val.txt`` (the last quarter). Image ``i`` is drawn from the
generator seeded by ``(seed, i)``, so the folder is the same whatever the number of ``workers``
that write it (processes; a GPU host's cores make 2,048 images at 300-500 px a matter of seconds).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from attrpreserve.data import VOC_CLASSES
from attrpreserve.data.voc import voc_palette

VERSION = 2  # of the drawing: a folder written by another version is rewritten


def make_voc_folder(root: str | Path, n: int = 400, min_side: int = 112, max_side: int = 500, seed: int = 0,
                    workers: int | None = None) -> Path:
    """Write the folder (``root/VOC2012``) unless it is already complete; returns the VOC2012 path.

    ``workers``: processes writing images (default: the CPU cores, at most 16; 1 writes in this process).
    """
    voc = Path(root) / "VOC2012"
    done = voc / f".complete-v{VERSION}-{n}-{min_side}-{max_side}-{seed}"
    if done.is_file():
        return voc
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    workers = workers or min(16, os.cpu_count() or 1)
    jobs = [(voc, i, min_side, max_side, seed) for i in range(n)]
    if workers > 1 and n > 1:
        with ProcessPoolExecutor(workers) as pool:
            ids = list(pool.map(_write_image, *zip(*jobs), chunksize=max(1, n // (4 * workers))))
    else:
        ids = [_write_image(*job) for job in jobs]
    held_out = ids[3 * n // 4:]
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join(held_out) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(held_out) + "\n")
    done.write_text("ok\n")
    return voc


def _write_image(voc: Path, i: int, min_side: int, max_side: int, seed: int) -> str:
    """Image ``i``'s JPEG, mask and XML; returns its id."""
    rng = np.random.default_rng((seed, i))
    image_id = f"2099_{i:06d}"
    height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    image = base + 30 * np.sin(xx[..., None] / rng.uniform(5, 30) + rng.uniform(0, 6, size=3)) \
        + 20 * np.cos(yy[..., None] / rng.uniform(5, 30)) + rng.normal(0, 8, size=(height, width, 3))
    mask = np.zeros((height, width), dtype=np.uint8)
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, len(VOC_CLASSES)))
        h, w = int(rng.integers(height // 5, height // 2)), int(rng.integers(width // 5, width // 2))
        top, left = int(rng.integers(1, height - h - 1)), int(rng.integers(1, width - w - 1))
        image[top:top + h, left:left + w] = rng.uniform(0, 255, size=3) + rng.normal(0, 15, size=(h, w, 3))
        mask[max(top - 1, 0):top + h + 1, max(left - 1, 0):left + w + 1] = 255
        mask[top:top + h, left:left + w] = cls + 1
        parts.append(f"<object><name>{VOC_CLASSES[cls]}</name><difficult>0</difficult><bndbox>"
                     f"<xmin>{left + 1}</xmin><ymin>{top + 1}</ymin><xmax>{left + w}</xmax>"
                     f"<ymax>{top + h}</ymax></bndbox></object>")
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
    png = Image.fromarray(mask, mode="P")
    png.putpalette(voc_palette())
    png.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "Annotations" / f"{image_id}.xml").write_text(
        f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width><height>{height}"
        f"</height><depth>3</depth></size>{''.join(parts)}</annotation>\n")
    return image_id
