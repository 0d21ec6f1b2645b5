"""Mixed precision and channels_last through the distillation step (CPU autocast).

Stated tolerances (measured on these tiny networks, in brackets, then given a margin):

- bf16 autocast: matching, KD, task loss within 1% of fp32's (measured <= 0.05%); teacher maps
  within 5% (L2 error relative to each map's norm; 2.1%); student maps within 5% (relative to the
  batch's norm: a random student's SWA map is a channel sum that mostly cancels before the ReLU,
  so a per-map error is ill-posed on near-empty maps; 1.1%); gradient of the whole loss w.r.t.
  the student's parameters at cosine > 0.98 with fp32's (0.997).
- fp16 autocast: losses 0.5%, maps 1% (0.2%), cosine > 0.98 (0.99999).

Without the explicit casts the maps and losses would come back in half precision (asserted).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import default_collate

from attrpreserve.attribution.maps import sswa_map, swa_map
from attrpreserve.callbacks import AttributionMatching
from attrpreserve.callbacks.matching import MatchingTerm
from attrpreserve.data import SyntheticDataModule
from attrpreserve.losses import matching_loss, multilabel_kd_loss
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule

TOL = {  # dtype -> (losses, teacher maps per map, student maps per batch) relative errors
    torch.bfloat16: (1e-2, 5e-2, 5e-2),
    torch.float16: (5e-3, 1e-2, 1e-2),
}


def _teacher(seed=0):
    torch.manual_seed(seed)
    teacher = vgg_small(num_classes=3, width_divisor=4).train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        teacher(torch.randn(16, 3, 64, 64))
    return teacher.eval()


def _module(channels_last=False):
    teacher = _teacher()
    torch.manual_seed(1)
    module = DistillationModule(teacher, vgg_small(num_classes=3, width_divisor=8), channels_last=channels_last)
    for m in module.modules():  # dropout draws would differ between two runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return module.train()


def _batch():
    dm = SyntheticDataModule(num_classes=3, num_train=4, num_val=8, num_test=4, batch_size=8)
    dm.setup("validate")
    return default_collate([dm.val_dataset[i] for i in range(8)])


def _step(module, batch, mode, dtype, classes):
    """Loss terms, maps and student gradient of one training step, under autocast to ``dtype``."""

    class Fixed(MatchingTerm):  # same target classes in every precision (no argmax ties)
        def target_classes(self, b, t):
            return classes

    term = Fixed(mode, 1.0, 0.3, "pool5", "pool5", "teacher_top1", False, torch.Generator().manual_seed(0))
    module.add_loss_term(term)
    module.zero_grad()
    try:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            teacher, student = module._forward_both(batch)
            losses = module.compute_losses(batch, teacher, student)
            term.generator.manual_seed(0)
            t_map, s_map = term.maps(batch, teacher, student)
        losses["loss"].backward()  # the student's double backward, outside autocast as Lightning does
    finally:
        module.remove_loss_term(term.name)
    grad = torch.cat([p.grad.flatten() for p in module.student.parameters()])
    return losses, t_map.detach(), s_map.detach(), grad, student.features["pool5"].dtype


def _rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)).max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["ewa", "swa", "sswa"])
def test_autocast_matches_fp32(mode, dtype):
    module, batch = _module(), _batch()
    with torch.no_grad():
        classes = module.teacher(batch["image"]).argmax(dim=1)
    ref = _step(module, batch, mode, None, classes)
    out = _step(module, batch, mode, dtype, classes)
    losses, t_map, s_map, grad, feature_dtype = out
    assert feature_dtype == dtype  # the networks did run in half precision
    for key, value in losses.items():  # every loss, and the maps, in fp32 (explicit casts)
        assert value.dtype == torch.float32 and torch.isfinite(value), key
    assert t_map.dtype == s_map.dtype == torch.float32
    loss_tol, t_tol, s_tol = TOL[dtype]
    assert abs(losses["match"].item() - ref[0]["match"].item()) <= loss_tol * ref[0]["match"].item()
    for key in ("kd", "task", "loss"):
        torch.testing.assert_close(losses[key], ref[0][key], rtol=loss_tol, atol=0.0, msg=key)
    assert _rel(t_map, ref[1]) < t_tol
    assert (s_map - ref[2]).norm() < s_tol * ref[2].norm()
    assert torch.isfinite(grad).all()
    assert torch.nn.functional.cosine_similarity(grad, ref[3], dim=0) > 0.98


def test_maps_and_losses_come_back_in_fp32_from_half_inputs():
    torch.manual_seed(0)
    a, g = torch.rand(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    for fn in (lambda x, y: swa_map(x, y), lambda x, y: sswa_map(x, y, 0.25, torch.Generator().manual_seed(0))):
        half = fn(a.bfloat16(), g.bfloat16())
        assert half.dtype == torch.float32
        # the sums run in fp32 on the bf16-rounded inputs: exactly the fp32 map of those inputs
        torch.testing.assert_close(half, fn(a.bfloat16().float(), g.bfloat16().float()))
    s, t = torch.rand(2, 1, 4, 4).bfloat16(), torch.rand(2, 1, 2, 2)
    assert matching_loss(s, t).dtype == torch.float32
    torch.testing.assert_close(matching_loss(s, t), matching_loss(s.float(), t))
    z = torch.randn(2, 3)
    assert multilabel_kd_loss(z.bfloat16(), z.bfloat16()).dtype == torch.float32
    assert matching_loss(s.double(), t.double()).dtype == torch.float64  # double stays double


def test_channels_last_gives_the_same_step():
    batch = _batch()
    with torch.no_grad():
        classes = _module().teacher(batch["image"]).argmax(dim=1)
    plain = _step(_module(), batch, "sswa", None, classes)
    module = _module(channels_last=True)
    conv = module.student.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.teacher.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    last = _step(module, batch, "sswa", None, classes)
    for key in plain[0]:
        torch.testing.assert_close(last[0][key], plain[0][key], rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(last[3], plain[3], rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="channels_last"):
        DistillationModule(_teacher(), vgg_small(num_classes=3, width_divisor=8), channels_last="yes")


class _EpochLoss(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.batch: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(sum(self.batch) / len(self.batch))
        self.batch = []


def _fit(precision):
    torch.manual_seed(0)
    dm = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4), num_train=96, num_val=16,
                             num_test=8, batch_size=16)
    module = DistillationModule(_teacher(), vgg_small(num_classes=3, width_divisor=8), alpha=0.5, optimizer="adamw",
                                lr=3e-3, channels_last=True)
    losses = _EpochLoss()
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", precision=precision, logger=False, deterministic=True,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, check_val_every_n_epoch=5,
                         callbacks=[AttributionMatching(mode="sswa", weight=10.0), losses])
    trainer.fit(module, dm)
    return losses.losses, trainer.callback_metrics


def test_bf16_sswa_fit_learns_as_fp32_does():
    """A short SSWA distillation (KD from a fixed random teacher + task + matching, channels_last)
    under ``precision="bf16-mixed"``: the mean loss of the last two epochs is below 80% of the
    first epoch's, and every epoch's is within 10% of the same fit's in fp32. (mAP over the labels is not asserted: the
    synthetic task needs tens of epochs, see attrpreserve.data.synthetic.)"""
    bf16, metrics = _fit("bf16-mixed")
    fp32, _ = _fit("32-true")
    assert all(torch.isfinite(torch.tensor(bf16))) and torch.isfinite(metrics["val/map"])
    assert metrics["train/match"].dtype == torch.float32
    assert sum(bf16[-2:]) / 2 < 0.8 * bf16[0], bf16
    for ours, theirs in zip(bf16, fp32):
        assert abs(ours - theirs) < 0.1 * theirs, (bf16, fp32)


# -- evaluation under autocast (``evaluate(precision=...)``, ``attrpreserve evaluate --precision``) --------------


def _evaluate(model, precision="32-true", **kwargs):
    from attrpreserve.evaluate import evaluate

    dm = SyntheticDataModule(num_classes=3, num_train=1, num_val=1, num_test=16, batch_size=8)
    return evaluate(model, dm, methods=["gradcam", "swa"], protocol="all", progress=False, bootstrap=0,
                    precision=precision, **kwargs)


def _scores(result):
    return {(name, key): row[key] for name, row in result["methods"].items() for key in ("auc", "point_acc", "energy")}


def test_evaluate_bf16_runs_the_networks_in_bf16_and_scores_as_fp32():
    model = _teacher()
    seen = []  # the output dtype of every convolution the evaluation runs
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(out.dtype) if isinstance(m, torch.nn.Conv2d) else None)
    try:
        full = _evaluate(model)
        assert set(seen) == {torch.float32}
        seen.clear()
        half = _evaluate(model, "bf16-mixed", faithfulness=True, faithfulness_steps=4)
        assert set(seen) == {torch.bfloat16}
    finally:
        handle.remove()
    assert half["provenance"]["precision"] == "bf16-mixed" and full["provenance"]["precision"] == "32-true"
    # the same 25 pairs, scored within rounding of fp32 (measured: AUC 9e-4, energy 2e-4, point accuracy equal)
    assert half["methods"]["gradcam"]["num_pairs"] == full["methods"]["gradcam"]["num_pairs"] > 20
    for key, value in _scores(full).items():
        tolerance = 1 / 16 if key[1] == "point_acc" else 0.01
        assert _scores(half)[key] == pytest.approx(value, abs=tolerance), key
    assert _scores(half) != _scores(full)  # bf16 did change the maps
    assert 0 <= half["methods"]["gradcam"]["deletion"] <= 1 and 0 <= half["methods"]["gradcam"]["insertion"] <= 1
    # the argument is an autocast around the whole evaluation, as a user's own would be
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outer = _evaluate(model)
    assert _scores(outer) == _scores(_evaluate(model, "bf16-mixed"))
    assert outer["metrics"] == pytest.approx(half["metrics"])


def test_evaluate_scores_half_precision_logits_in_fp32():
    """Logits out of a bf16 linear layer: 5.0 and 5.03125 are exact in bf16, their sigmoids are not
    (both round to 0.9922): the mAP is sklearn's on the float logits only if the scores are float32."""
    from sklearn.metrics import average_precision_score

    from attrpreserve.evaluate import evaluate

    class Linear(torch.nn.Module):
        num_classes = 2

        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):  # a linear layer, so autocast hands back bf16
            return torch.nn.functional.linear(self.logits.to(x.device), torch.eye(2))

    logits = torch.tensor([[5.0, -1.0], [5.03125, 2.0], [-3.0, 1.0]])
    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    masks[1, 2:4, 2:4] = 1  # class 0 in image 1 only (the higher of the near-tied logits)
    masks[1:, 5:7, 5:7] = 2  # class 1 in images 1 and 2
    labels = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    batch = {"image": torch.randn(3, 3, 8, 8), "labels": labels, "mask": masks}
    result = evaluate(Linear(logits), [batch], "center", protocol="all", progress=False, bootstrap=0,
                      baselines=(), precision="bf16-mixed")
    assert result["metrics"]["map"] == pytest.approx(average_precision_score(labels, logits, average="macro"))
    rounded = logits.bfloat16().sigmoid().float()  # what a bf16 sigmoid would have scored
    assert average_precision_score(labels, rounded, average="macro") < result["metrics"]["map"]
