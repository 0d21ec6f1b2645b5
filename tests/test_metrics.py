"""Metrics against hand-built cases and independent oracles (sklearn, per-map numpy loops)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from attrpreserve.metrics import (
    MapSimilarity,
    MaskAUROC,
    PerImageAveragePrecision,
    PointingGame,
    classification_metrics,
)
from attrpreserve.metrics.functional import map_similarity, mask_auroc, per_image_average_precision, pointing_game

# ----------------------------------------------------------------------------- data and oracles


def _random_batch(n=24, h=20, w=24, levels=4, seed=0):
    """Quantised heatmaps (many ties), blob masks (some empty, some full), sparse ignore pixels."""
    g = torch.Generator().manual_seed(seed)
    heat = torch.randint(0, levels, (n, h, w), generator=g).float() / levels
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    cy = torch.randint(0, h, (n,), generator=g)[:, None, None]
    cx = torch.randint(0, w, (n,), generator=g)[:, None, None]
    radius = torch.randint(1, 8, (n,), generator=g)[:, None, None]
    masks = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    masks[0] = False  # empty
    masks[1] = True  # no background
    ignore = torch.rand(n, h, w, generator=g) < 0.1
    ignore[2] = masks[2]  # every object pixel ignored
    return heat, masks, ignore


def _pointing_oracle(heat, mask, ignore, tolerance):
    """One map at a time: None when skipped, else hit (bool)."""
    heat, mask = heat.numpy().astype(np.float64), mask.numpy()
    ignore = np.zeros_like(mask) if ignore is None else ignore.numpy()
    mask = mask & ~ignore
    if not mask.any():
        return None
    flat = np.where(ignore, -np.inf, heat).ravel()
    r, c = divmod(int(np.argmax(flat)), heat.shape[1])  # numpy: first maximum
    if mask[r, c]:
        return True
    ys, xs = np.nonzero(mask)
    return bool((np.hypot(ys - r, xs - c) < tolerance).any())


def _auc_oracle(heat, mask, ignore):
    keep = np.ones(mask.shape, bool) if ignore is None else ~ignore.numpy()
    y, s = mask.numpy()[keep], heat.double().numpy()[keep]
    if y.all() or not y.any():
        return None
    return roc_auc_score(y, s)


# ----------------------------------------------------------------------------- PointingGame


def _single(point, mask_pixels, shape=(40, 40)):
    heat = torch.zeros(1, *shape)
    heat[0, point[0], point[1]] = 1.0
    mask = torch.zeros(1, *shape, dtype=torch.bool)
    for r, c in mask_pixels:
        mask[0, r, c] = True
    return heat, mask


@pytest.mark.parametrize(
    ("point", "tol0", "tol15"),
    [
        ((5, 5), 1.0, 1.0),  # on the mask pixel
        ((14, 16), 0.0, 1.0),  # 9 rows, 11 cols away: 14.2 px
        ((14, 17), 0.0, 0.0),  # 9 rows, 12 cols away: exactly 15 px (TorchRay: strictly closer)
        ((16, 16), 0.0, 0.0),  # 11 rows, 11 cols: 15.6 px (Chebyshev 11 would hit)
    ],
)
def test_pointing_game_tolerance_is_euclidean_and_strict(point, tol0, tol15):
    heat, mask = _single(point, [(5, 5)])
    assert pointing_game(heat, mask).item() == tol0
    assert pointing_game(heat, mask, tolerance=15).item() == tol15


def test_pointing_game_ties_take_first_maximum_in_row_major_order():
    heat = torch.zeros(2, 4, 4)
    heat[:, 1, 3] = heat[:, 2, 0] = 5.0  # (1, 3) comes first in row-major order
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 3] = True  # first maximum in the mask: hit
    mask[1, 2, 0] = True  # only the later maximum in the mask: miss
    assert pointing_game(heat[:1], mask[:1]).item() == 1.0
    assert pointing_game(heat[1:], mask[1:]).item() == 0.0
    # constant map: the maximum is pixel (0, 0)
    flat = torch.ones(1, 4, 4)
    corner = torch.zeros(1, 4, 4, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert pointing_game(flat, corner).item() == 1.0
    assert pointing_game(flat, corner.roll(1, dims=2)).item() == 0.0


def test_pointing_game_ignored_pixels_are_never_the_maximum_nor_the_mask():
    heat = torch.zeros(1, 6, 6)
    heat[0, 0, 0] = 9.0  # global maximum, but void
    heat[0, 4, 4] = 1.0  # best valid pixel
    ignore = torch.zeros(1, 6, 6, dtype=torch.bool)
    ignore[0, 0, 0] = True
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 4, 4] = True
    assert pointing_game(heat, mask).item() == 0.0
    assert pointing_game(heat, mask, ignore=ignore).item() == 1.0
    # a mask pixel that is ignored does not count, not even within the tolerance
    mask2 = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask2[0, 4, 5] = mask2[0, 0, 5] = True
    ignore2 = ignore.clone()
    ignore2[0, 4, 5] = True
    assert pointing_game(heat, mask2, ignore=ignore, tolerance=2).item() == 1.0
    assert pointing_game(heat, mask2, ignore=ignore2, tolerance=2).item() == 0.0
    # valid pixels at -inf still beat ignored ones (inf passes only without validation)
    low = torch.full((1, 2, 2), float("-inf"))
    low[0, 0, 0] = 3.0
    void = torch.tensor([[[True, False], [False, False]]])
    target = torch.tensor([[[False, True], [False, False]]])
    assert pointing_game(low, target, ignore=void, validate_args=False).item() == 1.0


def test_pointing_game_empty_masks_skipped_and_counted():
    heat, masks, ignore = _random_batch()
    metric = PointingGame()
    metric.update(heat, masks, ignore=ignore)
    empty = ~(masks & ~ignore).flatten(1).any(1)
    assert metric.num_skipped.item() == int(empty.sum()) >= 2
    assert metric.count.item() == len(heat) - int(empty.sum())
    only_empty = PointingGame()
    only_empty.update(heat[:1], masks[:1])
    with pytest.warns(UserWarning, match="nothing was counted"):
        assert math.isnan(only_empty.compute().item())
    zero = PointingGame(zero_division=0.0)
    zero.update(heat[:1], masks[:1])
    with pytest.warns(UserWarning):
        assert zero.compute().item() == 0.0


@pytest.mark.parametrize("tolerance", [0, 2.5, 15])
def test_pointing_game_matches_per_map_oracle(tolerance):
    heat, masks, ignore = _random_batch(n=40, h=32, w=36, levels=3, seed=1)
    results = [_pointing_oracle(heat[i], masks[i], ignore[i], tolerance) for i in range(len(heat))]
    counted = [r for r in results if r is not None]
    expected = sum(counted) / len(counted)
    assert 0.0 < expected < 1.0
    metric = PointingGame(tolerance=tolerance)
    for chunk in range(0, 40, 16):
        metric.update(heat[chunk:chunk + 16], masks[chunk:chunk + 16], ignore=ignore[chunk:chunk + 16])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-7)
    assert metric.num_skipped.item() == results.count(None)


def test_pointing_game_class_average():
    heat, masks, ignore = _random_batch(n=40, h=24, w=24, levels=3, seed=2)
    classes = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(3))
    results = [_pointing_oracle(heat[i], masks[i], ignore[i], 15) for i in range(40)]
    per_class = []
    for k in range(5):  # class 4 never occurs: not averaged in
        hits = [r for r, c in zip(results, classes.tolist()) if c == k and r is not None]
        if hits:
            per_class.append(sum(hits) / len(hits))
    expected = sum(per_class) / len(per_class)
    metric = PointingGame(tolerance=15, average="class", num_classes=5)
    metric.update(heat[:25], masks[:25], classes[:25], ignore=ignore[:25])
    metric.update(heat[25:], masks[25:], classes[25:], ignore=ignore[25:])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-7)
    micro = sum(r for r in results if r is not None) / sum(r is not None for r in results)
    assert abs(expected - micro) > 1e-3  # the two averages differ on this data
    # hand case: class 0 hits 3/3, class 1 hits 0/1 -> micro 0.75, class 0.5
    h, m = _single((5, 5), [(5, 5)])
    miss_h, miss_m = _single((5, 5), [(30, 30)])
    hh, mm = torch.cat([h, h, h, miss_h]), torch.cat([m, m, m, miss_m])
    assert pointing_game(hh, mm).item() == 0.75
    cls = torch.tensor([0, 0, 0, 1])
    assert pointing_game(hh, mm, cls, average="class", num_classes=3).item() == 0.5


def test_pointing_game_argument_and_tensor_errors():
    with pytest.raises(ValueError, match="Expected argument `tolerance`"):
        PointingGame(tolerance=-1)
    with pytest.raises(ValueError, match="Expected argument `average`"):
        PointingGame(average="macro")
    with pytest.raises(ValueError, match="Expected argument `num_classes`"):
        PointingGame(average="class")
    with pytest.raises(ValueError, match="Expected argument `zero_division`"):
        PointingGame(zero_division="warn")
    with pytest.raises(ValueError, match="Expected argument `validate_args`"):
        PointingGame(validate_args=1)
    heat, masks = torch.rand(2, 5, 5), torch.ones(2, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 5, 5\) and \(2, 5, 6\)"):
        PointingGame().update(heat, torch.ones(2, 5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        PointingGame().update(heat, masks * 2)
    with pytest.raises(ValueError, match="finite"):
        PointingGame().update(heat.masked_fill(masks, float("nan")), masks)
    with pytest.raises(ValueError, match="`classes`"):
        PointingGame(average="class", num_classes=2).update(heat, masks)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        PointingGame(average="class", num_classes=2).update(heat, masks, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="ignore"):
        PointingGame().update(heat, masks, ignore=torch.zeros(2, 4, 5, dtype=torch.bool))


# ----------------------------------------------------------------------------- MaskAUROC


def test_mask_auroc_matches_sklearn_with_ties_and_ignore():
    heat, masks, ignore = _random_batch(n=30, h=20, w=24, levels=5, seed=4)
    expected = [_auc_oracle(heat[i], masks[i], ignore[i]) for i in range(30)]
    valid = [a for a in expected if a is not None]
    metric = MaskAUROC()
    metric.update(heat[:13], masks[:13], ignore=ignore[:13])
    metric.update(heat[13:], masks[13:], ignore=ignore[13:])
    assert metric.compute().item() == pytest.approx(np.mean(valid), abs=1e-6)
    assert metric.num_skipped.item() == expected.count(None) >= 3
    # each map on its own, to catch errors that cancel in the mean
    for i in range(30):
        if expected[i] is not None:
            got = mask_auroc(heat[i:i + 1], masks[i:i + 1], ignore[i:i + 1]).item()
            assert got == pytest.approx(expected[i], abs=1e-6)


def test_mask_auroc_matches_sklearn_continuous_and_large_tied_maps():
    g = torch.Generator().manual_seed(5)
    heat = torch.rand(4, 64, 64, generator=g)
    heat[2:] = (heat[2:] * 3).floor()  # three levels: huge tie groups
    masks = torch.rand(4, 64, 64, generator=g) < heat.clamp(0.1, 0.9) * 0.5
    expected = np.mean([_auc_oracle(heat[i], masks[i], None) for i in range(4)])
    assert mask_auroc(heat, masks).item() == pytest.approx(expected, abs=1e-6)


def test_mask_auroc_ignored_pixels_are_excluded():
    heat = torch.tensor([[[0.9, 0.1], [0.2, 0.4]]])
    masks = torch.tensor([[[1, 0], [1, 0]]])
    assert mask_auroc(heat, masks).item() == 0.75
    assert mask_auroc(heat, masks, ignore=torch.tensor([[[0, 0], [0, 1]]])).item() == 1.0
    assert mask_auroc(heat, masks, ignore=torch.tensor([[[1, 0], [0, 0]]])).item() == 0.5


def test_mask_auroc_normalize_and_dtypes_do_not_change_the_result():
    heat, masks, ignore = _random_batch(n=16, levels=8, seed=6)
    heat = heat * 7.0 - 2.0  # arbitrary affine range, still exact in float16
    base = mask_auroc(heat, masks, ignore)
    assert mask_auroc(heat, masks, ignore, normalize=True).item() == pytest.approx(base.item(), abs=1e-7)
    for dtype in (torch.float16, torch.float64, torch.bfloat16):
        assert mask_auroc(heat.to(dtype), masks, ignore).item() == pytest.approx(base.item(), abs=1e-7)
    metric = MaskAUROC(normalize=True)
    metric.update(heat.half().unsqueeze(1), masks.unsqueeze(1).int(), ignore=ignore.unsqueeze(1))
    assert metric.compute().item() == pytest.approx(base.item(), abs=1e-7)


def test_mask_auroc_errors():
    with pytest.raises(ValueError, match="Expected argument `normalize`"):
        MaskAUROC(normalize="minmax")
    with pytest.raises(ValueError, match=r"\(3, 4, 4\) and \(3, 1, 4, 5\)"):
        MaskAUROC().update(torch.rand(3, 4, 4), torch.ones(3, 1, 4, 5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        MaskAUROC().update(torch.rand(3, 4, 4), torch.full((3, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        MaskAUROC().update(torch.rand(3, 2, 4, 4), torch.ones(3, 2, 4, 4))


# ----------------------------------------------------------------------------- MapSimilarity


def _similarity_oracle(student, teacher, normalize):
    cos, l2 = [], []
    for s, t in zip(student.double().numpy(), teacher.double().numpy()):
        s, t = s.ravel(), t.ravel()
        if normalize == "minmax":
            s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
            t = (t - t.min()) / (t.max() - t.min()) if t.max() > t.min() else np.zeros_like(t)
        elif normalize == "l2":
            s = s / np.linalg.norm(s) if np.linalg.norm(s) > 0 else s
            t = t / np.linalg.norm(t) if np.linalg.norm(t) > 0 else t
        den = np.linalg.norm(s) * np.linalg.norm(t)
        cos.append(s @ t / den if den > 0 else 0.0)
        l2.append(np.linalg.norm(s - t))
    return np.mean(cos), np.mean(l2)


@pytest.mark.parametrize("normalize", ["minmax", "l2", None])
def test_map_similarity_matches_numpy(normalize):
    g = torch.Generator().manual_seed(7)
    student = torch.rand(10, 1, 14, 14, generator=g) * 5 - 1
    teacher = torch.rand(10, 1, 14, 14, generator=g) * 3
    student[0] = 2.0  # constant map
    teacher[1] = 0.0  # zero map
    cos, l2 = _similarity_oracle(student[:, 0], teacher[:, 0], normalize)
    metric = MapSimilarity(normalize=normalize)
    metric.update(student[:4], teacher[:4])
    metric.update(student[4:, 0], teacher[4:, 0])
    out = metric.compute()
    assert out["cos"].item() == pytest.approx(cos, abs=1e-6)
    assert out["l2"].item() == pytest.approx(l2, rel=1e-6)
    half = map_similarity(student.half(), teacher.half(), normalize=normalize)
    ref = _similarity_oracle(student.half()[:, 0], teacher.half()[:, 0], normalize)
    assert half["cos"].item() == pytest.approx(ref[0], abs=1e-6)


def test_map_similarity_hand_case_and_errors():
    s = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    t = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    out = map_similarity(s, t)
    assert out["cos"].item() == 0.0 and out["l2"].item() == pytest.approx(math.sqrt(2))
    assert map_similarity(s, s * 3 + 1)["cos"].item() == pytest.approx(1.0)
    assert MapSimilarity.higher_is_better is None
    with pytest.raises(ValueError, match="Expected argument `normalize`"):
        MapSimilarity(normalize="zscore")
    with pytest.raises(ValueError, match=r"\(2, 7, 7\) and \(2, 1, 14, 14\)"):
        MapSimilarity().update(torch.rand(2, 7, 7), torch.rand(2, 1, 14, 14))


# ----------------------------------------------------------------------------- predictive


def _scores_with_ties(n=50, c=7, seed=8):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n, c), generator=g).float() / 4
    target = (torch.rand(n, c, generator=g) < 0.3).long()
    target[:3] = 0  # images without a positive label
    target[3] = 1
    return scores, target


def test_per_image_ap_matches_sklearn_per_image_with_ties():
    scores, target = _scores_with_ties()
    expected = [average_precision_score(t, s) for s, t in zip(scores.numpy(), target.numpy()) if t.any()]
    metric = PerImageAveragePrecision(num_labels=7)
    metric.update(scores[:20], target[:20])
    metric.update(torch.logit(scores[20:].clamp(0.01, 0.99)), target[20:].bool())  # logits: same ranking
    assert metric.compute().item() == pytest.approx(np.mean(expected), abs=1e-6)
    assert metric.num_skipped.item() == int((target.sum(1) == 0).sum()) >= 3
    for i in range(3, 12):
        got = per_image_average_precision(scores[i:i + 1], target[i:i + 1], num_labels=7).item()
        assert got == pytest.approx(average_precision_score(target[i], scores[i]), abs=1e-6)


def test_per_image_ap_errors():
    with pytest.raises(ValueError, match="Expected argument `num_labels`"):
        PerImageAveragePrecision(num_labels=0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        PerImageAveragePrecision(num_labels=3).update(torch.rand(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="only 0 and 1"):
        PerImageAveragePrecision(num_labels=3).update(torch.rand(4, 3), torch.full((4, 3), 2))


def test_classification_metrics_against_sklearn():
    g = torch.Generator().manual_seed(9)
    target = (torch.rand(40, 5, generator=g) < 0.4).long()
    probs = (target * 0.4 + torch.rand(40, 5, generator=g) * 0.6).clamp(0, 1)
    metrics = classification_metrics(num_labels=5, prefix="test/")
    metrics.update(probs[:25], target[:25])
    metrics.update(probs[25:], target[25:])
    out = metrics.compute()
    assert set(out) == {"test/map", "test/map_image", "test/f1", "test/num_classes_averaged"}
    y, p = target.numpy(), probs.numpy()
    assert out["test/map"].item() == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-5)
    per_image = np.mean([average_precision_score(t, s) for s, t in zip(p, y) if t.any()])
    assert out["test/map_image"].item() == pytest.approx(per_image, abs=1e-6)
    assert out["test/f1"].item() == pytest.approx(f1_score(y, p > 0.5, average="micro"), abs=1e-6)
    macro = classification_metrics(5, f1_average="macro")(probs, target)["f1"].item()
    assert macro == pytest.approx(f1_score(y, p > 0.5, average="macro"), abs=1e-6)
    with pytest.raises(ValueError, match="Expected argument `f1_average`"):
        classification_metrics(5, f1_average="samples")
    with pytest.raises(ValueError, match="Expected argument `threshold`"):
        classification_metrics(5, threshold=1.5)


# ----------------------------------------------------------------------------- Metric contract


@pytest.mark.parametrize(
    ("make", "fn", "inputs"),
    [
        (lambda: PointingGame(tolerance=3), lambda *a: pointing_game(*a, tolerance=3), "maps"),
        (lambda: MaskAUROC(), mask_auroc, "maps"),
        (lambda: MapSimilarity(), map_similarity, "pairs"),
        (lambda: PerImageAveragePrecision(7), lambda *a: per_image_average_precision(*a, num_labels=7), "labels"),
    ],
)
def test_forward_update_compute_reset_contract(make, fn, inputs):
    if inputs == "maps":
        heat, masks, _ = _random_batch(n=20, seed=10)
        batches = [(heat[:8], masks[:8]), (heat[8:], masks[8:])]
        whole = (heat, masks)
    elif inputs == "pairs":
        g = torch.Generator().manual_seed(11)
        a, b = torch.rand(20, 9, 9, generator=g), torch.rand(20, 9, 9, generator=g)
        batches, whole = [(a[:8], b[:8]), (a[8:], b[8:])], (a, b)
    else:
        scores, target = _scores_with_ties(n=20, seed=12)
        batches, whole = [(scores[:8], target[:8]), (scores[8:], target[8:])], (scores, target)

    def same(x, y):
        if isinstance(x, dict):
            return all(same(x[k], y[k]) for k in x)
        return torch.allclose(x, y, atol=1e-6)

    metric = make()
    assert metric.full_state_update is False and metric.is_differentiable is False
    for batch in batches:
        assert same(metric(*batch), fn(*batch))  # forward returns the batch value ...
    assert same(metric.compute(), fn(*whole))  # ... and accumulates
    assert not same(fn(*batches[0]), fn(*whole))  # (the two differ, so the check means something)
    metric.reset()
    assert all(int(v.sum()) == 0 for v in metric.metric_state.values())
    metric.update(*batches[1])
    assert same(metric.compute(), fn(*batches[1]))
    if inputs != "labels":  # one map given as (1, 1, H, W) is one map, not a squeezed (H, W)
        one = [x[4:5].unsqueeze(1) for x in batches[0]]
        assert same(fn(*one), fn(*[x[4:5] for x in batches[0]]))


def test_validate_args_false_skips_checks_but_computes_the_same():
    heat, masks, ignore = _random_batch(seed=13)
    # Not 0/1, so validation rejects them; the computation reads any nonzero value as True.
    loose_masks, loose_ignore = masks.float() * 2, ignore.to(torch.uint8) * 7
    for make in (lambda v: PointingGame(tolerance=2, validate_args=v), lambda v: MaskAUROC(validate_args=v)):
        with pytest.raises(ValueError, match="`masks` to be bool or contain only 0 and 1"):
            make(True).update(heat, loose_masks, ignore=ignore)
        with pytest.raises(ValueError, match="`ignore` to be bool or contain only 0 and 1"):
            make(True).update(heat, masks, ignore=loose_ignore)
    fast = PointingGame(tolerance=2, validate_args=False)
    fast.update(heat, loose_masks, ignore=loose_ignore)
    assert fast.compute() == pointing_game(heat, masks, ignore=ignore, tolerance=2)
    fast_auc = MaskAUROC(validate_args=False)
    fast_auc.update(heat, loose_masks, ignore=loose_ignore)
    assert fast_auc.compute() == mask_auroc(heat, masks, ignore)


# ----------------------------------------------------------------------------- plot()


def _plot_cases():
    from attrpreserve.metrics import EnergyPointingGame, TorchRayPointingGame

    heat, masks = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    classes = torch.tensor([0, 1, 0, 1])
    preds, target = torch.rand(4, 3), torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    return [
        (PointingGame(), (heat, masks)),
        (MaskAUROC(), (heat, masks)),
        (EnergyPointingGame(), (heat, masks)),
        (TorchRayPointingGame(num_classes=2, tolerance=2), (heat, masks, classes)),
        (MapSimilarity(), (heat, heat.flip(-1))),
        (PerImageAveragePrecision(num_labels=3), (preds, target)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_plot_returns_a_figure_within_the_bounds(index):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, batch = _plot_cases()[index]
    values = [metric(*batch) for _ in range(3)]
    for val in (None, values):  # compute(), and a series of forward() results
        fig, ax = metric.plot(val)
        assert isinstance(fig, matplotlib.figure.Figure) and ax.figure is fig and ax.lines
        if metric.plot_lower_bound is not None:
            low, high = ax.get_ylim()
            assert low <= metric.plot_lower_bound and high >= metric.plot_upper_bound
        plt.close(fig)
