"""Evaluation protocol: predictive metrics and attribution-map localisation on the localisation split.

``evaluate(model, datamodule_or_dataloader, methods=("gradcam",), protocol="paper")`` runs the
model over batches with masks (or boxes) and reports per-class VOC mAP (``map``), per-image AP
(``map_image``, the reference code's "mAP") and F1 (logit > 0), then, for every attribution
method and every (image, class) pair the protocol keeps:

- **point accuracy** (:class:`~attrpreserve.metrics.PointingGame`, or
  :class:`~attrpreserve.metrics.TorchRayPointingGame` under ``"torchray"``): the map's maximum
  lies on that class's object (within ``tolerance`` pixels), with a bootstrap 95% interval
  ``point_acc_ci`` over the scored pairs;
- **AUC** (:class:`~attrpreserve.metrics.MaskAUROC`): pixel ROC-AUC of the min-max-normalised
  map against the object (maps whose object covers every valid pixel have no AUC), with ``auc_ci``;
- **energy** (:class:`~attrpreserve.metrics.EnergyPointingGame`): the share of the map's
  positive energy on the object (zero-energy maps score 0);
- with a ``teacher``: **cos** and **l2** (:class:`~attrpreserve.metrics.MapSimilarity`) between
  the student's map and the teacher's map of the same pair and method.

The same pairs are scored by the model-free ``baselines`` (default ``center``, a centred
Gaussian: what guessing the image centre scores), reported under ``result["baselines"]`` and as
extra rows of every table. Per-class numbers go to ``result["per_class"]`` and, with ``out``, to
``per_class.csv``/``per_class.png``.

Ground truth: a batch holds ``mask`` ``[B, H, W]`` (0 background, c+1 class c, 255 void; the
object of class c is its pixels) or ``boxes`` ``[B, M, 6]`` with an optional ``box_size``
(see :mod:`attrpreserve.data.boxes`; the object is the union of the class's boxes, and maps are
resized to ``box_size``, the original image, before scoring, as TorchRay does).

Protocols (:data:`PROTOCOLS`):

- ``"paper"`` (Park et al.): only the classes the model predicts positive (logit > 0) are scored,
  exact-pixel pointing game (tolerance 0), point accuracy over all scored maps;
- ``"torchray"``: TorchRay's pointing game (``torchray/benchmark/pointing_game.py``) exactly:
  every ground-truth class is scored except, with boxes, a class whose boxes are all
  ``difficult``; a hit when some object pixel lies strictly within 15 px of the map's first
  maximum; point accuracy is the per-class accuracy averaged over **all** K classes (a class
  without a scored pair counts 0, with a warning). ``point_acc_difficult`` is the same accuracy
  on the EBP difficult subset: pairs whose object covers less than 1/4 of the frame in an image
  holding another class (TorchRay reads these flags from a file made from the VOC 2007 boxes;
  here they come from each batch's ground truth). On masks the 15 px are pixels of the evaluated
  image; TorchRay's are pixels of the original image (give boxes with ``box_size`` for that);
- ``"all"``: every ground-truth class is scored, exact-pixel pointing game, point accuracy over
  all maps. Unlike ``"paper"``, every model is scored on the same pairs, so a model that predicts
  fewer positives is not scored on only its easiest pairs: the fair way to compare students.

Where ``"paper"`` differs from ``"torchray"``: it scores only predicted-positive classes, needs the
maximum on the object itself (0 px), averages over maps instead of classes, and ignores the
``difficult`` flags (masks carry none).

Void mask pixels (255) are left out of every metric (they can neither be the maximum nor count
as object or background) unless ``count_void_as_background=True``, which counts them as
background like the reference scripts. Unlike the reference, each class of an image is scored
against its own mask only, and maps come in batches (one forward per batch for the layer
methods). With a teacher, the pairs are those the *student* keeps under the protocol.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from attrpreserve.attribution.methods import (
    attribute, attribution_scope, check_method, get_method, predict_and_attribute,
)
from attrpreserve.data.common import IGNORE_INDEX
from attrpreserve.evaluation.pairs import ground_truth, pair_targets, present_classes
from attrpreserve.evaluation.per_class import per_class_rows, write_per_class
from attrpreserve.evaluation.records import PairRecords
from attrpreserve.evaluation.faithfulness import faithfulness_aucs
from attrpreserve.evaluation.rows import (
    RowMetrics, compute_quietly, faithfulness_metrics, faithfulness_values, records_of,
)
from attrpreserve.metrics import classification_metrics


@dataclass(frozen=True)
class Protocol:
    """Which pairs are scored and how the pointing game counts.

    Attributes:
        predicted_only: score only ground-truth classes with logit > 0.
        tolerance: pointing-game radius in pixels.
        average: ``"micro"`` (over maps) or ``"class"`` (per class, then the mean over all classes,
            as TorchRay; also reports the difficult subset).
    """

    predicted_only: bool
    tolerance: float
    average: str


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(predicted_only=True, tolerance=0, average="micro"),
    "torchray": Protocol(predicted_only=False, tolerance=15, average="class"),
    "all": Protocol(predicted_only=False, tolerance=0, average="micro"),
}

METHOD_FIELDS = ("auc", "point_acc", "cos", "l2", "num_pairs", "num_skipped")
EXTRA_FIELDS = ("energy", "point_acc_difficult", "num_pairs_difficult", "deletion", "insertion")
CI_FIELDS = ("point_acc_ci", "auc_ci")
CSV_FIELDS = ("method", "map", "map_image", "f1", "auc", "point_acc", "cos", "l2", "num_pairs", "num_skipped",
              "num_images", "protocol", "row", *EXTRA_FIELDS, "point_acc_ci_low", "point_acc_ci_high", "auc_ci_low",
              "auc_ci_high")


def evaluate(
    model: nn.Module,
    data: pl.LightningDataModule | Iterable[Mapping[str, Any]],
    methods: str | Sequence[str] = ("gradcam",),
    protocol: str = "paper",
    teacher: nn.Module | None = None,
    count_void_as_background: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
    logger: Any = None,
    out: str | os.PathLike | None = None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    teacher_method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    max_images: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    baselines: str | Sequence[str] = ("center",),
    bootstrap: int = 1000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    faithfulness: bool = False,
    faithfulness_steps: int = 20,
) -> dict[str, Any]:
    """Predictive metrics and, per attribution method, localisation (and teacher agreement) scores.

    Under an initialised ``torch.distributed`` process group (``torchrun``, or after a DDP fit)
    each process scores every ``world_size``-th batch and the metrics and counters are summed
    over the processes: every rank returns the single-process result, rank 0 alone logs and
    writes ``out``.

    Args:
        model: classifier ``[B, 3, H, W] -> [B, K]`` logits (e.g. ``module.student``); used in eval
            mode, its train/eval and ``requires_grad`` state restored afterwards.
        data: a LightningDataModule (its ``test_dataloader()``, the localisation split, after
            ``setup("test")``) or any iterable of batch dicts with ``image`` ``[B, 3, H, W]``,
            ``labels`` ``[B, K]`` multi-hot and ``mask`` ``[B, H, W]`` (0 background, c+1 class c,
            255 void).
        methods: names of :mod:`attrpreserve.attribution.methods` (e.g. ``"gradcam"``, ``"lrp"``).
        protocol: ``"paper"``, ``"torchray"`` or ``"all"`` (see the module docstring).
        teacher: optional reference model; adds ``cos``/``l2`` between student and teacher maps
            (pairs: those the student keeps under the protocol).
        count_void_as_background: count void pixels as background (the reference scripts' way)
            instead of leaving them out.
        max_batches: stop after this many batches (``None``: all).
        progress: show a rich progress bar (on stderr).
        logger: optional Lightning logger; a ``WandbLogger`` gets a ``wandb.Table`` via
            ``log_table``, any other logger the numbers via ``log_metrics`` (key ``evaluate/...``).
        out: optional folder; ``results.json`` and ``results.csv`` are written there.
        method_kwargs: per method, extra arguments of :func:`~attrpreserve.attribution.attribute`
            (``layer`` and knobs), e.g. ``{"ig": {"n_steps": 16}, "lrp": {"composite": "alpha1_beta0"}}``.
        teacher_method_kwargs: the same for the teacher's maps (default: ``method_kwargs``); a
            teacher of another architecture needs its own ``layer`` here.
        max_images: score the first ``max_images`` images only (the last batch is cut).
        provenance: extra entries for ``result["provenance"]`` (the CLI adds the checkpoint, its
            hash and the data root), which already names the networks, each method's layer and
            knobs, the protocol, the image count and the package versions.
        baselines: model-free methods scored on the same pairs as extra rows (default
            ``("center",)``; ``()`` for none); names already in ``methods`` are not repeated.
        bootstrap: bootstrap resamples for ``point_acc_ci``/``auc_ci`` (0: no intervals, nan).
        seed: seed of the bootstrap resampling.
        class_names: K names for ``per_class`` (default: ``data.class_names`` where it exists).
        faithfulness: also run deletion and insertion curves (:mod:`attrpreserve.evaluation.faithfulness`)
            on every scored pair, for every row and for a random pixel order (seeded by ``seed``
            and the batch): ``deletion``/``insertion`` AUCs per row and ``result["faithfulness"]``.
            Costs ``2 * (faithfulness_steps + 1)`` forwards per pair and row.
        faithfulness_steps: stages of the curves.

    Returns:
        ``{"metrics": {"map", "map_image", "f1", "num_images"}, "methods": {name: {"auc",
        "point_acc", "cos", "l2", "num_pairs", "num_skipped", "energy", "point_acc_difficult",
        "num_pairs_difficult", "point_acc_ci", "auc_ci", "deletion", "insertion"}},
        "baselines": {name: {...same}}, "faithfulness": {"steps", "baseline", "random": {"deletion",
        "insertion"}} (with ``faithfulness=True``),
        "per_class": [{"method", "class", "name", "num_pairs", "point_acc", "auc", "energy"}],
        "protocol": {...}, "provenance": {...}}``: fractions in [0, 1], intervals as ``[low, high]``;
        ``cos``/``l2`` are nan without a teacher (and for baselines); ``point_acc_difficult`` is
        nan outside ``"torchray"``; ``deletion``/``insertion`` are nan without ``faithfulness``;
        ``num_skipped`` counts the ground-truth pairs the protocol left out (difficult-only classes
        included). When no pair is scored (e.g. the model predicts nothing
        positive under ``"paper"``) the localisation numbers are nan, ``num_pairs`` is 0 and a
        warning says why.

    Raises:
        ValueError: before any model work: unknown protocol or method, a knob a method does not
            take, a bad argument, a batch without ``image``/``labels``/``mask`` or with shapes
            that do not fit (also checked for every later batch), or a model whose number of
            outputs differs from the number of labels.

    Example:
        >>> from attrpreserve.data import SyntheticDataModule
        >>> from attrpreserve.models import vgg_small
        >>> dm = SyntheticDataModule(num_classes=3, num_test=4, batch_size=4, num_train=1, num_val=1)
        >>> torch.manual_seed(0) is not None
        True
        >>> result = evaluate(vgg_small(num_classes=3, width_divisor=8), dm, protocol="torchray", progress=False)
        >>> sorted(result["methods"]["gradcam"])[:6], result["metrics"]["num_images"]
        (['auc', 'auc_ci', 'cos', 'deletion', 'energy', 'insertion'], 4)
        >>> list(result["baselines"]), len(result["per_class"])
        (['center'], 6)
    """
    rules = _check_arguments(model, methods, protocol, teacher, count_void_as_background, max_batches, progress,
                             method_kwargs)
    names = [methods] if isinstance(methods, str) else list(methods)
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"Expected argument `max_images` to be a positive int or None, but got {max_images!r}.")
    if teacher_method_kwargs is not None:
        _check_arguments(model, names, protocol, teacher, count_void_as_background, None, progress,
                         teacher_method_kwargs)
    extra = _check_extras(baselines, bootstrap, seed, class_names, names)
    for arg, value in (("faithfulness", faithfulness),):
        if not isinstance(value, bool):
            raise ValueError(f"Expected argument `{arg}` to be a bool, but got {value!r}.")
    if isinstance(faithfulness_steps, bool) or not isinstance(faithfulness_steps, int) or faithfulness_steps < 1:
        raise ValueError(f"Expected argument `faithfulness_steps` to be a positive int, but got "
                         f"{faithfulness_steps!r}.")
    kwargs = {name: dict((method_kwargs or {}).get(name, {})) for name in names}
    teacher_kwargs = {name: dict((teacher_method_kwargs or method_kwargs or {}).get(name, {})) for name in names}
    world, rank = _world()
    batches, total = _batches(data, max_batches, world, rank, max_images)
    first = next(batches, None)
    if first is None:
        raise ValueError("Expected argument `data` to yield at least one batch, but it yielded none.")
    num_classes = _check_batch(first, 0, None)
    for name, net in (("model", model), ("teacher", teacher)):
        declared = getattr(net, "num_classes", None) if net is not None else None
        if isinstance(declared, int) and declared != num_classes:
            raise ValueError(f"Expected argument `{name}` to have {num_classes} outputs (the batches' labels), "
                             f"but it declares num_classes={declared}.")

    device = _device(model)
    known = class_names or getattr(data, "class_names", None)
    predictive = classification_metrics(
        num_classes, class_names=list(known) if known is not None and len(known) == num_classes else None).to(device)
    # maps come min-max normalised from `attribute` and targets are built here: no re-validation needed
    rows = {n: RowMetrics(rules.tolerance, rules.average, num_classes, device, teacher is not None and n in names,
                          faithfulness) for n in [*names, *extra]}
    faith = _Faithfulness(faithfulness_steps, seed, device) if faithfulness else None
    # batch/pair: each pair's place in the single-process order; processes gather their records
    # rank by rank, and the bootstrap must resample the same sequence however many there were.
    pairs = PairRecords(("classes", "difficult", "batch", "pair")).to(device)
    counts = {"images": 0, "pairs": 0, "skipped": 0}

    with attribution_scope(model, teacher), _Progress(progress and rank == 0, total) as advance:
        for index, batch in enumerate(chain([first], batches)):
            if index:
                _check_batch(batch, index, num_classes)
            _score_batch(model, teacher, batch, names, extra, kwargs, teacher_kwargs, rules, count_void_as_background,
                         device, predictive, rows, pairs, counts, faith, index * world + rank)
            advance()

    if world > 1:  # the metrics sync themselves at compute(); the counters are ours to sum
        counts = _sum_over_ranks(counts, device)
    result = _results(names, extra, protocol, rules, count_void_as_background, predictive, rows, pairs, counts,
                      bootstrap, seed)
    if faith is not None:
        result["faithfulness"] = {"steps": faithfulness_steps, "baseline": 0.0,
                                  "random": faithfulness_values(faith.random)}
    result["per_class"] = _per_class(rows, pairs, num_classes, class_names or getattr(data, "class_names", None))
    result["provenance"] = {**_provenance(model, teacher, names, kwargs, teacher_kwargs, max_images, max_batches),
                            "baselines": list(extra), "bootstrap": {"resamples": bootstrap, "seed": seed,
                                                                    "level": 0.95},
                            **dict(provenance or {})}
    if rank == 0:
        if logger is not None:
            log_results(logger, result)
        if out is not None:
            save_results(result, out)
            write_per_class(result["per_class"], out)
    return result


def _world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _sum_over_ranks(counts: dict[str, int], device: torch.device) -> dict[str, int]:
    on = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([counts[k] for k in counts], dtype=torch.int64, device=on)
    torch.distributed.all_reduce(values)
    return dict(zip(counts, values.tolist()))


# -- per batch --------------------------------------------------------------------------------------
def _score_batch(
    model: nn.Module, teacher: nn.Module | None, batch: Mapping[str, Any], names: list[str], extra: list[str],
    kwargs: dict[str, dict[str, Any]], teacher_kwargs: dict[str, dict[str, Any]], rules: Protocol,
    count_void: bool, device: torch.device, predictive: Any, rows: dict[str, RowMetrics], pairs: PairRecords,
    counts: dict[str, int], faith: _Faithfulness | None = None, batch_index: int = 0,
) -> None:
    images = batch["image"].to(device)
    labels = batch["labels"].to(device)
    num_classes = labels.shape[1]
    scorable, present = (t.to(device) for t in ground_truth(batch, num_classes))

    def select(logits: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(logits.shape) != (images.shape[0], num_classes):
            raise ValueError(f"Expected the model output to be [B={images.shape[0]}, K={num_classes}] logits, "
                             f"but got {tuple(logits.shape)}.")
        keep = scorable & (logits > 0) if rules.predicted_only else scorable
        return keep.nonzero(as_tuple=True)

    # the first layer method (Grad-CAM, SWA, EWA) shares its forward with the prediction
    shared = next((name for name in names if get_method(name).layer_rule is not None), None)
    maps_by_method: dict[str, Tensor] = {}
    if shared is not None:
        logits, image_index, classes, maps = predict_and_attribute(
            model, images, select, shared, normalize=True, **kwargs[shared])
        maps_by_method[shared] = maps
    else:
        with torch.no_grad():
            logits = model(images)
        image_index, classes = select(logits)
    predictive.update(logits.sigmoid(), labels.round().int())
    counts["images"] += images.shape[0]
    counts["pairs"] += image_index.numel()
    counts["skipped"] += int(present.sum()) - image_index.numel()
    if image_index.numel() == 0:
        return
    targets = pair_targets(batch, image_index, classes, present, count_void, device)
    pairs.update(classes=classes, difficult=targets.difficult,
                 batch=torch.full_like(classes, batch_index, dtype=torch.float32),
                 pair=torch.arange(classes.numel(), device=classes.device, dtype=torch.float32))
    for name in [*names, *extra]:
        maps = maps_by_method.pop(name, None)
        if maps is None:
            maps = attribute(model, images, classes, name, image_index=image_index, normalize=True,
                             **kwargs.get(name, {}))
        teacher_maps = None
        if teacher is not None and name in names:
            teacher_device = _device(teacher)
            teacher_maps = attribute(teacher, images.to(teacher_device), classes.to(teacher_device), name,
                                     image_index=image_index.to(teacher_device), normalize=True,
                                     **teacher_kwargs[name])
        rows[name].update(maps, targets, classes, teacher_maps)
        if faith is not None:
            rows[name].update_faithfulness(faith.aucs(model, images[image_index], classes, maps))
    if faith is not None:
        faith.update_random(model, images[image_index], classes, batch_index)


class _Faithfulness:
    """Deletion/insertion settings and the random-order reference (synced means)."""

    def __init__(self, steps: int, seed: int, device: torch.device) -> None:
        self.steps, self.seed = steps, seed
        self.random = faithfulness_metrics(device)

    def aucs(self, model: nn.Module, images: Tensor, classes: Tensor, maps: Tensor,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return faithfulness_aucs(model, images, classes, maps, self.steps, generator=generator)

    def update_random(self, model: nn.Module, images: Tensor, classes: Tensor, batch_index: int) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index)
        for mode, values in self.aucs(model, images, classes, images[:, 0], generator).items():
            self.random[mode].update(values)


# -- results --------------------------------------------------------------------------------------
def _single_process_order(batch: Tensor, pair: Tensor) -> Tensor:
    """The permutation that sorts gathered records by (batch, pair): one process's order.

    Example:
        >>> _single_process_order(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
        tensor([2, 0, 1])
    """
    key = batch.double() * (float(pair.max()) + 1 if pair.numel() else 1.0) + pair.double()
    return torch.argsort(key, stable=True)


def _results(
    names: list[str], extra: list[str], protocol: str, rules: Protocol, count_void: bool, predictive: Any,
    rows: dict[str, RowMetrics], pairs: PairRecords, counts: dict[str, int], resamples: int, seed: int,
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty metrics: one warning of ours replaces theirs
        warnings.filterwarnings("default", message=".*no positive target.*")  # but say which classes mAP skips
        scores = predictive.compute()
    metrics: dict[str, Any] = {key: float(value) for key, value in scores.items()}
    metrics["num_images"] = counts["images"]
    scored = counts["pairs"] > 0
    shared = records_of(pairs)
    order = _single_process_order(shared["batch"], shared["pair"])
    classes, difficult = shared["classes"].long()[order], shared["difficult"].bool()[order]
    entries: dict[str, dict[str, Any]] = {}
    for name in [*names, *extra]:
        entry = rows[name].entry(scored, classes, difficult, resamples, seed, order)
        entry["num_pairs"], entry["num_skipped"] = counts["pairs"], counts["skipped"]
        entries[name] = entry
    if not scored:
        why = (f"the model predicted none of the {counts['skipped']} ground-truth (image, class) pairs positive "
               "(logit > 0)" if rules.predicted_only else "the masks hold no class pixels")
        warnings.warn(
            f"evaluate: no (image, class) pair was scored under protocol {protocol!r}: {why}. The localisation "
            f"metrics (auc, point_acc, cos, l2) of {', '.join(names)} are nan and num_pairs is 0.",
            UserWarning, stacklevel=3,
        )
    elif rules.average == "class":
        unseen = sorted(set(range(next(iter(rows.values())).num_classes)) - set(classes.tolist()))
        if unseen:
            warnings.warn(f"evaluate: protocol {protocol!r} averages point accuracy over all classes as TorchRay "
                          f"does; classes {unseen} had no scored pair and count as 0.", UserWarning, stacklevel=3)
    return {
        "metrics": metrics,
        "methods": {name: entries[name] for name in names},
        "baselines": {name: entries[name] for name in extra},
        "protocol": {"name": protocol, "predicted_only": rules.predicted_only, "tolerance": rules.tolerance,
                     "average": rules.average, "count_void_as_background": count_void},
    }


def _per_class(rows: dict[str, RowMetrics], pairs: PairRecords, num_classes: int,
               class_names: Sequence[str] | None) -> list[dict[str, Any]]:
    classes = records_of(pairs)["classes"]
    names = list(class_names) if class_names is not None and len(class_names) == num_classes else None
    return per_class_rows({name: row.record_values() for name, row in rows.items()}, classes, num_classes, names)


def package_versions() -> dict[str, str]:
    """Versions of the packages whose code computes the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("attrpreserve", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "captum", "zennit"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _network_provenance(net: nn.Module | None) -> dict[str, Any] | None:
    if net is None:
        return None
    from attrpreserve.models import model_spec

    return {"class": type(net).__name__, "spec": model_spec(net),
            "parameters": sum(p.numel() for p in net.parameters())}


def _method_settings(name: str, knobs: Mapping[str, Any], net: nn.Module | None) -> dict[str, Any]:
    """The method's knobs, with its layer as given and as the dotted module name it resolved to."""
    from attrpreserve.models.layers import resolve_layer_name

    settings = {k: v for k, v in knobs.items()}
    rule = get_method(name).layer_rule
    if rule is not None and net is not None:
        given = knobs.get("layer") or rule.default_layer or getattr(net, "default_attribution_layer", None)
        settings["layer"] = given
        try:
            settings["layer_module"] = resolve_layer_name(net, given)
        except ValueError:
            settings["layer_module"] = None
    return settings


def _provenance(model: nn.Module, teacher: nn.Module | None, names: list[str], kwargs: dict[str, dict[str, Any]],
                teacher_kwargs: dict[str, dict[str, Any]], max_images: int | None,
                max_batches: int | None) -> dict[str, Any]:
    return {
        "model": _network_provenance(model),
        "teacher": _network_provenance(teacher),
        "methods": {name: _method_settings(name, kwargs[name], model) for name in names},
        "teacher_methods": ({name: _method_settings(name, teacher_kwargs[name], teacher) for name in names}
                            if teacher is not None else None),
        "max_images": max_images,
        "max_batches": max_batches,
        "versions": package_versions(),
    }


def _cell(value: Any, scale: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _rows(result: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(name, kind, entry)`` of every row: the methods, then the model-free baselines."""
    return ([(n, "method", e) for n, e in result["methods"].items()]
            + [(n, "baseline", e) for n, e in result.get("baselines", {}).items()])


def _interval(entry: Mapping[str, Any], key: str) -> str:
    low, high = entry.get(key) or (None, None)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "-"
    return f"{100 * low:.1f}-{100 * high:.1f}"


def _table_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "mAP", "F1", "AUC", "point acc", "cos", "l2", "pairs", "energy", "point acc 95% CI"]
    metrics = result["metrics"]
    rows = []
    for name, kind, entry in _rows(result):
        rows.append([
            name if kind == "method" else f"{name} (baseline)", _cell(metrics.get("map"), 100, 2),
            _cell(metrics.get("f1"), 100, 2), _cell(entry["auc"], 100, 2), _cell(entry["point_acc"], 100, 2),
            _cell(entry["cos"], 1, 3), _cell(entry["l2"], 1, 2), str(entry["num_pairs"]),
            _cell(entry.get("energy"), 100, 2), _interval(entry, "point_acc_ci"),
        ])
    if "faithfulness" in result:  # deletion (lower is better) and insertion AUCs, random order last
        header += ["deletion", "insertion"]
        for row, (_, _, entry) in zip(rows, _rows(result)):
            row += [_cell(entry.get("deletion"), 100, 2), _cell(entry.get("insertion"), 100, 2)]
        random = result["faithfulness"]["random"]
        rows.append(["random order", *["" for _ in header[1:-2]], _cell(random["deletion"], 100, 2),
                     _cell(random["insertion"], 100, 2)])
    return header, rows


def format_table(result: Mapping[str, Any], plain: bool = False) -> str:
    """The result as a table: one row per method, then one per model-free baseline (``center``:
    what guessing the image centre scores); mAP (per-class VOC), F1, AUC and point accuracy in
    percent, cos and l2 to the teacher ("-" where not computed), scored pairs, energy share in
    percent and the bootstrap 95% interval of the point accuracy.

    Args:
        result: what :func:`evaluate` returned (or :func:`load_results` read).
        plain: plain aligned text instead of a rich table.

    Example:
        >>> nan = float("nan")
        >>> result = {"metrics": {"map": 0.9, "f1": 0.75}, "protocol": {"name": "paper"},
        ...           "methods": {"gradcam": {"auc": 0.8812, "point_acc": 0.8, "cos": nan, "l2": nan,
        ...                                   "num_pairs": 10, "num_skipped": 2, "energy": 0.5,
        ...                                   "point_acc_ci": [0.6, 0.95]}},
        ...           "baselines": {"center": {"auc": 0.7, "point_acc": 0.5, "cos": nan, "l2": nan,
        ...                                    "num_pairs": 10, "num_skipped": 2}}}
        >>> print(format_table(result, plain=True))
        method             mAP    F1     AUC    point acc  cos  l2  pairs  energy  point acc 95% CI
        gradcam            90.00  75.00  88.12  80.00      -    -   10     50.00   60.0-95.0
        center (baseline)  90.00  75.00  70.00  50.00      -    -   10     -       -
    """
    header, rows = _table_rows(result)
    if plain:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        return "\n".join(lines)
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    protocol = result.get("protocol", {}).get("name", "?")
    table = Table(title=f"attribution evaluation (protocol {protocol})")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    buffer = StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue().rstrip("\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def save_results(result: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.json`` (the whole result, nan as ``null``) and ``results.csv`` (one row per
    method, then per baseline, column ``row``; nan as ``nan``) into ``out_dir`` (created).

    Returns:
        The two paths.

    Example:
        >>> import tempfile
        >>> result = {"metrics": {"map": 0.5, "map_image": 0.6, "f1": 0.4, "num_images": 2},
        ...           "protocol": {"name": "paper"},
        ...           "methods": {"gradcam": {"auc": 0.75, "point_acc": 1.0, "cos": float("nan"),
        ...                                   "l2": float("nan"), "num_pairs": 3, "num_skipped": 1}}}
        >>> folder = tempfile.mkdtemp()
        >>> json_path, csv_path = save_results(result, folder)
        >>> json_path.name, csv_path.read_text().splitlines()[1]
        ('results.json', 'gradcam,0.5,0.6,0.4,0.75,1.0,nan,nan,3,1,2,paper,method,,,,,,,,,')
        >>> math.isnan(load_results(folder)["methods"]["gradcam"]["cos"])
        True
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / "results.json", folder / "results.csv"
    json_path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
    metrics = result["metrics"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for name, kind, entry in _rows(result):
            low_high = [v for key in CI_FIELDS for v in (entry.get(key) or (None, None))]
            writer.writerow([
                name, metrics.get("map"), metrics.get("map_image"), metrics.get("f1"),
                *(entry[key] for key in METHOD_FIELDS), metrics.get("num_images"),
                result.get("protocol", {}).get("name", ""), kind, *(entry.get(key) for key in EXTRA_FIELDS),
                *low_high,
            ])
    return json_path, csv_path


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``results.json`` written by :func:`save_results` (``null`` numbers back to nan).

    Raises:
        FileNotFoundError: no ``results.json`` in ``out_dir``.
    """
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"Expected {str(path)!r} (written by save_results), but it does not exist.")
    result = json.loads(path.read_text())
    nan = float("nan")
    for key in ("map", "map_image", "f1"):
        if key in result["metrics"] and result["metrics"][key] is None:
            result["metrics"][key] = nan
    for entry in [*result["methods"].values(), *result.get("baselines", {}).values()]:
        for key in ("auc", "point_acc", "cos", "l2", "energy", "point_acc_difficult", "deletion", "insertion"):
            if key in entry and entry[key] is None:
                entry[key] = nan
        for key in CI_FIELDS:
            if key in entry:
                entry[key] = [nan if v is None else v for v in entry[key]]
    random = result.get("faithfulness", {}).get("random", {})
    for key in random:
        random[key] = nan if random[key] is None else random[key]
    for row in result.get("per_class", []):
        for key in ("point_acc", "auc", "energy"):
            if row.get(key, 0) is None:
                row[key] = nan
    return result


def log_results(logger: Any, result: Mapping[str, Any], key: str = "evaluate") -> None:
    """Send the result to a Lightning logger: a ``wandb.Table`` for a ``WandbLogger``
    (``logger.log_table``), otherwise the finite numbers through ``log_metrics`` as
    ``{key}/map``, ``{key}/{method}/auc``, ...

    Raises:
        ValueError: ``logger`` has neither ``log_table`` (WandbLogger) nor ``log_metrics``.
    """
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        header, _ = _table_rows(result)
        metrics = result["metrics"]
        data = [[name if kind == "method" else f"{name} (baseline)", metrics.get("map"), metrics.get("f1"),
                 entry["auc"], entry["point_acc"], entry["cos"], entry["l2"], entry["num_pairs"], entry.get("energy"),
                 _interval(entry, "point_acc_ci")] for name, kind, entry in _rows(result)]
        if "faithfulness" in result:
            random = result["faithfulness"]["random"]
            data = [row + [entry.get("deletion"), entry.get("insertion")] for row, (_, _, entry)
                    in zip(data, _rows(result))]
            data.append(["random order", *[None] * (len(header) - 3), random["deletion"], random["insertion"]])
        logger.log_table(key=f"{key}/table", columns=header, data=[[_jsonable(v) for v in row] for row in data])
        return
    if not callable(getattr(logger, "log_metrics", None)):
        raise ValueError(f"Expected argument `logger` to be a Lightning logger (log_metrics), but got "
                         f"{type(logger).__name__}.")
    logger.log_metrics(summary_values(result, key))
    if callable(getattr(logger, "save", None)):
        logger.save()


def summary_values(result: Mapping[str, Any], key: str = "evaluate") -> dict[str, float]:
    """The finite numbers of a result as flat ``{key}/map``, ``{key}/{method}/point_acc``, ... entries
    (baselines as ``{key}/{baseline}/...``; intervals as ``..._ci_low``/``..._ci_high``).

    Example:
        >>> summary_values({"metrics": {"map": 0.5, "num_images": 4},
        ...                 "methods": {"gradcam": {"auc": 0.9, "cos": float("nan"), "num_pairs": 3}}})
        {'evaluate/map': 0.5, 'evaluate/num_images': 4.0, 'evaluate/gradcam/auc': 0.9, 'evaluate/gradcam/num_pairs': 3.0}
    """
    flat: dict[str, Any] = {f"{key}/{name}": value for name, value in result["metrics"].items()}
    for method, _, entry in _rows(result):
        for name, value in entry.items():
            if isinstance(value, (list, tuple)) and len(value) == 2:
                flat.update({f"{key}/{method}/{name}_low": value[0], f"{key}/{method}/{name}_high": value[1]})
            else:
                flat[f"{key}/{method}/{name}"] = value
    return {k: float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))}


def log_summary(logger: Any, result: Mapping[str, Any], key: str = "evaluate") -> None:
    """Put the result's numbers into a ``WandbLogger`` run's summary (what a dashboard's run table
    shows and filters on) and its protocol and provenance into the run's config."""
    experiment = logger.experiment
    experiment.summary.update(summary_values(result, key))
    experiment.config.update({key.replace("/", "_"): _jsonable({"protocol": result.get("protocol"),
                                                                 "provenance": result.get("provenance")})},
                             allow_val_change=True)


# -- helpers --------------------------------------------------------------------------------------
def _check_arguments(
    model: Any, methods: Any, protocol: Any, teacher: Any, count_void: Any, max_batches: Any, progress: Any,
    method_kwargs: Any,
) -> Protocol:
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ValueError(f"Expected argument `teacher` to be a torch.nn.Module or None, but got "
                         f"{type(teacher).__name__}.")
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"Expected argument `protocol` to be one of {sorted(PROTOCOLS)}, but got {protocol!r}.")
    names = [methods] if isinstance(methods, str) else methods
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"Expected argument `methods` to be a method name or a non-empty sequence of names, "
                         f"but got {methods!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Expected argument `methods` to name each method once, but got {list(names)}.")
    if method_kwargs is not None and not isinstance(method_kwargs, Mapping):
        raise ValueError(f"Expected argument `method_kwargs` to be a mapping method -> dict, but got "
                         f"{type(method_kwargs).__name__}.")
    extra = sorted(set(method_kwargs or {}) - set(names))
    if extra:
        raise ValueError(f"Expected the keys of `method_kwargs` to be among the evaluated methods {list(names)}, "
                         f"but got {extra}.")
    for name in names:
        knobs = dict((method_kwargs or {}).get(name, {}))
        reserved = sorted(set(knobs) & {"image_index", "normalize", "classes", "images", "model", "method"})
        if reserved:
            raise ValueError(f"Expected `method_kwargs[{name!r}]` to hold `layer`, `relu` or method knobs, but got "
                             f"{reserved} (set by evaluate).")
        knobs.pop("layer", None)
        knobs.pop("relu", None)
        check_method(name, knobs)
    for arg, value in (("count_void_as_background", count_void), ("progress", progress)):
        if not isinstance(value, bool):
            raise ValueError(f"Expected argument `{arg}` to be a bool, but got {value!r}.")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"Expected argument `max_batches` to be a positive int or None, but got {max_batches!r}.")
    return PROTOCOLS[protocol]


def _check_extras(baselines: Any, bootstrap: Any, seed: Any, class_names: Any, names: list[str]) -> list[str]:
    """Check the baseline rows, bootstrap settings and class names; the baselines not already methods."""
    listed = [baselines] if isinstance(baselines, str) else baselines
    if not isinstance(listed, Sequence) or not all(isinstance(n, str) for n in listed):
        raise ValueError(f"Expected argument `baselines` to be a method name or a sequence of names, but got "
                         f"{baselines!r}.")
    for name in listed:
        check_method(name)
    for arg, value, low in (("bootstrap", bootstrap, 0), ("seed", seed, None)):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise ValueError(f"Expected argument `{arg}` to be an int{' >= 0' if low is not None else ''}, but got "
                             f"{value!r}.")
    if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
        raise ValueError(f"Expected argument `class_names` to be a sequence of names or None, but got "
                         f"{class_names!r}.")
    return [name for name in dict.fromkeys(listed) if name not in names]


def _first_images(batches: Iterator[Mapping[str, Any]], limit: int) -> Iterator[Mapping[str, Any]]:
    """The batches up to ``limit`` images in all, the last one cut."""
    left = limit
    for batch in batches:
        if left <= 0:
            return
        size = batch["image"].shape[0] if isinstance(batch, Mapping) and isinstance(batch.get("image"), Tensor) else 0
        if size > left:
            batch = {k: v[:left] if isinstance(v, Tensor) and v.ndim and v.shape[0] == size else v
                     for k, v in batch.items()}
            size = left
        left -= size
        yield batch


def _batches(data: Any, max_batches: int | None, world: int = 1, rank: int = 0,
             max_images: int | None = None) -> tuple[Iterator[Mapping[str, Any]], int | None]:
    """The batches this process scores: every ``world``-th from ``rank`` under a process group
    (each batch once, so the synced metrics equal a single process's), the first ``max_batches``
    (and ``max_images`` images) of the whole stream at most."""
    if isinstance(data, pl.LightningDataModule):
        data.setup("test")
        data = data.test_dataloader()
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise ValueError(f"Expected argument `data` to be a LightningDataModule or an iterable of batch dicts, "
                         f"but got {type(data).__name__}.")
    try:
        total: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    iterator = iter(data)
    if max_batches is not None:
        iterator = (batch for _, batch in zip(range(max_batches), iterator))
    if max_images is not None:
        batch_size = getattr(data, "batch_size", None)
        if total is not None and isinstance(batch_size, int) and batch_size > 0:
            total = min(total, math.ceil(max_images / batch_size))
        iterator = _first_images(iterator, max_images)
    if world > 1:
        if total is not None and total < world:
            raise ValueError(f"Expected argument `data` to yield at least one batch per process, but it yields "
                             f"{total} batches for {world} processes: lower `batch_size` or the process count.")
        iterator = islice(iterator, rank, None, world)
        total = None if total is None else len(range(rank, total, world))
    return iterator, total


def _check_batch(batch: Any, index: int, num_classes: int | None) -> int:
    """Validate one batch (keys, shapes, dtypes, mask or box values); returns its number of classes."""
    where = f"batch {index}"
    if not isinstance(batch, Mapping) or not {"image", "labels"} <= set(batch) or not {"mask", "boxes"} & set(batch):
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"Expected {where} to be a dict with 'image', 'labels' and 'mask' (or 'boxes'), but got "
                         f"{keys}.")
    truth = "boxes" if "boxes" in batch else "mask"
    images, labels = batch["image"], batch["labels"]
    if not all(isinstance(t, Tensor) for t in (images, labels, batch[truth])):
        raise ValueError(f"Expected {where}: 'image', 'labels' and '{truth}' to be tensors.")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"Expected {where}: 'image' to be a float [B, 3, H, W] tensor, but got shape "
                         f"{tuple(images.shape)} dtype {images.dtype}.")
    b = images.shape[0]
    if labels.ndim != 2 or labels.shape[0] != b:
        raise ValueError(f"Expected {where}: 'labels' to be [B={b}, K], but got {tuple(labels.shape)}.")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"Expected {where}: 'labels' to have K={num_classes} columns like the first batch, but got "
                         f"{labels.shape[1]}.")
    (_check_boxes if truth == "boxes" else _check_masks)(batch, where, labels.shape[1])
    return labels.shape[1]


def _check_masks(batch: Mapping[str, Any], where: str, k: int) -> None:
    b, _, h, w = batch["image"].shape
    masks = batch["mask"]
    if tuple(masks.shape) != (b, h, w):
        raise ValueError(f"Expected {where}: 'mask' to be [B, H, W] = {(b, h, w)} like 'image', but got "
                         f"{tuple(masks.shape)}.")
    if masks.is_floating_point() or masks.dtype == torch.bool:
        raise ValueError(f"Expected {where}: 'mask' to be an integer tensor, but got dtype {masks.dtype}.")
    bad = (masks < 0) | ((masks > k) & (masks != IGNORE_INDEX))
    if bool(bad.any()):
        raise ValueError(f"Expected {where}: 'mask' values in 0..{k} or {IGNORE_INDEX} (void), but got "
                         f"{int(masks[bad].flatten()[0])}.")


def _check_boxes(batch: Mapping[str, Any], where: str, k: int) -> None:
    b = batch["image"].shape[0]
    boxes, sizes = batch["boxes"], batch.get("box_size")
    if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 6 or not boxes.is_floating_point():
        raise ValueError(f"Expected {where}: 'boxes' to be a float [B={b}, M, 6] tensor (class, x0, y0, x1, y1, "
                         f"difficult), but got shape {tuple(boxes.shape)} dtype {boxes.dtype}.")
    cls = boxes[..., 0]
    if bool(((cls != cls.round()) | (cls < -1) | (cls >= k)).any()):
        raise ValueError(f"Expected {where}: box classes in 0..{k - 1} or -1 (padding), but got "
                         f"{sorted(set(cls.flatten().tolist()))[:10]}.")
    if sizes is not None and (not isinstance(sizes, Tensor) or tuple(sizes.shape) != (b, 2)
                              or sizes.is_floating_point() or bool((sizes < 1).any())):
        raise ValueError(f"Expected {where}: 'box_size' to be a positive integer [B={b}, 2] tensor (height, width), "
                         f"but got {sizes!r:.80}.")


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class _Progress:
    """Context manager yielding an ``advance()`` callable: a rich progress bar on a terminal's
    stderr, plain lines about every tenth of the way when stderr is a file or pipe (a bar there
    prints nothing until the end), or nothing."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def _plain(self) -> Any:
        import sys
        import time

        started, done = time.perf_counter(), [0]
        step = max(1, (self.total or 10) // 10)

        def advance() -> None:
            done[0] += 1
            if done[0] % step == 0 or done[0] == self.total:
                of = f"/{self.total}" if self.total else ""
                print(f"evaluate: {done[0]}{of} batches, {time.perf_counter() - started:.1f} s", file=sys.stderr,
                      flush=True)

        return advance

    def __enter__(self) -> Any:
        import sys

        if not self.enabled:
            return lambda: None
        if not sys.stderr.isatty():
            return self._plain()
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        task = self.bar.add_task("evaluate", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


__all__ = [
    "PROTOCOLS", "Protocol", "evaluate", "format_table", "load_results", "log_results", "log_summary",
    "package_versions", "present_classes", "save_results", "summary_values",
]
