"""Metrics split across two gloo processes give the single-process result.

Two CPU ranks each update on an unequal share of one seeded data set, compute (torchmetrics
syncs the sum states) and write their results to a JSON file per rank. The ranks are started
with ``torch.multiprocessing`` using ``fork``: ``spawn`` would re-import torch and torchmetrics
in every rank (about 5 s each on a shared 2-core runner); the ranks set one thread first, so no
OpenMP pool inherited from the parent is touched.
"""

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attrpreserve.metrics import (
    MapSimilarity,
    MaskAUROC,
    PerImageAveragePrecision,
    PointingGame,
    classification_metrics,
)

N = 26
SPLIT = 11  # rank 0 gets maps [0, 11), rank 1 gets [11, 26): unequal shares


def _data():
    g = torch.Generator().manual_seed(0)
    heat = torch.randint(0, 4, (N, 16, 16), generator=g).float()
    masks = torch.rand(N, 16, 16, generator=g) < 0.2
    masks[3] = False  # skipped (empty) maps on both ranks
    masks[17] = False
    ignore = torch.rand(N, 16, 16, generator=g) < 0.1
    classes = torch.randint(0, 3, (N,), generator=g)
    teacher = torch.rand(N, 1, 16, 16, generator=g)
    target = (torch.rand(N, 5, generator=g) < 0.4).long()
    target[0] = 0
    probs = (target * 0.3 + torch.rand(N, 5, generator=g) * 0.7).clamp(0, 1)
    return heat, masks, ignore, classes, teacher, target, probs


def _metrics():
    return {
        "pointing": PointingGame(),
        "pointing_class": PointingGame(tolerance=3, average="class", num_classes=3),
        "auroc": MaskAUROC(),
        "similarity": MapSimilarity(),
        "ap_image": PerImageAveragePrecision(num_labels=5),
        "collection": classification_metrics(num_labels=5),
    }


def _evaluate(lo: int, hi: int) -> dict:
    """Update every metric on maps [lo, hi) in two batches and return computed values."""
    heat, masks, ignore, classes, teacher, target, probs = _data()
    metrics = _metrics()
    for a, b in ((lo, (lo + hi) // 2), ((lo + hi) // 2, hi)):
        metrics["pointing"].update(heat[a:b], masks[a:b], ignore=ignore[a:b])
        metrics["pointing_class"].update(heat[a:b], masks[a:b], classes[a:b], ignore=ignore[a:b])
        metrics["auroc"].update(heat[a:b], masks[a:b], ignore=ignore[a:b])
        metrics["similarity"].update(heat[a:b].unsqueeze(1), teacher[a:b])
        metrics["ap_image"].update(probs[a:b], target[a:b])
        metrics["collection"].update(probs[a:b], target[a:b])
    out = {}
    for name, metric in metrics.items():
        value = metric.compute()
        if isinstance(value, dict):
            out.update({f"{name}/{k}": float(v) for k, v in value.items()})
        else:
            out[name] = float(value)
    for name in ("pointing", "auroc", "ap_image"):
        with metrics[name].sync_context():  # after compute the states are local again
            out[f"{name}/num_skipped"] = int(metrics[name].num_skipped)
    return out


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    try:
        lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, N)
        result = _evaluate(lo, hi)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods() or not dist.is_available()
    or not dist.is_gloo_available(),
    reason="needs fork and torch.distributed with gloo",
)
def test_two_process_gloo_matches_single_process(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    expected = _evaluate(0, N)
    local = _evaluate(0, SPLIT)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (rank, key)
    assert expected["pointing/num_skipped"] == 2 and expected["auroc/num_skipped"] >= 2
    # the split matters: rank 0's data alone gives different values
    assert sum(abs(local[k] - expected[k]) > 1e-4 for k in expected) >= 6
