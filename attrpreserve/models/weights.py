"""Load a local weights file into a model: torchvision state dicts or our checkpoints."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

# Prefixes under which our Lightning modules store a network, in order of preference:
# TeacherModule keeps `model.`, DistillationModule `student.` (the compressed network).
CHECKPOINT_PREFIXES = ("model.", "student.")


log = logging.getLogger(__name__)
# torchvision weight enums per (arch, batch_norm): the opt-in download names (`weights: IMAGENET1K_V1`).
TORCHVISION_WEIGHTS = {("vgg16", True): "VGG16_BN_Weights", ("vgg16", False): "VGG16_Weights"}


class CheckpointError(ValueError):
    """A weights file that cannot be read, or that holds another architecture."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file into a flat state dict (unwrapping Lightning checkpoints).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is truncated, not a torch file, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {str(path)!r}. Pass a local path; nothing is downloaded.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Lightning checkpoints may pickle hyper-parameters that weights_only refuses.
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, foreign format, ...
        raise CheckpointError(
            f"Could not read weights file {str(path)!r} ({type(err).__name__}: {err}). Expected a torch state-dict "
            "file or an attrpreserve Lightning checkpoint; the file may be truncated."
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"Weights file {str(path)!r} holds {type(obj).__name__}, expected a state dict (name -> tensor) "
            "or a Lightning checkpoint with a 'state_dict'."
        )
    if any(k.endswith("_orig") for k in obj):
        from attrpreserve.pruning.masks import fold_masks

        obj = fold_masks(obj)  # unstructured-pruning masks made permanent
    return obj


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The whole Lightning checkpoint dict of ``path`` (on the CPU).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {str(path)!r}.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"Could not read checkpoint {str(path)!r} ({type(err).__name__}): the file may be truncated. Expected a "
            "Lightning checkpoint written by `attrpreserve fit`."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict'): expected one written "
                              "by `attrpreserve fit`.")
    return ckpt


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256 (the content: a renamed copy matches).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as f:
        ...     _ = f.write(b"abc")
        >>> file_digest(f.name)
        'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def weights_source(path: str | os.PathLike) -> dict[str, str]:
    """``{"path": absolute path, "sha256": digest}``: which weights file a run read."""
    return {"path": str(Path(path).resolve()), "sha256": file_digest(path)}


def torchvision_weight_names(arch: str, batch_norm: bool = True) -> list[str]:
    """torchvision's weight names for ``arch`` (e.g. ``["IMAGENET1K_V1", "DEFAULT"]``), or ``[]``."""
    enum_name = TORCHVISION_WEIGHTS.get((arch, bool(batch_norm)))
    if enum_name is None:
        return []
    import torchvision.models

    return list(dict.fromkeys([*getattr(torchvision.models, enum_name).__members__, "DEFAULT"]))  # DEFAULT: an alias


def resolve_weights(weights: str | os.PathLike, arch: str, batch_norm: bool = True) -> Path:
    """The local file for ``weights``: a path as given, or for a torchvision weight name
    (``IMAGENET1K_V1``, ``DEFAULT``, ``VGG16_BN_Weights.IMAGENET1K_V1``) torchvision's file in
    torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded there first when absent:
    naming the weights is the user's opt-in to the download.

    Raises:
        FileNotFoundError: neither an existing file nor a weight name of ``arch``; the message
            lists the names.
    """
    path = Path(weights)
    if path.is_file():
        return path
    names = torchvision_weight_names(arch, batch_norm)
    name = str(weights).split(".")[-1]
    if names and name in names and (("." not in str(weights)) or str(weights).startswith(
            TORCHVISION_WEIGHTS[(arch, bool(batch_norm))] + ".")):
        import torch.hub
        import torchvision.models

        enum = getattr(torchvision.models, TORCHVISION_WEIGHTS[(arch, bool(batch_norm))])
        url = enum[name].url if name != "DEFAULT" else enum.DEFAULT.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if not cached.is_file():
            log.warning("downloading %s to %s (asked for by weights=%r)", url, cached, str(weights))
            cached.parent.mkdir(parents=True, exist_ok=True)
            prefix = torch.hub.HASH_REGEX.search(cached.name)
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=prefix.group(1) if prefix else None)
        return cached
    choices = f" or a torchvision weight name ({', '.join(names)}), which downloads once" if names else ""
    raise FileNotFoundError(
        f"Weights file not found: {str(weights)!r} (working directory {os.getcwd()!r}). Pass a local path{choices}."
    )


def _strip_prefix(state: dict[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], bool]:
    """The network's entries, and whether they came from one of our Lightning checkpoints."""
    if any(k in model_keys for k in state):
        return state, False
    for prefix in CHECKPOINT_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub, True
    return state, False


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model`` in place: the body strictly, the head only if it fits.

    The body (every key outside ``classifier.``) must match in names and shapes. From a foreign
    state dict the head is loaded only when all its keys match, so an ImageNet ``vgg16_bn`` file
    (1000-way, 3-layer head) gives a new 20-way head, as in the paper; from one of our
    checkpoints a head that does not fit is an error (another class count).

    Raises:
        FileNotFoundError: missing file.
        CheckpointError: unreadable file, or a body of another architecture or width.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    state, ours = _strip_prefix(state, set(own))
    body = {k: v for k, v in own.items() if not k.startswith("classifier.")}
    missing = [k for k in body if k not in state]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in body.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        config = getattr(model, "config", {})
        detail = []
        if wrong:
            detail.append("shape mismatch " + ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:3]))
        if missing:
            detail.append(f"{len(missing)} layer(s) missing, first {missing[0]!r}")
        raise CheckpointError(
            f"Weights file {str(path)!r} does not fit the model {config or type(model).__name__}: "
            + "; ".join(detail)
            + ". Check the architecture (`arch`), `width_divisor` and `batch_norm` the file was trained with."
        )
    head = {k: v for k, v in own.items() if k.startswith("classifier.")}
    head_fits = all(k in state and state[k].shape == v.shape for k, v in head.items())
    if ours and not head_fits:
        # Our own checkpoint with another head is a mistake (class count), not a new task.
        theirs = [tuple(state[k].shape) for k in head if k in state]
        raise CheckpointError(
            f"Weights file {str(path)!r} holds a head of shape(s) {theirs}, but the model expects "
            f"{[tuple(v.shape) for v in head.values()]}: check `num_classes` ({getattr(model, 'num_classes', '?')}) "
            "and `head_pool`."
        )
    new = {k: state[k] for k in body}
    if head_fits:
        new.update({k: state[k] for k in head})
    model.load_state_dict({**own, **new})
    return model
