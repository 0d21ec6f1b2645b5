"""Joint image/mask transforms (torchvision ``transforms.v2``) and a seeded, replayable view.

Training follows the paper: ``RandomResizedCrop(image_size)`` then ``RandomHorizontalFlip``;
evaluation resizes to ``(image_size, image_size)``. Masks travel as ``tv_tensors.Mask`` next to
a ``tv_tensors.Image`` through the same transform call, so v2 gives them the same crop and flip
and resizes them with nearest neighbour (class ids and the void value 255 survive unchanged).

A teacher-output cache needs to draw K views per image once, store them, and re-apply exactly
the same view later: :func:`sample_view` draws a view ``(box, flip)`` from a
``torch.Generator`` with the same draws, in the same order, as torchvision's
``RandomResizedCrop`` + ``RandomHorizontalFlip`` (so one seed gives the same view either way;
``tests/test_data_voc.py`` checks it), and :func:`apply_view` / :func:`apply_view_to_mask`
apply a stored view deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

Box = tuple[int, int, int, int]  # (top, left, height, width) in source pixels

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _size_pair(size: int | Sequence[int]) -> list[int]:
    pair = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"Expected argument `size` to be a positive int or (height, width), but got {size!r}.")
    return pair


def check_range(name: str, value: Sequence[float], low: float, high: float | None) -> tuple[float, float]:
    """``value`` as a pair ``(min, max)`` with ``low < min <= max <= high``, else ValueError naming it."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"Expected argument `{name}` to be a pair (min, max), but got {value!r}.") from None
    if not (low < a <= b and (high is None or b <= high)):
        upper = "" if high is None else f" <= {high}"
        raise ValueError(f"Expected argument `{name}` to satisfy {low} < min <= max{upper}, but got {value!r}.")
    return a, b


def sample_view(
    generator: torch.Generator | None,
    height: int,
    width: int,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    flip_p: float = 0.5,
) -> tuple[Box, bool]:
    """Draw a crop box and a horizontal flip, distributed as ``RandomResizedCrop`` + flip.

    The draws replicate torchvision v2's ``RandomResizedCrop.make_params`` (up to 10 tries of
    area fraction ~ U(scale) and log aspect ratio ~ U(log ratio), then a central fallback) and
    ``RandomHorizontalFlip`` (flip iff ``rand < flip_p``), in the same order, but from
    ``generator``: a ``torch.Generator`` seeded with ``s`` yields the view that
    ``torch.manual_seed(s)`` would give the torchvision pair.

    Args:
        generator: the random source; ``None`` uses torch's global generator (as torchvision does).
        height, width: source image size in pixels.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        flip_p: probability of a horizontal flip.

    Returns:
        ``((top, left, height, width), flip)``, plain Python ints and bool.

    Raises:
        ValueError: non-positive image size, or a bad ``scale``/``ratio``/``flip_p``.

    Example:
        >>> sample_view(torch.Generator().manual_seed(0), 64, 64, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        ((0, 0, 64, 64), True)
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"Expected a positive image size, but got height={height!r}, width={width!r}.")
    scale = check_range("scale", scale, 0.0, 1.0)
    ratio = check_range("ratio", ratio, 0.0, None)
    if not 0.0 <= flip_p <= 1.0:
        raise ValueError(f"Expected argument `flip_p` to be in [0, 1], but got {flip_p!r}.")
    height, width = int(height), int(width)
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(
            torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
        ).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            break
    else:  # central fallback, as torchvision
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=generator).item() < flip_p)
    return (top, left, h, w), flip


def apply_view(image: Tensor, box: Sequence[int], flip: bool, size: int | Sequence[int]) -> Tensor:
    """Crop ``box`` out of ``image``, resize it to ``size`` (bilinear, antialiased), then flip.

    Deterministic: the same ``(box, flip)`` always gives the same tensor, so a stored view can be
    replayed. A ``tv_tensors.Mask`` input is resized with nearest neighbour instead (v2 dispatch);
    for a plain mask tensor use :func:`apply_view_to_mask`.

    Args:
        image: ``[..., C, H, W]`` float or uint8 tensor (normalised or not).
        box: ``(top, left, height, width)`` in ``image``'s pixels.
        flip: flip horizontally after the crop.
        size: output size, an int (square) or ``(height, width)``.

    Returns:
        ``[..., C, *size]`` tensor of ``image``'s dtype (plain tensor unless a tv_tensor came in).

    Raises:
        ValueError: a malformed ``box`` or ``size``.

    Example:
        >>> x = torch.arange(16.0).view(1, 4, 4)
        >>> apply_view(x, (0, 2, 2, 2), flip=True, size=2)
        tensor([[[3., 2.],
                 [7., 6.]]])
    """
    return _apply(image, box, flip, size, InterpolationMode.BILINEAR)


def crop_view(image: Tensor, box: Sequence[int]) -> Tensor:
    """The crop of :func:`apply_view` alone, as a contiguous tensor of ``image``'s dtype:
    ``apply_view(crop_view(x, box), (0, 0, h, w), flip, size)`` equals ``apply_view(x, box, flip,
    size)``, so the resize can run later, elsewhere (on the model's device).

    Raises:
        ValueError: a malformed ``box``.

    Example:
        >>> x = torch.arange(16.0).view(1, 4, 4)
        >>> torch.equal(apply_view(crop_view(x, (1, 2, 2, 2)), (0, 0, 2, 2), True, 3), apply_view(x, (1, 2, 2, 2), True, 3))
        True
    """
    top, left, height, width = _box(box)
    return F.crop(image.as_subclass(torch.Tensor), top, left, height, width).contiguous()


def apply_view_to_mask(mask: Tensor, box: Sequence[int], flip: bool, size: int | Sequence[int]) -> Tensor:
    """:func:`apply_view` for a label mask: nearest-neighbour resize, values (255 included) kept.

    Args:
        mask: ``[..., H, W]`` integer tensor (class ids, 255 void).
        box, flip, size: as in :func:`apply_view`.

    Returns:
        ``[..., *size]`` tensor of ``mask``'s dtype.

    Raises:
        ValueError: a malformed ``box`` or ``size``.

    Example:
        >>> m = torch.tensor([[0, 1], [255, 2]], dtype=torch.uint8)
        >>> apply_view_to_mask(m, (0, 0, 2, 2), flip=True, size=4)
        tensor([[  1,   1,   0,   0],
                [  1,   1,   0,   0],
                [  2,   2, 255, 255],
                [  2,   2, 255, 255]], dtype=torch.uint8)
    """
    wrapped = tv_tensors.Mask(mask)
    out = _apply(wrapped, box, flip, size, InterpolationMode.NEAREST)
    return out.as_subclass(torch.Tensor)


def _box(box: Sequence[int]) -> tuple[int, int, int, int]:
    try:
        top, left, height, width = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"Expected argument `box` to be (top, left, height, width), but got {box!r}.") from None
    if height < 1 or width < 1:
        raise ValueError(f"Expected argument `box` to have a positive height and width, but got {tuple(box)!r}.")
    return top, left, height, width


def _apply(inpt: Tensor, box: Sequence[int], flip: bool, size: int | Sequence[int],
           interpolation: InterpolationMode) -> Tensor:
    top, left, height, width = _box(box)
    out = F.resized_crop(inpt, top, left, height, width, size=_size_pair(size),
                         interpolation=interpolation, antialias=True)
    return F.horizontal_flip(out) if flip else out


def train_transform(
    image_size: int, scale: Sequence[float] = DEFAULT_SCALE, ratio: Sequence[float] = DEFAULT_RATIO
) -> v2.Transform:
    """The paper's training augmentation: ``RandomResizedCrop(image_size)`` + horizontal flip.

    Call it as ``image, mask = t(tv_tensors.Image(x), tv_tensors.Mask(m))`` (or with the image
    alone): image and mask get the same crop and flip, the mask by nearest neighbour.

    Raises:
        ValueError: ``image_size < 1`` or a bad ``scale``/``ratio``.

    Example:
        >>> t = train_transform(32)
        >>> image, mask = t(tv_tensors.Image(torch.zeros(3, 48, 40)), tv_tensors.Mask(torch.zeros(48, 40)))
        >>> tuple(image.shape), tuple(mask.shape)
        ((3, 32, 32), (32, 32))
    """
    size = _size_pair(image_size)
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=check_range("scale", scale, 0.0, 1.0),
                             ratio=check_range("ratio", ratio, 0.0, None), antialias=True),
        v2.RandomHorizontalFlip(),
    ])


def eval_transform(image_size: int) -> v2.Transform:
    """Evaluation: resize to ``(image_size, image_size)`` (bilinear image, nearest mask).

    Raises:
        ValueError: ``image_size < 1``.

    Example:
        >>> image, mask = eval_transform(16)(tv_tensors.Image(torch.zeros(3, 48, 40)),
        ...                                  tv_tensors.Mask(torch.zeros(48, 40)))
        >>> tuple(image.shape), tuple(mask.shape)
        ((3, 16, 16), (16, 16))
    """
    return v2.Resize(_size_pair(image_size), antialias=True)


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (0..255) or float (0..1) ``[..., 3, H, W]`` image -> float32 ``(x - mean) / std``.

    Example:
        >>> normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3).flatten()
        tensor([1., 1., 1.])
    """
    x = image.as_subclass(torch.Tensor)
    x = x.float() / 255.0 if not x.is_floating_point() else x.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize` for display: ``x * std + mean`` (values about in [0, 1]).

    Args:
        images: ``[..., 3, H, W]`` normalised images.
        mean, std: per-channel statistics used to normalise them.

    Example:
        >>> denormalize(torch.ones(2, 3, 1, 1), (0.5,) * 3, (0.5,) * 3).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return images * s + m
