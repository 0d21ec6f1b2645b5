"""DistillationModule + AttributionMatching: frozen teacher, loss terms, matching effect."""

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from attrpreserve.callbacks import AttributionMatching
from attrpreserve.losses import matching_loss, multilabel_kd_loss
from attrpreserve.modules import DistillationModule, TeacherModule
from attrpreserve.models import vgg_small
from attrpreserve.terms import ForwardResult


class BlobDataset(Dataset):
    """Tiny multi-label set: class c is a bright square in quadrant c (enough to train on)."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.3
        self.labels = (torch.rand(n, 3, generator=g) > 0.5).float()
        h = size // 2
        for i in range(n):
            for c in range(3):
                if self.labels[i, c]:
                    y, x = divmod(c, 2)
                    self.images[i, c, y * h + 4 : y * h + 10, x * h + 4 : x * h + 10] += 2.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "labels": self.labels[i], "index": i}


def _loader(n=32, seed=0, shuffle=False):
    return DataLoader(BlobDataset(n, seed=seed), batch_size=8, shuffle=shuffle)


def _trainer(**kw):
    defaults = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    defaults.update(kw)
    return pl.Trainer(**defaults)


def _teacher(seed=0):
    torch.manual_seed(seed)
    return vgg_small(num_classes=3, width_divisor=4)


def _student(seed=1):
    torch.manual_seed(seed)
    return vgg_small(num_classes=3, width_divisor=8)


class _ModeRecorder(pl.Callback):
    """(teacher.training, student.training) at every training and validation batch."""

    def __init__(self) -> None:
        self.seen = {"train": set(), "val": set()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen["train"].add((pl_module.teacher.training, pl_module.student.training))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["val"].add((pl_module.teacher.training, pl_module.student.training))


def test_teacher_frozen_eval_and_unchanged_after_fit():
    teacher = _teacher()
    # Give BN non-trivial running stats so a drift would show.
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(16, 3, 32, 32))
    before = copy.deepcopy(teacher.state_dict())
    module = DistillationModule(teacher, _student(), lr=0.05, milestones=(5,))
    modes = _ModeRecorder()
    trainer = _trainer(max_epochs=2, callbacks=[AttributionMatching(mode="sswa", weight=10.0), modes])
    trainer.fit(module, _loader(), _loader(16, seed=1))
    # Lightning switches the module to train mode for every training epoch (and back after each
    # validation): the student follows, the teacher stays in eval mode throughout and after.
    assert modes.seen["train"] == {(False, True)} and modes.seen["val"] == {(False, False)}, modes.seen
    assert not module.teacher.training and module.student.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    for k, v in module.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    # The optimiser holds the student's parameters only.
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.student.parameters()}
    module.eval()
    assert not module.teacher.training and not module.student.training
    module.train()
    assert not module.teacher.training and module.student.training


def test_teacher_stored_once_and_checkpoint_round_trip(tmp_path):
    module = DistillationModule(_teacher(), _student())
    trainer = _trainer(max_steps=1)
    trainer.fit(module, _loader(8))
    path = tmp_path / "d.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert not any(isinstance(v, torch.nn.Module) for v in ckpt["hyper_parameters"].values())
    assert ckpt["hyper_parameters"]["teacher"]["width_divisor"] == 4
    loaded = DistillationModule.load_from_checkpoint(path)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)


def test_loss_is_alpha_kd_plus_task_plus_weighted_terms():
    module = DistillationModule(_teacher(), _student(), kd="multilabel", temperature=3.0, alpha=0.7)
    module.eval()  # no dropout: the computation below must see the same logits

    class Constant:
        name, weight, student_layers, teacher_layers, teacher_grad = "const", 2.5, (), (), False

        def __call__(self, batch, teacher, student):
            return torch.tensor(0.4)

    module.add_loss_term(Constant())
    batch = next(iter(_loader(8)))
    t, s = module._forward_both(batch)
    losses = module.compute_losses(batch, t, s)
    s_logits, t_logits = module.student(batch["image"]), module.teacher(batch["image"])
    kd = multilabel_kd_loss(s_logits, t_logits, 3.0)
    task = torch.nn.functional.binary_cross_entropy_with_logits(s_logits, batch["labels"])
    torch.testing.assert_close(losses["loss"], 0.7 * kd + 0.3 * task + 2.5 * 0.4)
    assert set(losses) == {"task", "kd", "const", "loss"}


def test_teacher_forward_records_only_the_head():
    module = DistillationModule(_teacher(), _student())
    res = module.forward_teacher(torch.randn(2, 3, 32, 32), ["pool5"], grad=True)
    feat = res.features["pool5"]
    assert feat.is_leaf and feat.requires_grad and res.logits.requires_grad
    plain = module.forward_teacher(torch.randn(2, 3, 32, 32), ["pool5"], grad=False)
    assert not plain.logits.requires_grad


def test_several_terms_active_and_logged():
    module = DistillationModule(_teacher(), _student(), lr=0.01)
    callbacks = [AttributionMatching(mode="ewa", weight=1.0, name="ewa"),
                 AttributionMatching(mode="swa", weight=1.0, name="swa"),
                 AttributionMatching(mode="sswa", weight=1.0, layer="conv5_3", name="sswa")]
    trainer = _trainer(max_steps=2, callbacks=callbacks, limit_val_batches=1)
    trainer.fit(module, _loader(16), _loader(8))
    logged = trainer.logged_metrics
    for key in ("train/ewa", "train/swa", "train/sswa", "train/kd", "train/task", "val/ewa", "val/swa", "val/map"):
        assert key in logged, key
    assert module.loss_terms == {}  # terms removed at teardown


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "gradcam"}, "mode"),
        ({"drop_prob": 1.0}, "drop_prob"),
        ({"drop_prob": -0.1}, "drop_prob"),
        ({"weight": -1.0}, "weight"),
        ({"target": "top5"}, "target"),
    ],
)
def test_matching_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttributionMatching(**kwargs)


def test_matching_unknown_layer_fails_at_setup_before_any_step():
    module = DistillationModule(_teacher(), _student())
    trainer = _trainer(max_steps=1, callbacks=[AttributionMatching(layer="pool9")])
    with pytest.raises(ValueError, match="pool5"):
        trainer.fit(module, _loader(8))
    assert trainer.global_step == 0


def test_class_count_mismatch_rejected():
    with pytest.raises(ValueError, match="same number of classes"):
        DistillationModule(vgg_small(num_classes=3), vgg_small(num_classes=4))


@pytest.mark.parametrize("kwargs,match", [({"kd": "hinton"}, "kd"), ({"temperature": 0}, "temperature"),
                                          ({"alpha": 1.5}, "alpha")])
def test_distillation_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationModule(_teacher(), _student(), **kwargs)


def _map_distance(module, loader, mode="swa"):
    term = AttributionMatching(mode=mode)
    term.setup(None, module, "validate")
    total, n = 0.0, 0
    module.eval()
    for batch in loader:
        t, s = module._forward_both(batch)
        t_map, s_map = term.term.maps(batch, t, s)
        total += matching_loss(s_map, t_map).item() * len(batch["image"])
        n += len(batch["image"])
    term.teardown(None, module, "validate")
    return total / n


def test_matching_lowers_map_distance_against_plain_kd():
    teacher_module = TeacherModule(_teacher(), lr=0.05, milestones=(50,))
    _trainer(max_epochs=3).fit(teacher_module, _loader(64, shuffle=True))
    teacher = teacher_module.model
    distances = {}
    for name, callbacks in {"kd": [], "sswa": [AttributionMatching(mode="sswa", weight=100.0)]}.items():
        pl.seed_everything(0)
        module = DistillationModule(teacher, _student(), lr=0.02, milestones=(50,))
        _trainer(max_epochs=3, callbacks=callbacks).fit(module, _loader(64, shuffle=True))
        distances[name] = _map_distance(module, _loader(32, seed=5))
    assert distances["sswa"] < 0.7 * distances["kd"], distances


def test_matching_generator_state_is_checkpointed():
    cb = AttributionMatching(mode="sswa", seed=3)
    torch.rand(5, generator=cb.generator)
    state = cb.state_dict()
    expected = torch.rand(4, generator=cb.generator)
    other = AttributionMatching(mode="sswa", seed=99)
    other.load_state_dict(state)
    torch.testing.assert_close(torch.rand(4, generator=other.generator), expected)


def test_per_label_target_matches_every_image_class_pair():
    """One map pair per (image, ground-truth class), each the map of that class alone; an image
    whose labels are empty (a crop cut its objects out) takes the teacher's top-1 class; the loss
    is the mean over pairs of each pair's loss."""
    torch.manual_seed(0)
    module = DistillationModule(_teacher(), _student()).eval()
    cb = AttributionMatching(mode="swa", target="per_label")
    cb.setup(None, module, "fit")
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]])
    batch = {"image": torch.randn(3, 3, 32, 32), "labels": labels}
    t, s = module._forward_both(batch)
    t_map, s_map = cb.term.maps(batch, t, s)
    top1 = int(t.logits[2].argmax())
    pairs = sorted([(0, 0), (0, 2), (1, 1), (2, top1)], key=lambda p: (p[1], p[0]))  # grouped by class
    assert t_map.shape[0] == s_map.shape[0] == 4
    for k, (i, c) in enumerate(pairs):
        tt = module.forward_teacher(batch["image"][i:i + 1], ["pool5"], grad=True)
        ss = module.forward_student(batch["image"][i:i + 1], ["pool5"])
        torch.testing.assert_close(t_map[k:k + 1], cb.term._maps(tt, tt.features["pool5"], torch.tensor([c]), True))
        torch.testing.assert_close(s_map[k:k + 1], cb.term._maps(ss, ss.features["pool5"], torch.tensor([c]), False))
    expected = sum(matching_loss(s_map[k:k + 1], t_map[k:k + 1]) for k in range(4)) / 4
    torch.testing.assert_close(cb.term(batch, t, s), expected)


def test_labels_target_averages_class_maps():
    module = DistillationModule(_teacher(), _student()).eval()
    cb = AttributionMatching(mode="swa", target="labels")
    cb.setup(None, module, "fit")
    batch = {"image": torch.randn(2, 3, 32, 32), "labels": torch.tensor([[1.0, 0, 1], [0, 1, 0]])}
    t, s = module._forward_both(batch)
    t_map, _ = cb.term.maps(batch, t, s)
    per_class = []
    for c in (0, 2):
        tt = module.forward_teacher(batch["image"][:1], ["pool5"], grad=True)
        per_class.append(cb.term._maps(tt, tt.features["pool5"], torch.tensor([c]), True).detach())
    torch.testing.assert_close(t_map[:1], (per_class[0] + per_class[1]) / 2)
