"""Render attribution panels: image | map overlays | mask, as arrays and PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.colors  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from attrpreserve.attribution.methods import minmax  # noqa: E402
from attrpreserve.data.common import IGNORE_INDEX  # noqa: E402



def _normalize(heatmap: Tensor) -> Tensor:
    return minmax(heatmap[None])[0]


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5) -> np.ndarray:
    """``[3,H,W]`` image in [0, 1] with a jet-coloured, min-max-normalised ``[H,W]`` heatmap.

    Example:
        >>> overlay(torch.zeros(3, 2, 2), torch.eye(2)).shape
        (2, 2, 3)
    """
    heat = _normalize(heatmap.detach().float().cpu()).numpy()
    colour = plt.get_cmap("jet")(heat)[..., :3]
    base = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return (1 - alpha) * base + alpha * colour


def mask_image(mask: Tensor) -> np.ndarray:
    """Class mask ``[H,W]`` (0 background, c+1 classes, 255 void) as an RGB array."""
    m = mask.detach().cpu().numpy().astype(np.int64)
    colours = plt.get_cmap("tab10")(np.arange(10))[:, :3]
    out = np.zeros((*m.shape, 3))
    for value in np.unique(m):
        if value == 0:
            continue
        out[m == value] = (1.0, 1.0, 1.0) if value == IGNORE_INDEX else colours[(value - 1) % 10]
    return out


def panel_figure(
    images: Tensor,
    maps: dict[str, Tensor],
    masks: Tensor | None = None,
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    colorbar: bool = True,
) -> plt.Figure:
    """One row per image: the image, one overlay per entry of ``maps`` (name -> ``[N,H,W]``),
    then the mask; a colour bar for the maps and a legend of the mask's classes.

    Args:
        images: ``[N,3,H,W]`` in [0, 1] (denormalised).
        maps: column title -> heatmaps ``[N,H,W]`` (resized to the image when smaller).
        masks: optional ``[N,H,W]`` class masks.
        titles: optional row labels (e.g. the target class names).
        class_names: names of the mask values 1..K, for the mask legend.
        colorbar: draw the maps' colour scale (each map is min-max normalised, so 0 is its
            minimum and 1 its maximum).

    Example:
        >>> fig = panel_figure(torch.rand(2, 3, 8, 8), {"teacher": torch.rand(2, 8, 8)},
        ...                    torch.ones(2, 8, 8, dtype=torch.long), ["cat", "dog"], ["cat", "dog"])
        >>> [ax.get_title() for ax in fig.axes[:3]], fig.axes[0].get_ylabel()
        (['image', 'teacher', 'mask'], 'cat')
        >>> plt.close(fig)
    """
    n = images.shape[0]
    columns = 1 + len(maps) + (masks is not None)
    fig, axes = plt.subplots(n, columns, figsize=(1.8 * columns + (0.9 if colorbar else 0), 1.8 * n + 0.5),
                             squeeze=False)
    size = images.shape[-2:]
    for row in range(n):
        cells = [("image", images[row].permute(1, 2, 0).clamp(0, 1).cpu().numpy())]
        for name, heat in maps.items():
            h = heat[row].detach().float()
            if h.shape[-2:] != size:
                h = torch.nn.functional.interpolate(h[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            cells.append((name, overlay(images[row], h)))
        if masks is not None:
            cells.append(("mask", mask_image(masks[row])))
        for col, (name, array) in enumerate(cells):
            ax = axes[row][col]
            ax.imshow(array)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        if titles is not None:
            axes[row][0].set_ylabel(titles[row], fontsize=8)
    fig.tight_layout(rect=(0, 0.06 if masks is not None and class_names else 0, 0.9 if colorbar else 1, 1))
    if colorbar:
        scale = fig.add_axes((0.92, 0.15, 0.02, 0.7))
        bar = fig.colorbar(plt.cm.ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(0, 1)), cax=scale)
        bar.set_label("attribution (min-max per map)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if masks is not None and class_names:
        present = sorted({int(v) for v in torch.unique(masks.cpu()).tolist()} - {0, IGNORE_INDEX})
        colours = plt.get_cmap("tab10")(np.arange(10))[:, :3]
        handles = [matplotlib.patches.Patch(color=colours[(v - 1) % 10], label=class_names[v - 1])
                   for v in present if v - 1 < len(class_names)]
        handles.append(matplotlib.patches.Patch(facecolor="white", edgecolor="black", label="void"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    return fig


def figure_to_array(fig: plt.Figure) -> np.ndarray:
    """RGB ``uint8`` array of a rendered figure (for loggers)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_panels(path: str | os.PathLike, images: Tensor, maps: dict[str, Tensor], masks: Tensor | None = None,
                titles: Sequence[str] | None = None, class_names: Sequence[str] | None = None) -> None:
    """Write :func:`panel_figure` to ``path`` (PNG)."""
    fig = panel_figure(images, maps, masks, titles, class_names)
    fig.savefig(path, dpi=110)
    plt.close(fig)
