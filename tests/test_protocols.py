"""TorchRay's pointing game (exact), the energy pointing game, the centre baseline, per-class
tables and bootstrap intervals, against hand-worked numbers and a slow re-implementation of
TorchRay's definition written here from its documented rules."""

from __future__ import annotations

import csv
import math
import multiprocessing
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from attrpreserve.attribution.methods import METHODS, MethodSpec
from attrpreserve.data.boxes import Boxes, box_masks, pad_boxes, read_boxes
from attrpreserve.evaluate import evaluate, format_table
from attrpreserve.evaluation.bootstrap import bootstrap_ci
from attrpreserve.evaluation.records import PairRecords, pair_values
from attrpreserve.metrics import EnergyPointingGame, TorchRayPointingGame
from attrpreserve.metrics.functional import energy_pointing_game, torchray_pointing_game

K = 3


class Reader(nn.Module):
    """Logits from the image: pixel (channel K, row 0, column k) is the logit of class k;
    channels 0..K-1 hold the map the ``channel`` method returns for each class."""

    num_classes = K

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, K, 0, :K] * self.scale


def _channel(model, images, image_index, classes, *, layer=None):
    return images[image_index, classes]


@pytest.fixture(autouse=True)
def channel_method(monkeypatch):
    monkeypatch.setitem(METHODS, "channel", MethodSpec(_channel))


def _images(maps: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    b, _, h, w = maps.shape
    images = torch.zeros(b, K + 1, h, w)
    images[:, :K] = maps
    images[:, K, 0, :K] = logits
    return images


# -- a slow TorchRay, written from its rules ---------------------------------------------------------
def _torchray_voc_mask(objects: list[dict], class_id: int, height: int, width: int) -> torch.Tensor:
    """``voc_as_mask``: every box of the class, 1-based inclusive VOC coordinates."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for obj in objects:
        if obj["class"] == class_id:
            mask[obj["ymin"] - 1:obj["ymax"], obj["xmin"] - 1:obj["xmax"]] = True
    return mask


def _torchray_hit(mask: torch.Tensor, point: tuple[int, int], tolerance: int = 15) -> int:
    """``PointingGame.evaluate``: +1 when the acceptance disc meets the mask, else -1."""
    u, v = point
    rows = (torch.arange(mask.shape[0], dtype=torch.float32) - v) ** 2
    cols = (torch.arange(mask.shape[1], dtype=torch.float32) - u) ** 2
    accept = (rows[:, None] + cols[None, :]) < tolerance ** 2
    return 1 if bool((mask & accept).any()) else -1


def _torchray_accuracy(images: list[dict], difficult_subset: bool = False) -> float:
    """``PointingGameBenchmark`` over VOC-style labels, one image at a time, one class at a time."""
    hits, misses = [0.0] * K, [0.0] * K
    for image in images:
        objects, (h, w) = image["objects"], image["size"]
        for class_id in sorted({o["class"] for o in objects}):
            if all(o["difficult"] for o in objects if o["class"] == class_id):
                continue
            mask = _torchray_voc_mask(objects, class_id, h, w)
            if difficult_subset:
                others = {o["class"] for o in objects} - {class_id}
                if not (mask.float().mean() < 0.25 and others):
                    continue
            saliency = image["saliency"][class_id]
            flat = int(torch.argmax(saliency.flatten()))
            point = (flat % saliency.shape[1], flat // saliency.shape[1])
            if _torchray_hit(mask, point) > 0:
                hits[class_id] += 1
            else:
                misses[class_id] += 1
    return sum(hit / max(hit + miss, 1) for hit, miss in zip(hits, misses)) / K


def _random_images(n: int, seed: int, size: tuple[int, int] = (40, 48)) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = []
    for _ in range(n):
        objects = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            x0, y0 = (int(torch.randint(1, s - 4, (1,), generator=g)) for s in (w, h))
            x1 = int(torch.randint(x0, min(w, x0 + 20) + 1, (1,), generator=g))
            y1 = int(torch.randint(y0, min(h, y0 + 20) + 1, (1,), generator=g))
            objects.append({"class": int(torch.randint(0, K, (1,), generator=g)), "xmin": x0, "ymin": y0,
                            "xmax": x1, "ymax": y1, "difficult": bool(torch.rand(1, generator=g) < 0.2)})
        saliency = torch.rand(K, h, w, generator=g) ** 8  # a few sharp peaks, anywhere
        images.append({"objects": objects, "size": (h, w), "saliency": saliency})
    return images


def _box_batch(images: list[dict]) -> dict:
    rows = [pad_boxes(Boxes(torch.tensor([o["class"] for o in im["objects"]]),
                            torch.tensor([[o["xmin"] - 1, o["ymin"] - 1, o["xmax"] - 1, o["ymax"] - 1]
                                          for o in im["objects"]]).float(),
                            torch.tensor([o["difficult"] for o in im["objects"]]), None), 8) for im in images]
    saliency = torch.stack([im["saliency"] for im in images])
    labels = torch.zeros(len(images), K)
    for i, im in enumerate(images):
        labels[i, [o["class"] for o in im["objects"]]] = 1.0
    return {"image": _images(saliency, torch.ones(len(images), K)), "labels": labels, "boxes": torch.stack(rows)}


def _quiet_evaluate(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate(*args, progress=False, bootstrap=0, **kwargs)


def test_torchray_on_boxes_equals_a_slow_torchray():
    images = _random_images(24, seed=0)
    batches = [_box_batch(images[:10]), _box_batch(images[10:])]
    entry = _quiet_evaluate(Reader(), batches, "channel", "torchray", baselines=())["methods"]["channel"]
    # the protocol min-max normalises maps: the argmax is unchanged
    assert entry["point_acc"] == pytest.approx(_torchray_accuracy(images), abs=1e-6)
    assert entry["point_acc_difficult"] == pytest.approx(_torchray_accuracy(images, True), abs=1e-6)
    skipped = sum(len({o["class"] for o in im["objects"]}) for im in images) - entry["num_pairs"]
    assert entry["num_skipped"] == skipped > 0  # some classes have only difficult boxes
    assert 0 < entry["num_pairs_difficult"] < entry["num_pairs"]


def test_torchray_boxes_in_original_frame_resize_the_maps():
    """Boxes given in a 80x96 original frame: maps (40x48) are upsampled to it, the 15 px are original pixels."""
    images = _random_images(6, seed=1, size=(80, 96))
    batch = _box_batch(images)
    small = torch.nn.functional.interpolate(batch["image"][:, :K], size=(40, 48), mode="bilinear",
                                            align_corners=False)
    batch["image"] = _images(small, torch.ones(6, K))
    batch["box_size"] = torch.tensor([[80, 96]] * 6)
    upsampled = torch.nn.functional.interpolate(small, size=(80, 96), mode="bilinear", align_corners=False)
    for image, saliency in zip(images, upsampled):
        image["saliency"] = saliency  # what TorchRay's resize=image_size gives
    entry = _quiet_evaluate(Reader(), [batch], "channel", "torchray", baselines=())["methods"]["channel"]
    assert entry["point_acc"] == pytest.approx(_torchray_accuracy(images), abs=1e-6)


def test_torchray_hand_worked_tolerance_skips_and_class_mean():
    # 40x40 image; class 0: box rows/cols 20..29 (0-based); class 1: only a difficult box; class 2 absent
    boxes = torch.tensor([[[0, 20, 20, 29, 29, 0], [1, 0, 0, 5, 5, 1]]]).float()
    labels = torch.tensor([[1.0, 1.0, 0.0]])

    def run(row: int, col: int) -> dict:
        maps = torch.zeros(1, K, 40, 40)
        maps[0, 0, row, col] = 1.0
        batch = {"image": _images(maps, torch.ones(1, K)), "labels": labels, "boxes": boxes}
        with pytest.warns(UserWarning, match="count as 0"):
            return evaluate(Reader(), [batch], "channel", "torchray", progress=False, baselines=(),
                            bootstrap=0)["methods"]["channel"]

    # (20, 6): 14 px left of the box -> hit; class 0 at 1.0, classes 1 and 2 without pairs at 0
    hit = run(20, 6)
    assert hit["point_acc"] == pytest.approx(1 / 3) and (hit["num_pairs"], hit["num_skipped"]) == (1, 1)
    assert run(20, 5)["point_acc"] == 0.0  # exactly 15 px: TorchRay's test is strict
    assert run(9, 9)["point_acc"] == 0.0  # 11^2 + 11^2 = 242 > 225
    assert run(10, 9)["point_acc"] == pytest.approx(1 / 3)  # 10^2 + 11^2 = 221 < 225
    # the box covers 100/1600 < 1/4 of the image, and class 1 (difficult) is another class present
    assert hit["num_pairs_difficult"] == 1 and hit["point_acc_difficult"] == pytest.approx(1 / 3)


def test_torchray_on_masks_scores_every_present_class_with_the_class_mean():
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, 2:10, 2:10] = 1
    masks[0, 20:28, 20:28] = 2
    masks[1, 4:12, 16:24] = 2
    maps = torch.zeros(2, K, 32, 32)
    maps[0, 0, 5, 5] = maps[0, 1, 0, 31] = maps[1, 1, 14, 20] = 1.0
    batch = {"image": _images(maps, torch.tensor([[2.0, -1.0, 0], [-1.0, 2.0, 0]])), "mask": masks,
             "labels": torch.tensor([[1.0, 1.0, 0], [0, 1.0, 0]])}
    entry = _quiet_evaluate(Reader(), [batch], "channel", "torchray")["methods"]["channel"]
    assert entry["point_acc"] == pytest.approx((1 + 0.5 + 0) / 3)  # class 2 unseen counts 0, as TorchRay
    objects = torch.stack([masks[0] == 1, masks[0] == 2, masks[1] == 2])
    heat = torch.stack([maps[0, 0], maps[0, 1], maps[1, 1]])
    assert entry["point_acc"] == pytest.approx(float(torchray_pointing_game(heat, objects, torch.tensor([0, 1, 1]), K)))


def test_box_masks_match_a_loop_and_read_boxes(tmp_path):
    xml = ("<annotation><size><width>12</width><height>9</height></size>"
           "<object><name>bicycle</name><difficult>1</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>5</xmax>"
           "<ymax>9</ymax></bndbox></object>"
           "<object><name>aeroplane</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>12</xmax><ymax>2</ymax></bndbox>"
           "</object><object><name>bicycle</name><difficult>0</difficult><bndbox><xmin>4</xmin><ymin>1</ymin>"
           "<xmax>8</xmax><ymax>4</ymax></bndbox></object></annotation>")
    path = tmp_path / "a.xml"
    path.write_text(xml)
    found = read_boxes(path)
    assert found.classes.tolist() == [1, 0, 1] and found.difficult.tolist() == [True, False, False]
    assert found.size == (9, 12)
    boxes = pad_boxes(found, 5)[None]
    objects = [{"class": int(c), "xmin": int(b[0]) + 1, "ymin": int(b[1]) + 1, "xmax": int(b[2]) + 1,
                "ymax": int(b[3]) + 1} for c, b in zip(found.classes, found.boxes)]
    for class_id in (0, 1, 2):
        got = box_masks(boxes, torch.tensor([0]), torch.tensor([class_id]), (9, 12))[0]
        assert torch.equal(got, _torchray_voc_mask(objects, class_id, 9, 12)), class_id


def test_torchray_metric_and_functional_agree_and_reject_zero_tolerance():
    g = torch.Generator().manual_seed(3)
    heat, masks = torch.rand(10, 20, 20, generator=g), torch.rand(10, 20, 20, generator=g) < 0.05
    classes = torch.randint(0, 4, (10,), generator=g)
    metric = TorchRayPointingGame(num_classes=4)
    metric.update(heat[:4], masks[:4], classes[:4])
    metric.update(heat[4:], masks[4:], classes[4:])
    assert torch.equal(metric.compute(), torchray_pointing_game(heat, masks, classes, 4))
    with pytest.raises(ValueError, match="tolerance"):
        TorchRayPointingGame(num_classes=4, tolerance=0)


# -- energy pointing game -----------------------------------------------------------------------
def test_energy_pointing_hand_worked():
    heat = torch.tensor([[[2.0, -3.0], [1.0, 1.0]],    # positive energy 4, 3 on the object
                         [[-1.0, -1.0], [-2.0, 0.0]],   # no positive energy: 0
                         [[1.0, 1.0], [1.0, 1.0]]])     # empty object: skipped
    masks = torch.tensor([[[1, 1], [0, 1]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    assert energy_pointing_game(heat, masks) == pytest.approx(3 / 8)
    ignore = torch.tensor([[[0, 0], [0, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
    assert energy_pointing_game(heat, masks, ignore=ignore) == pytest.approx((2 / 3) / 2)
    metric = EnergyPointingGame()
    metric(heat[:1], masks[:1])
    metric(heat[1:], masks[1:])
    assert metric.compute() == pytest.approx(3 / 8) and int(metric.num_skipped) == 1
    # a map that is the object: all its energy inside
    assert energy_pointing_game(masks[:2].float(), masks[:2]) == 1.0


def test_energy_in_evaluate_on_boxes():
    maps = torch.zeros(1, K, 10, 10)
    maps[0, 0, 0:2, 0:2] = 1.0  # 4 units inside the box rows/cols 0..1
    maps[0, 0, 9, 9] = 4.0      # 4 units outside
    batch = {"image": _images(maps, torch.ones(1, K)), "labels": torch.tensor([[1.0, 0, 0]]),
             "boxes": torch.tensor([[[0, 0, 0, 1, 1, 0]]]).float()}
    entry = _quiet_evaluate(Reader(), [batch], "channel", "all")["methods"]["channel"]
    # the protocol min-max normalises: inside 4 * 0.25, outside 1.0
    assert entry["energy"] == pytest.approx(0.5) and entry["point_acc"] == 0.0


# -- centre baseline, per-class files, bootstrap --------------------------------------------------
def test_center_baseline_row_and_per_class_files(tmp_path):
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[0, 6:10, 6:10] = 1        # a centred object: the centre guess hits
    masks[1, 0:3, 0:3] = 2          # a corner object: it misses
    maps = torch.zeros(2, K, 16, 16)
    maps[0, 0, 7, 7] = maps[1, 1, 1, 1] = 1.0
    batch = {"image": _images(maps, torch.ones(2, K)), "mask": masks, "labels": torch.tensor([[1.0, 0, 0], [0, 1, 0]])}
    result = evaluate(Reader(), [batch], "channel", "all", progress=False, out=tmp_path,
                      class_names=["a", "b", "c"])
    center = result["baselines"]["center"]
    assert center["point_acc"] == 0.5 and center["num_pairs"] == 2 and math.isnan(center["cos"])
    assert result["methods"]["channel"]["point_acc"] == 1.0
    with (tmp_path / "results.csv").open() as handle:
        assert [(r["method"], r["row"]) for r in csv.DictReader(handle)] == [("channel", "method"),
                                                                              ("center", "baseline")]
    assert "center (baseline)" in format_table(result, plain=True)
    with (tmp_path / "per_class.csv").open() as handle:
        rows = {(r["method"], r["name"]): r for r in csv.DictReader(handle)}
    assert float(rows[("center", "a")]["point_acc"]) == 1.0 and float(rows[("center", "b")]["point_acc"]) == 0.0
    assert int(rows[("channel", "c")]["num_pairs"]) == 0 and rows[("channel", "c")]["point_acc"] == "nan"
    assert (tmp_path / "per_class.png").stat().st_size > 1000


def test_bootstrap_is_seeded_and_covers_the_estimate():
    g = torch.Generator().manual_seed(0)
    hits = (torch.rand(200, generator=g) < 0.7).float()
    first, again = bootstrap_ci(hits, seed=1), bootstrap_ci(hits, seed=1)
    assert first == again and first[0] < float(hits.mean()) < first[1]
    # the normal-approximation half-width of a proportion: the percentile interval is close to it
    p = float(hits.mean())
    assert (first[1] - first[0]) / 2 == pytest.approx(1.96 * math.sqrt(p * (1 - p) / 200), rel=0.2)
    # per-class statistic: a class absent from a resample counts 0, as TorchRay's mean
    classes = torch.tensor([0, 0, 1, 1])
    low, high = bootstrap_ci(torch.tensor([1.0, 1.0, 1.0, 1.0]), classes, num_classes=3, resamples=200)
    assert high == pytest.approx(2 / 3) and low <= 1 / 3 + 1e-9


def test_evaluate_reports_intervals():
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    masks[:, 4:12, 4:12] = 1
    maps = torch.zeros(4, K, 16, 16)
    maps[:2, 0, 8, 8] = 1.0   # two hits
    maps[2:, 0, 0, 0] = 1.0   # two misses
    batch = {"image": _images(maps, torch.ones(4, K)), "mask": masks, "labels": torch.tensor([[1.0, 0, 0]] * 4)}
    entry = evaluate(Reader(), [batch], "channel", "all", progress=False, seed=3)["methods"]["channel"]
    low, high = entry["point_acc_ci"]
    assert entry["point_acc"] == 0.5 and 0.0 <= low < 0.5 < high <= 1.0
    assert entry["auc_ci"][0] <= entry["auc"] <= entry["auc_ci"][1]


# -- two processes --------------------------------------------------------------------------------
N_DDP, SPLIT_DDP = 21, 8


def _ddp_values(lo: int, hi: int) -> dict:
    """The new metrics and the per-pair records on maps [lo, hi), in two updates."""
    g = torch.Generator().manual_seed(5)
    heat, masks = torch.randn(N_DDP, 12, 12, generator=g), torch.rand(N_DDP, 12, 12, generator=g) < 0.2
    classes = torch.randint(0, K, (N_DDP,), generator=g)
    pointing, energy = TorchRayPointingGame(num_classes=K, tolerance=3), EnergyPointingGame()
    records = PairRecords(["hit", "auc", "energy"])
    for a, b in ((lo, (lo + hi) // 2), ((lo + hi) // 2, hi)):
        pointing.update(heat[a:b], masks[a:b], classes[a:b])
        energy.update(heat[a:b], masks[a:b])
        records.update(**pair_values(heat[a:b], masks[a:b], None, 3))
    values = {k: v.reshape(-1) for k, v in records.compute().items()}
    low, high = bootstrap_ci(values["hit"], torch.arange(values["hit"].numel()) % K, K, resamples=200)
    return {"pointing": float(pointing.compute()), "energy": float(energy.compute()), "ci": [low, high],
            "hits": values["hit"].tolist(), "aucs": values["auc"].tolist()}


def _ddp_worker(rank: int, out_dir: str) -> None:
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    try:
        result = _ddp_values(*((0, SPLIT_DDP) if rank == 0 else (SPLIT_DDP, N_DDP)))
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods() or not torch.distributed.is_available(),
                    reason="needs fork and torch.distributed")
def test_two_process_gloo_matches_single_process(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    expected = _ddp_values(0, N_DDP)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["pointing"] == pytest.approx(expected["pointing"]) and got["energy"] == pytest.approx(
            expected["energy"])
        assert got["hits"] == expected["hits"] and got["ci"] == pytest.approx(expected["ci"])  # records gathered
        assert got["aucs"] == pytest.approx(expected["aucs"], nan_ok=True)
