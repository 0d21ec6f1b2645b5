"""Evaluation protocol on hand-built cases whose pointing-game and AUC numbers are known."""

from __future__ import annotations

import csv
import gc
import math
import warnings

import psutil
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

from attrpreserve.attribution.methods import METHODS, MethodSpec
from attrpreserve.data import SyntheticDataModule
from attrpreserve.evaluate import evaluate, format_table, load_results, present_classes, save_results
from attrpreserve.models import vgg_small

VOID = 255


class Oracle(nn.Module):
    """Reads its logits from the image: pixel (channel 2, row 0, column k) is the logit of class k.
    Channels 0 and 1 carry the maps the ``channel`` method returns for classes 0 and 1."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x[:, 2, 0, :2] * self.scale


def _channel(model, images, image_index, classes, *, layer=None):
    return images[image_index, classes]


@pytest.fixture(autouse=True)
def channel_method(monkeypatch):
    monkeypatch.setitem(METHODS, "channel", MethodSpec(_channel))


def _batch(masks: list[torch.Tensor], maps: list[torch.Tensor], logits: list[list[float]]) -> dict:
    """Images whose channels 0/1 are the class maps and whose channel 2 holds the logits."""
    masks_t = torch.stack(masks).long()
    b, h, w = masks_t.shape
    images = torch.zeros(b, 3, h, w)
    images[:, :2] = torch.stack(maps)
    images[:, 2, 0, :2] = torch.tensor(logits)
    return {"image": images, "labels": present_classes(masks_t, 2).float(), "mask": masks_t,
            "index": torch.arange(b)}


def _box(mask: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], value: int) -> torch.Tensor:
    mask[rows[0]:rows[1], cols[0]:cols[1]] = value
    return mask


def _mask_case() -> list[torch.Tensor]:
    """Three 16x16 masks: two objects with a void ring around the first; one object; one object."""
    m0 = torch.zeros(16, 16, dtype=torch.long)
    _box(m0, (0, 7), (0, 7), VOID)
    _box(m0, (1, 6), (1, 6), 1)
    _box(m0, (9, 15), (8, 15), 2)
    m1 = _box(torch.zeros(16, 16, dtype=torch.long), (3, 12), (4, 9), 2)
    m2 = _box(torch.zeros(16, 16, dtype=torch.long), (10, 16), (0, 5), 1)
    return [m0, m1, m2]


def _indicator(mask: torch.Tensor) -> torch.Tensor:
    return torch.stack([(mask == 1).float(), (mask == 2).float()])


@pytest.mark.parametrize("protocol", ["paper", "torchray", "all"])
def test_mask_as_map_scores_one_and_inverse_scores_zero(protocol):
    masks = _mask_case()
    logits = [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]]
    exact = evaluate(Oracle(), [_batch(masks, [_indicator(m) for m in masks], logits)], "channel", protocol,
                     progress=False)["methods"]["channel"]
    assert exact["point_acc"] == 1.0 and exact["auc"] == 1.0 and exact["num_pairs"] == 4
    inverse = evaluate(Oracle(), [_batch(masks, [1 - _indicator(m) for m in masks], logits)], "channel", protocol,
                       progress=False)["methods"]["channel"]
    assert inverse["auc"] == 0.0
    # exact pixel: the inverse map peaks on background; within 15 px of a 16 px image: always a hit
    assert inverse["point_acc"] == (1.0 if protocol == "torchray" else 0.0)
    assert math.isnan(exact["cos"]) and math.isnan(exact["l2"])  # no teacher


def _peak(h: int, w: int, row: int, col: int) -> torch.Tensor:
    out = torch.zeros(h, w)
    out[row, col] = 1.0
    return out


def test_paper_and_torchray_protocols_differ_as_specified():
    # image 0: class 0 at rows 2-9/cols 2-9 (peak inside: a hit), class 1 at rows 20-27/cols 20-27
    # with a negative logit and its peak at (0, 31), > 15 px away (a miss); image 1: class 1 at
    # rows 4-11/cols 16-23, peak at (14, 20), 3 px below the object (paper: miss, torchray: hit).
    m0 = _box(_box(torch.zeros(32, 32, dtype=torch.long), (2, 10), (2, 10), 1), (20, 28), (20, 28), 2)
    m1 = _box(torch.zeros(32, 32, dtype=torch.long), (4, 12), (16, 24), 2)
    maps = [torch.stack([_peak(32, 32, 5, 5), _peak(32, 32, 0, 31)]),
            torch.stack([_peak(32, 32, 0, 0), _peak(32, 32, 14, 20)])]
    batch = _batch([m0, m1], maps, [[2.0, -1.0], [-1.0, 2.0]])
    paper = evaluate(Oracle(), [batch], "channel", "paper", progress=False)
    torchray = evaluate(Oracle(), [batch], "channel", "torchray", progress=False)
    # paper: only predicted classes (0 of image 0, 1 of image 1): one hit of two, exact pixel
    assert paper["methods"]["channel"]["point_acc"] == 0.5
    assert (paper["methods"]["channel"]["num_pairs"], paper["methods"]["channel"]["num_skipped"]) == (2, 1)
    # torchray: all three ground-truth pairs, 15 px tolerance, per-class mean: (1/1 + 1/2) / 2
    assert torchray["methods"]["channel"]["point_acc"] == 0.75
    assert (torchray["methods"]["channel"]["num_pairs"], torchray["methods"]["channel"]["num_skipped"]) == (3, 0)
    assert paper["protocol"]["tolerance"] == 0 and torchray["protocol"]["tolerance"] == 15
    # all: the three ground-truth pairs, exact pixel, over maps: only image 0's class 0 hits
    every = evaluate(Oracle(), [batch], "channel", "all", progress=False)["methods"]["channel"]
    assert (every["point_acc"], every["num_pairs"], every["num_skipped"]) == (pytest.approx(1 / 3), 3, 0)


def test_void_pixels_ignored_or_counted_as_background():
    mask = _box(_box(torch.zeros(16, 16, dtype=torch.long), (3, 11), (3, 11), VOID), (4, 10), (4, 10), 1)
    heat = 0.5 * (mask == 1).float() + 1.0 * (mask == VOID).float()  # hottest on the void ring
    batch = _batch([mask], [torch.stack([heat, torch.zeros(16, 16)])], [[1.0, -1.0]])
    ignored = evaluate(Oracle(), [batch], "channel", progress=False)["methods"]["channel"]
    assert ignored["point_acc"] == 1.0 and ignored["auc"] == 1.0
    counted = evaluate(Oracle(), [batch], "channel", count_void_as_background=True,
                       progress=False)["methods"]["channel"]
    void, background = 8 * 8 - 6 * 6, 16 * 16 - 8 * 8
    assert counted["point_acc"] == 0.0  # the maximum is a void pixel, now background
    assert counted["auc"] == pytest.approx(background / (background + void))


def test_predictive_metrics_match_sklearn():
    masks = _mask_case()
    logits = [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]]
    batch = _batch(masks, [_indicator(m) for m in masks], logits)
    metrics = evaluate(Oracle(), [batch], "channel", progress=False)["metrics"]
    labels, scores = batch["labels"].numpy(), torch.tensor(logits).numpy()
    assert metrics["map"] == pytest.approx(average_precision_score(labels, scores, average="macro"))
    assert metrics["f1"] == pytest.approx(f1_score(labels, scores > 0, average="micro"))
    assert metrics["num_images"] == 3


def test_model_predicting_nothing_positive_gives_nan_and_a_warning():
    masks = _mask_case()
    batch = _batch(masks, [_indicator(m) for m in masks], [[-1.0, -2.0], [-3.0, -0.5], [-1.0, -1.0]])
    with pytest.warns(UserWarning, match=r"no \(image, class\) pair was scored.*none of the 4"):
        result = evaluate(Oracle(), [batch], ["channel"], "paper", progress=False)
    entry = result["methods"]["channel"]
    assert math.isnan(entry["auc"]) and math.isnan(entry["point_acc"])
    assert entry["num_pairs"] == 0 and entry["num_skipped"] == 4
    assert not math.isnan(result["metrics"]["map"])
    assert "-" in format_table(result, plain=True).splitlines()[1]


def test_teacher_same_model_has_cos_one_and_other_model_less():
    from attrpreserve.data import SyntheticDataModule
    from attrpreserve.models import vgg_small

    dm = SyntheticDataModule(num_classes=3, num_train=1, num_val=1, num_test=6, batch_size=3)
    torch.manual_seed(0)
    student = vgg_small(num_classes=3, width_divisor=8).train()
    # signed Grad-CAM: a ReLU'd map of a random network can be all zeros, and MapSimilarity
    # scores a pair of all-zero maps cos 0 (not 1)
    same = evaluate(student, dm, ["gradcam", "lrp"], "torchray", teacher=student, progress=True,
                    method_kwargs={"gradcam": {"relu": False}})
    assert student.training  # restored
    for name in ("gradcam", "lrp"):
        entry = same["methods"][name]
        assert entry["num_pairs"] > 0
        assert entry["cos"] == pytest.approx(1.0, abs=1e-5) and entry["l2"] == pytest.approx(0.0, abs=1e-3)
    torch.manual_seed(1)
    other = vgg_small(num_classes=3, width_divisor=8)
    different = evaluate(student, dm, ["gradcam"], "torchray", teacher=other, progress=False)
    assert different["methods"]["gradcam"]["cos"] < 0.99 and different["methods"]["gradcam"]["l2"] > 0.1


def test_results_round_trip_through_json_and_csv(tmp_path):
    masks = _mask_case()
    batch = _batch(masks, [_indicator(m) for m in masks], [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]])
    result = evaluate(Oracle(), [batch, batch], "channel", out=tmp_path, progress=False)
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.csv").is_file()
    loaded = load_results(tmp_path)
    assert loaded.keys() == result.keys() and loaded["protocol"] == result["protocol"]
    assert loaded["metrics"] == result["metrics"]
    for name, entry in result["methods"].items():
        for key, value in entry.items():
            got = loaded["methods"][name][key]
            assert (math.isnan(value) and math.isnan(got)) if isinstance(value, float) and math.isnan(value) \
                else got == value, key
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # one row per method, then the model-free centre baseline
    assert [(r["method"], r["row"]) for r in rows] == [("channel", "method"), ("center", "baseline")]
    assert rows[0]["protocol"] == "paper"
    assert float(rows[0]["point_acc"]) == result["methods"]["channel"]["point_acc"]
    assert float(rows[0]["map"]) == result["metrics"]["map"] and math.isnan(float(rows[0]["cos"]))
    assert int(rows[0]["num_pairs"]) == 8
    again = tmp_path / "again"
    save_results(loaded, again)
    assert (again / "results.json").read_text() == (tmp_path / "results.json").read_text()


def test_table_and_loggers(tmp_path):
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    masks = _mask_case()
    batch = _batch(masks, [_indicator(m) for m in masks], [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]])
    csv_logger = CSVLogger(tmp_path, name="eval", version=0)
    result = evaluate(Oracle(), [batch], "channel", logger=csv_logger, progress=False)
    logged = (tmp_path / "eval" / "version_0" / "metrics.csv").read_text()
    assert "evaluate/channel/point_acc" in logged and "evaluate/map" in logged
    table = format_table(result)
    assert "channel" in table and "point acc" in table and "100.00" in table

    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:  # no wandb run: only the table call is recorded
            self.tables: list[dict] = []

        def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
            self.tables.append({"key": key, "columns": columns, "data": data})

    wandb = RecordingWandb()
    evaluate(Oracle(), [batch], "channel", logger=wandb, progress=False)
    (logged_table,) = wandb.tables
    assert logged_table["columns"][:5] == ["method", "mAP", "F1", "AUC", "point acc"]
    assert logged_table["data"][0][0] == "channel" and logged_table["data"][0][4] == 1.0


def test_max_batches_and_iterables():
    masks = _mask_case()
    batch = _batch(masks, [_indicator(m) for m in masks], [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]])
    result = evaluate(Oracle(), iter([batch, batch, batch]), "channel", max_batches=2, progress=False)
    assert result["metrics"]["num_images"] == 6 and result["methods"]["channel"]["num_pairs"] == 8


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        (None, {"methods": ["channel", "nope"]}, "nope"),
        (None, {"protocol": "voc"}, "protocol"),
        (None, {"methods": "ig", "method_kwargs": {"ig": {"steps": 4}}}, "n_steps"),
        (None, {"method_kwargs": {"lrp": {}}}, "method_kwargs"),
        (None, {"max_batches": 0}, "max_batches"),
        (None, {"count_void_as_background": "yes"}, "count_void_as_background"),
        (None, {"precision": "bf16"}, "precision"),
        ("mask_shape", {}, "'mask' to be"),
        ("labels", {}, "num_classes=2"),
        ("mask_value", {}, "'mask' values"),
        ("no_key", {}, "'image', 'labels' and 'mask'"),
    ],
)
def test_errors_raise_before_any_work(change, kwargs, match):
    masks = _mask_case()
    batch = _batch(masks, [_indicator(m) for m in masks], [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]])
    if change == "mask_shape":
        batch["mask"] = batch["mask"][:, :8]
    elif change == "labels":
        batch["labels"] = torch.cat([batch["labels"], torch.zeros(3, 1)], dim=1)
        batch["mask"][0, 0, 0] = 3
    elif change == "mask_value":
        batch["mask"][1, 2, 2] = 7
    elif change == "no_key":
        del batch["mask"]
    model = Oracle()
    args = {"methods": "channel", "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(model, [batch], **args)
    assert model.calls == 0


def test_later_bad_batch_raises():
    masks = _mask_case()
    good = _batch(masks, [_indicator(m) for m in masks], [[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]])
    bad = dict(good, labels=good["labels"][:, :1])
    with pytest.raises(ValueError, match="batch 1"):
        evaluate(Oracle(), [good, bad], "channel", progress=False)


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() touches deprecated module attributes
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


def test_memory_does_not_grow_over_many_batches():
    """No graph or map outlives its batch: at every batch boundary no live tensor carries a
    grad_fn, the bytes held by live tensors grow only by the metrics' per-image states (scores
    and labels, ~100 bytes an image), and the process's resident memory stays flat."""
    torch.manual_seed(0)
    model, teacher = vgg_small(num_classes=3, width_divisor=8), vgg_small(num_classes=3, width_divisor=4)
    dm = SyntheticDataModule(num_classes=3, num_train=1, num_val=1, num_test=8, batch_size=8)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    graphs, held, rss = [], [], []
    process = psutil.Process()

    def batches():
        for i in range(30):
            if i in (10, 29):  # a full scan of the heap costs a few hundred ms: twice is enough
                live = _live_tensors()
                graphs.append(sum(t.grad_fn is not None for t in live))
                storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in live if t.device.type == "cpu"}
                held.append(sum(s.nbytes() for s in storages.values()))
                rss.append(process.memory_info().rss)
            yield batch

    result = evaluate(model, batches(), methods=["gradcam", "ewa"], teacher=teacher, protocol="torchray",
                      progress=False)
    assert result["metrics"]["num_images"] == 240
    assert graphs[1] == graphs[0]  # (other tests in this process may hold graphs: only growth counts)
    per_batch = (held[1] - held[0]) / 19
    assert per_batch < 8 * 200, per_batch  # the states of 8 images, not the activations of a batch
    # One batch's activations and maps through both networks are about 3 MB: keeping one per
    # batch would add that much resident memory per batch. The per-pair records (intervals,
    # per-class tables) and the allocator's own drift stay well under 1 MiB a batch.
    assert (rss[1] - rss[0]) / 19 < 1024 * 1024, (rss[1] - rss[0]) / 19
