"""Per-class averages (mAP, macro F1) over the classes present, against sklearn, one process and two."""

import json
import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score, f1_score
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from attrpreserve.metrics import classification_metrics
from attrpreserve.metrics.predictive import PresentClassAveragePrecision, PresentClassCount, PresentClassF1Score

NAMES = ("cat", "dog", "cow", "bus", "car", "sofa", "boat", "bird")
ABSENT = (2, 5)  # never positive in `_split`
LATE = 6  # positive only in the last rows (a later batch, the other rank)


def _split(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities with ties and targets over 8 classes, of which 2 never occur."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, len(NAMES), generator=g) < 0.35).long()
    target[:, list(ABSENT)] = 0
    target[:, LATE] = 0
    target[n - 3:, LATE] = 1
    target[n // 2, 0] = 1  # every present class has a positive
    probs = (target * 0.35 + torch.rand(n, len(NAMES), generator=g) * 0.65).clamp(0, 1)
    return (probs * 20).round() / 20, target  # ties


def _sklearn(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    y, p = target.numpy(), probs.numpy()
    present = y.sum(0) > 0
    return {
        "map": float(np.mean([average_precision_score(y[:, c], p[:, c]) for c in np.flatnonzero(present)])),
        "f1_macro": f1_score(y[:, present], p[:, present] > 0.5, average="macro"),
        "f1_micro": f1_score(y, p > 0.5, average="micro"),
        "f1_weighted": f1_score(y, p > 0.5, average="weighted", zero_division=0),
        "num": int(present.sum()),
    }


def test_map_and_f1_average_over_present_classes_like_sklearn():
    probs, target = _split()
    expected = _sklearn(probs, target)
    metrics = classification_metrics(len(NAMES), prefix="val/", f1_average="macro", class_names=NAMES)
    for a, b in ((0, 25), (25, 60)):  # class LATE only shows up in the second batch
        metrics.update(probs[a:b], target[a:b])
    with pytest.warns(UserWarning, match="2 of 8 classes"):
        out = metrics.compute()
    assert out["val/map"].item() == pytest.approx(expected["map"], abs=1e-6)
    assert out["val/f1"].item() == pytest.approx(expected["f1_macro"], abs=1e-6)
    assert out["val/num_classes_averaged"].item() == expected["num"] == len(NAMES) - len(ABSENT)
    # the old macro counted the absent classes as 0: 6/8 of the value
    old = MultilabelAveragePrecision(len(NAMES), average="macro")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert old(probs, target).item() == pytest.approx(expected["map"] * 6 / 8, abs=1e-5)
    for average in ("micro", "weighted"):  # no per-class mean to fix: as sklearn on all classes
        f1 = classification_metrics(len(NAMES), f1_average=average)["f1"]
        assert f1(probs, target).item() == pytest.approx(expected[f"f1_{average}"], abs=1e-6)


def test_all_classes_present_equals_torchmetrics_macro():
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(40, 5, generator=g) < 0.4).long()
    probs = (target * 0.4 + torch.rand(40, 5, generator=g) * 0.6).clamp(0, 1)
    assert bool((target.sum(0) > 0).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing absent: no warning
        ours = PresentClassAveragePrecision(5)(probs, target)
        ours_f1 = PresentClassF1Score(5)(probs, target)
    assert ours.item() == pytest.approx(MultilabelAveragePrecision(5, average="macro")(probs, target).item(), abs=1e-6)
    assert ours_f1.item() == pytest.approx(MultilabelF1Score(5, average="macro")(probs, target).item(), abs=1e-6)
    assert ours.item() == pytest.approx(average_precision_score(target.numpy(), probs.numpy()), abs=1e-6)


def test_absent_classes_warned_once_by_name():
    probs, target = _split()
    metrics = classification_metrics(len(NAMES), f1_average="macro", class_names=NAMES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):  # the same split every epoch: one warning in all
            for a, b in ((0, 30), (30, 60)):
                metrics.update(probs[a:b], target[a:b])
            metrics.compute()
            metrics.compute()
            metrics.reset()
    absent = [w for w in caught if "no positive target" in str(w.message)]
    assert len(absent) == 1, [str(w.message) for w in caught]
    message = str(absent[0].message)
    assert "average: cow, sofa." in message and "Averaged over the 6 classes present" in message
    assert "boat" not in message  # present, if only in the last rows


def test_no_class_present_is_nan_with_a_warning_and_indices_without_names():
    metric = PresentClassAveragePrecision(3)
    metric.update(torch.rand(4, 3), torch.zeros(4, 3, dtype=torch.long))
    with pytest.warns(UserWarning, match=r"3 of 3 classes .*: class 0, class 1, class 2\."):
        assert torch.isnan(metric.compute())
    f1 = PresentClassF1Score(3, warn_absent=False)
    assert torch.isnan(f1(torch.rand(4, 3), torch.zeros(4, 3, dtype=torch.long)))
    count = PresentClassCount(3)
    assert count(torch.rand(4, 3), torch.zeros(4, 3, dtype=torch.long)).item() == 0


def test_bad_class_names_and_shapes():
    with pytest.raises(ValueError, match="Expected argument `class_names` to be None or 3 strings"):
        classification_metrics(3, class_names=("a", "b"))
    with pytest.raises(ValueError, match="Expected argument `class_names`"):
        PresentClassAveragePrecision(3, class_names="abc")
    with pytest.raises(ValueError, match="Expected argument `num_labels` to be a positive int"):
        PresentClassF1Score(0)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        PresentClassCount(3).update(torch.rand(4, 2), torch.ones(4, 2))


# ------------------------------------------------------------------------------------ two ranks
SPLIT = 27  # rank 0: rows [0, 27) (no positive of class LATE), rank 1: [27, 60)


def _evaluate(lo: int, hi: int) -> dict:
    probs, target = _split()
    metrics = classification_metrics(len(NAMES), f1_average="macro")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in ((lo, (lo + hi) // 2), ((lo + hi) // 2, hi)):
            metrics.update(probs[a:b], target[a:b])
        return {k: float(v) for k, v in metrics.compute().items()}


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    try:
        result = _evaluate(*((0, SPLIT) if rank == 0 else (SPLIT, 60)))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods() or not dist.is_available()
    or not dist.is_gloo_available(),
    reason="needs fork and torch.distributed with gloo",
)
def test_two_process_gloo_sees_the_classes_present_on_any_rank(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    expected = _evaluate(0, 60)
    assert expected["map"] == pytest.approx(_sklearn(*_split())["map"], abs=1e-6)
    assert _evaluate(0, SPLIT)["num_classes_averaged"] == 5  # rank 0 alone lacks class LATE
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (rank, key)
    assert expected["num_classes_averaged"] == 6
