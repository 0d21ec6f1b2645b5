"""Teacher cache: exact against the online teacher, keyed, resumable."""

import numpy as np
import pytest
import torch

from attrpreserve.callbacks.matching import MatchingTerm
from attrpreserve.data import SyntheticDataModule
from attrpreserve.losses import matching_loss
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule
from attrpreserve.teacher_cache import TeacherCache


def _data(n=12, seed=0):
    dm = SyntheticDataModule(num_classes=3, num_train=n, num_val=4, num_test=4, batch_size=4, seed=seed)
    dm.setup("fit")
    return dm


def _cache(tmp_path, dm, teacher, views=3, layers=("pool5",), seed=0):
    return TeacherCache(teacher, dm.source_dataset("train"), dm.sample_view, dm.apply_view, layers=layers,
                        views=views, seed=seed, cache_dir=tmp_path, image_size=dm.image_size, batch_size=6)


def _teacher(seed=0):
    torch.manual_seed(seed)
    teacher = vgg_small(num_classes=3, width_divisor=4)
    teacher.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        teacher(torch.randn(8, 3, 64, 64))
    return teacher.eval()


@pytest.mark.parametrize("mode", ["ewa", "swa", "sswa"])
def test_cached_path_matches_online_teacher(tmp_path, mode):
    dm, teacher = _data(), _teacher()
    cache = _cache(tmp_path, dm, teacher).build(progress=False)
    data = cache.dataset_for_training()
    module = DistillationModule(teacher, vgg_small(num_classes=3, width_divisor=8)).eval()
    items = [data.item(i, v) for i, v in [(0, 0), (3, 2), (7, 1), (11, 2)]]
    batch = torch.utils.data.default_collate(items)
    online = {k: v for k, v in batch.items() if not k.startswith("teacher_")}

    def run(b):
        term = MatchingTerm(mode, 1.0, 0.3, "pool5", "pool5", "teacher_top1", False, torch.Generator().manual_seed(0))
        module.add_loss_term(term)
        try:
            t, s = module._forward_both(b)
            losses = module.compute_losses(b, t, s)
            t_map, s_map = term.maps(b, t, s)
        finally:
            module.remove_loss_term(term.name)
        return losses, t_map

    cached_losses, cached_map = run(batch)
    online_losses, online_map = run(online)
    for key in ("kd", "match", "loss"):
        torch.testing.assert_close(cached_losses[key], online_losses[key], rtol=1e-3, atol=1e-6, msg=key)
    # Maps: relative to each map's norm (pointwise relative error is ill-posed where the channel
    # sum cancels to near zero before the ReLU).
    err = (cached_map - online_map).flatten(1).norm(dim=1) / online_map.flatten(1).norm(dim=1).clamp_min(1e-12)
    assert err.max() < 1e-3, err


def test_views_are_the_stored_crops(tmp_path):
    dm, teacher = _data(), _teacher()
    cache = _cache(tmp_path, dm, teacher).build(progress=False)
    data = cache.dataset_for_training()
    boxes, flips = np.load(cache.path / "boxes.npy"), np.load(cache.path / "flips.npy")
    source = dm.source_dataset("train")[5]["image"]
    item = data.item(5, 1)
    expected = dm.apply_view(source, tuple(boxes[5, 1]), bool(flips[5, 1]))
    torch.testing.assert_close(item["image"], expected)
    with torch.no_grad():
        logits = teacher(expected[None])[0]
    torch.testing.assert_close(item["teacher_logits"], logits, rtol=1e-3, atol=2e-3)


def test_building_leaves_the_global_rng_alone(tmp_path):
    # A fit that builds its cache must train like one that reuses it: same dropout and drop draws.
    dm, teacher = _data(), _teacher()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    _cache(tmp_path, dm, teacher).build(progress=False)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_key_changes_with_teacher_data_and_settings(tmp_path):
    dm, teacher = _data(), _teacher()
    base = _cache(tmp_path, dm, teacher).key
    other_teacher = _teacher()
    with torch.no_grad():
        other_teacher.features[1].running_mean += 0.01  # a buffer change alone must invalidate
    assert _cache(tmp_path, dm, other_teacher).key != base
    assert _cache(tmp_path, _data(seed=1), teacher).key != base
    assert _cache(tmp_path, dm, teacher, views=4).key != base
    assert _cache(tmp_path, dm, teacher, seed=1).key != base
    assert _cache(tmp_path, dm, teacher, layers=("conv5_3",)).key != base
    assert _cache(tmp_path, dm, teacher).key == base


def test_build_resumes_after_interruption(tmp_path):
    dm, teacher = _data(), _teacher()
    cache = _cache(tmp_path, dm, teacher)
    calls = {"n": 0}
    original = cache.apply_view

    def flaky(image, box, flip):
        calls["n"] += 1
        if calls["n"] > 6 * 3 + 1:  # dies inside the second batch of 2 images x 3 views
            raise KeyboardInterrupt
        return original(image, box, flip)

    cache.apply_view = flaky
    with pytest.raises(KeyboardInterrupt):
        cache.build(progress=False)
    done = np.load(cache.path / "done.npy")
    assert 0 < done.sum() < len(done) and not cache.is_complete
    with pytest.raises(ValueError, match="incomplete"):
        cache.dataset_for_training()
    resumed = _cache(tmp_path, dm, teacher)
    resumed.build(progress=False)
    assert resumed.is_complete
    fresh = _cache(tmp_path / "fresh", dm, teacher).build(progress=False)
    np.testing.assert_array_equal(np.load(resumed.path / "pool5.npy"), np.load(fresh.path / "pool5.npy"))


def test_bad_views_rejected(tmp_path):
    dm = _data()
    with pytest.raises(ValueError, match="cache_views"):
        _cache(tmp_path, dm, _teacher(), views=0)


def test_fit_with_cache_switch_builds_once_and_reuses(tmp_path):
    import pytorch_lightning as pl

    from attrpreserve.callbacks import AttributionMatching

    teacher = _teacher()

    def fit():
        dm = SyntheticDataModule(num_classes=3, num_train=8, num_val=4, num_test=4, batch_size=4,
                                 cache_teacher=True, cache_views=2, cache_dir=str(tmp_path))
        module = DistillationModule(teacher, vgg_small(num_classes=3, width_divisor=8), lr=0.01)
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                             callbacks=[AttributionMatching(mode="sswa", weight=10.0)])
        trainer.fit(module, dm)
        return trainer

    trainer = fit()
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and (folders[0] / "pool5.npy").is_file()
    assert np.load(folders[0] / "pool5.npy").shape[:2] == (8, 2)
    assert "train/match" in trainer.logged_metrics
    stamp = (folders[0] / "pool5.npy").stat().st_mtime_ns
    fit()
    assert list(tmp_path.iterdir()) == folders and (folders[0] / "pool5.npy").stat().st_mtime_ns == stamp


def test_cache_switch_needs_a_distillation_module(tmp_path):
    import pytorch_lightning as pl

    from attrpreserve.modules import TeacherModule

    dm = SyntheticDataModule(num_classes=3, num_train=8, num_val=4, num_test=4, batch_size=4,
                             cache_teacher=True, cache_dir=str(tmp_path))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="cache_teacher"):
        trainer.fit(TeacherModule(vgg_small(num_classes=3, width_divisor=8)), dm)
