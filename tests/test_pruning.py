"""UnstructuredPruning / StructuredPruning with a real Trainer on CPU (tiny vgg_small students)."""

import logging
import math
import re

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LambdaCallback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attrpreserve.callbacks import AttributionMatching
from attrpreserve.callbacks.pruning import StructuredPruning, UnstructuredPruning
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule, TeacherModule
from attrpreserve.pruning import (
    batch_images, conv_layers, count_flops, count_parameters, effective_tensor, pruned_network, sparsity,
)


class Blobs(Dataset):
    """Multi-label 32 px images: class c is a bright square in quadrant c."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g) * 0.3
        self.labels = (torch.rand(n, 3, generator=g) > 0.5).float()
        for i in range(n):
            for c in range(3):
                if self.labels[i, c]:
                    y, x = divmod(c, 2)
                    self.images[i, c, y * 16 + 4 : y * 16 + 10, x * 16 + 4 : x * 16 + 10] += 2.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "labels": self.labels[i], "index": i}


def _loader(n=16, seed=0):
    return DataLoader(Blobs(n, seed), batch_size=8, shuffle=False)


def _module(momentum=0.9, weight_decay=1e-4, lr=0.05):
    torch.manual_seed(0)
    teacher = vgg_small(num_classes=3, width_divisor=4)
    teacher.train()
    with torch.no_grad():  # non-trivial BN statistics, so a drift would show
        teacher(torch.randn(8, 3, 32, 32))
    teacher.eval()
    torch.manual_seed(1)
    student = vgg_small(num_classes=3, width_divisor=8, dropout=0.0)  # no dropout: resumes are exact
    return DistillationModule(teacher, student, kd=None, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              milestones=(100,))


def _trainer(callbacks, max_epochs, **kw):
    saves = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    defaults = dict(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=saves,
                    enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                    limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks)
    defaults.update(kw)
    return pl.Trainer(**defaults)


def _masks(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight_mask.clone() for name, layer in conv_layers(net)}


class Probe(Callback):
    """Records the student and the optimiser at the first batch of every epoch (listed after the
    pruning callback, so it sees the state right after a round)."""

    def __init__(self) -> None:
        self.states, self.optimizers, self.epoch_end = {}, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch not in self.states:
            self.states[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.student.state_dict().items()}
            opt = trainer.optimizers[0]
            self.optimizers[trainer.current_epoch] = (opt, len(opt.state))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_end[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.student.state_dict().items()}


# -- unstructured ----------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_is_exact_after_every_round(scope):
    rounds, amount = 16, 0.2
    module, probe = _module(), Probe()
    pruning = UnstructuredPruning(amount=amount, every_n_epochs=1, rounds=rounds, scope=scope, verbose=False)
    _trainer([pruning, probe], max_epochs=rounds + 1, limit_train_batches=1).fit(module, _loader())
    layers = conv_layers(module.student)
    total = sum(layer.weight_mask.numel() for _, layer in layers)
    for epoch in range(rounds + 1):
        r = min(epoch + 1, rounds)
        target = 1 - (1 - amount) ** r
        masks = {k: v for k, v in probe.states[epoch].items() if k.endswith("weight_mask")}
        if scope == "global":  # the zeros over all conv weights, to one weight
            zeros = sum(int((m == 0).sum()) for m in masks.values())
            assert zeros == math.floor(total * target + 0.5), (epoch, zeros)
        else:  # each tensor on its own
            for key, m in masks.items():
                assert int((m == 0).sum()) == math.floor(m.numel() * target + 0.5), (epoch, key)
    assert 1 - (1 - amount) ** rounds == pytest.approx(0.9718525, abs=1e-7)
    slack = 0.5 / total if scope == "global" else 0.5 * len(layers) / total  # rounding per tensor
    assert abs(sparsity(module.student) - (1 - 0.8**16)) <= slack
    assert pruning.rounds_done == rounds
    # Only conv weights were pruned: biases, BatchNorm and the linear layer are untouched.
    assert not hasattr(module.student.classifier[1], "weight_mask")


def test_pruned_weights_stay_zero_through_sgd_with_momentum_and_weight_decay():
    module, probe = _module(momentum=0.9, weight_decay=0.05, lr=0.1), Probe()
    pruning = UnstructuredPruning(amount=0.5, every_n_epochs=10, rounds=1, reset_optimizer=False, verbose=False)
    _trainer([pruning, probe], max_epochs=3).fit(module, _loader())
    for name, layer in conv_layers(module.student):
        mask = layer.weight_mask
        assert int((mask == 0).sum()) > 0
        # The optimiser (momentum, weight decay) moved the hidden weight_orig everywhere ...
        assert not torch.equal(layer.weight_orig[mask == 0], probe.states[0][f"{name}.weight_orig"][mask == 0])
        # ... but the effective weight, as the forward sees it, is still exactly zero there.
        assert torch.count_nonzero(effective_tensor(layer, "weight")[mask == 0]) == 0
    module.student(torch.zeros(1, 3, 32, 32))  # the pruning hook refreshes `weight`
    for _, layer in conv_layers(module.student):
        assert torch.count_nonzero(layer.weight[layer.weight_mask == 0]) == 0
    # Rounds 2 and 3 never ran (every 10 epochs), and the optimiser was kept.
    assert pruning.rounds_done == 1
    assert probe.optimizers[0][0] is probe.optimizers[2][0] and probe.optimizers[2][1] > 0


def test_fresh_optimiser_after_each_round_and_metrics_logged():
    module, probe = _module(), Probe()
    pruning = UnstructuredPruning(amount=0.3, every_n_epochs=2, rounds=2, start_epoch=1, parameters="conv+linear",
                                  verbose=False)
    trainer = _trainer([pruning, probe], max_epochs=4)
    trainer.fit(module, _loader())
    assert pruning.round_epochs == [1, 3]
    opts = {epoch: opt for epoch, (opt, _) in probe.optimizers.items()}
    assert opts[0] is not opts[1] and opts[1] is opts[2] and opts[2] is not opts[3]
    assert probe.optimizers[1][1] == 0 and probe.optimizers[3][1] == 0  # empty momentum after a round
    assert trainer.optimizers[0] is opts[3]
    params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert params == {id(p) for p in module.student.parameters()}
    # Masks of ones from setup on (one parameter layout for the whole fit), nothing pruned at epoch 0.
    assert torch.count_nonzero(probe.states[0]["features.0.weight_mask"] == 0) == 0
    # The last round's values: conv and linear weights at 1 - 0.7^2, counted at 32 px.
    metrics = trainer.callback_metrics
    assert metrics["prune/sparsity"].item() == pytest.approx(1 - 0.7**2, abs=1e-4)
    assert metrics["prune/sparsity"].item() == pytest.approx(sparsity(module.student, "conv+linear"), abs=1e-6)
    assert metrics["prune/params"].item() == count_parameters(module.student, nonzero=True)
    assert metrics["prune/flops"].item() == count_flops(module.student, (1, 3, 32, 32), nonzero=True)
    assert metrics["prune/flops"].item() < count_flops(module.student, (1, 3, 32, 32), nonzero=False)


@pytest.mark.parametrize("rewind", ["init", 1])
def test_rewind_restores_the_surviving_weights(rewind):
    module, probe = _module(), Probe()
    initial = {k: v.clone() for k, v in module.student.state_dict().items()}
    pruning = UnstructuredPruning(amount=0.3, every_n_epochs=1, rounds=2, start_epoch=1, rewind=rewind, verbose=False)
    _trainer([pruning, probe], max_epochs=3).fit(module, _loader())
    reference = probe.epoch_end[0] if rewind == 1 else initial  # weights at the start of epoch 1 / of the fit
    for epoch in (1, 2):  # right after each round
        state = probe.states[epoch]
        for key, value in state.items():
            if key.endswith("_mask"):
                continue
            ref = reference[key] if key in reference else reference[key.replace("_orig", "")]
            torch.testing.assert_close(value, ref, rtol=0, atol=0, msg=f"{epoch} {key}")
        mask = state["features.8.weight_mask"]
        assert int((mask == 0).sum()) > 0
    assert not torch.equal(probe.states[2]["features.8.weight_mask"], probe.states[1]["features.8.weight_mask"])
    snapshot = pruning.state_dict()["rewind_snapshot"]
    assert "features.8.weight" in snapshot and not any(k.endswith(("_mask", "_orig")) for k in snapshot)


@pytest.mark.parametrize("rewind, reset_optimizer", [(None, True), ("init", True), (None, False)])
def test_resume_mid_schedule_equals_an_uninterrupted_run(tmp_path, rewind, reset_optimizer):
    def run(callbacks, max_epochs, ckpt_path=None):
        module = _module()
        pruning = UnstructuredPruning(amount=0.3, every_n_epochs=1, rounds=3, rewind=rewind,
                                      reset_optimizer=reset_optimizer, verbose=False)
        at_start = []  # the callback's state once the checkpoint is restored
        spy = LambdaCallback(on_fit_start=lambda *_: at_start.append(pruning.rounds_done))
        trainer = _trainer([pruning, spy, *callbacks], max_epochs=max_epochs)
        trainer.fit(module, _loader(), ckpt_path=ckpt_path)
        return module, pruning, at_start[0]

    saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full, full_cb, _ = run([saver], max_epochs=4, ckpt_path=None)
    mid = tmp_path / "epoch=1.ckpt"  # after rounds 1 and 2, before round 3
    checkpoint = torch.load(mid, weights_only=False)
    assert any(k.endswith("weight_mask") for k in checkpoint["state_dict"])
    states = [s for k, s in checkpoint["callbacks"].items() if k.startswith("UnstructuredPruning")]
    assert [s["rounds_done"] for s in states] == [2]
    assert (states[0]["rewind_snapshot"] is None) == (rewind is None)

    # 1. load_from_checkpoint: the masks of the checkpoint, in a freshly built student.
    loaded = DistillationModule.load_from_checkpoint(mid)
    for name, layer in conv_layers(loaded.student):
        assert torch.equal(layer.weight_mask, checkpoint["state_dict"][f"student.{name}.weight_mask"])
    assert sparsity(loaded.student) == pytest.approx(1 - 0.7**2, abs=1e-3)

    # 2. trainer.fit(ckpt_path=...): same round counter, then the same masks and weights as
    # the uninterrupted run (with rewind="init": to the snapshot of the first fit, not the resume;
    # with the optimiser kept: its momentum restored onto the same parameter layout).
    resumed, resumed_cb, rounds_at_start = run([], max_epochs=4, ckpt_path=mid)
    assert rounds_at_start == 2 and resumed_cb.rounds_done == full_cb.rounds_done == 3
    for name, mask in _masks(full.student).items():
        assert torch.equal(_masks(resumed.student)[name], mask), name
    for key, value in full.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value, msg=key)


def test_rounds_are_logged_as_text_on_rank_zero_when_verbose(caplog):
    for verbose in (True, False):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="attrpreserve.callbacks.pruning"):
            pruning = UnstructuredPruning(amount=0.5, every_n_epochs=1, rounds=1, verbose=verbose)
            _trainer([pruning], max_epochs=1, limit_train_batches=1).fit(_module(), _loader())
        messages = [r.getMessage() for r in caplog.records if r.name == "attrpreserve.callbacks.pruning"]
        assert len(messages) == int(verbose)
        if verbose:
            assert "round 1/1 at epoch 0: sparsity 0.5000" in messages[0]


def test_several_instances_have_their_own_state():
    a = UnstructuredPruning(amount=0.2, rounds=2, parameters="conv")
    b = UnstructuredPruning(amount=0.5, rounds=1, parameters="conv+linear", start_epoch=3)
    assert a.state_key != b.state_key
    a.load_state_dict({"rounds_done": 2})
    assert (a.rounds_done, b.rounds_done) == (2, 0)
    b.load_state_dict({})  # keys added later are read with defaults
    assert b.rounds_done == 0 and b.rewind_snapshot is None
    s1, s2 = StructuredPruning(rates=0.3), StructuredPruning(rates=0.5, at_epoch=2)
    assert s1.state_key != s2.state_key


# -- structured ------------------------------------------------------------------------------


def test_structured_pruning_in_fit_and_both_ways_to_resume(tmp_path):
    rates = [0.5, 0.0, 0.25, 0.5]

    def run(max_epochs, ckpt_path=None, callbacks=()):
        module, probe = _module(), Probe()
        pruning = StructuredPruning(rates=rates, at_epoch=1, verbose=False)
        trainer = _trainer([pruning, probe, *callbacks], max_epochs=max_epochs)
        trainer.fit(module, _loader(), ckpt_path=ckpt_path)
        return module, pruning, probe, trainer

    dense_flops = count_flops(_module().student, (1, 3, 32, 32))
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full, cb, probe, trainer = run(3, callbacks=[saver])
    channels = [conv.out_channels for _, conv in conv_layers(full.student)]
    assert channels == [2, 8, 12, 8]
    assert cb.done and cb.channels == dict(zip([n for n, _ in conv_layers(full.student)], channels))
    assert full.student.classifier[1].in_features == 8 * 64
    # Nothing removed at epoch 0; the optimiser was rebuilt with the new parameters at epoch 1.
    assert probe.states[0]["features.0.weight"].shape[0] == 4
    assert probe.optimizers[0][0] is not probe.optimizers[1][0] and probe.optimizers[1][1] == 0
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == {
        id(p) for p in full.student.parameters()}
    metrics = trainer.callback_metrics
    assert metrics["prune/params"].item() == count_parameters(full.student, nonzero=True)
    assert metrics["prune/flops"].item() == count_flops(full.student, (1, 3, 32, 32)) < dense_flops
    dense_conv = 3 * 4 * 9 + 4 * 8 * 9 + 8 * 16 * 9 + 16 * 16 * 9
    pruned_conv = 3 * 2 * 9 + 2 * 8 * 9 + 8 * 12 * 9 + 12 * 8 * 9
    assert metrics["prune/sparsity"].item() == pytest.approx(1 - pruned_conv / dense_conv)

    after_surgery = tmp_path / "epoch=1.ckpt"
    loaded = DistillationModule.load_from_checkpoint(after_surgery)
    assert [conv.out_channels for _, conv in conv_layers(loaded.student)] == channels
    assert loaded.student(torch.zeros(1, 3, 32, 32)).shape == (1, 3)

    for checkpoint in (after_surgery, tmp_path / "epoch=0.ckpt"):  # resumed after / before the surgery
        resumed, resumed_cb, _, _ = run(3, ckpt_path=checkpoint)
        assert resumed_cb.done and resumed_cb.removed == cb.removed
        for key, value in full.student.state_dict().items():
            torch.testing.assert_close(resumed.student.state_dict()[key], value, msg=key)


def test_teacher_is_never_pruned_and_untouched():
    for callback in (UnstructuredPruning(amount=0.5, every_n_epochs=1, rounds=2, verbose=False),
                     StructuredPruning(rates=0.5, verbose=False)):
        module = _module()
        before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
        _trainer([callback], max_epochs=2).fit(module, _loader())
        after = module.teacher.state_dict()
        assert after.keys() == before.keys()
        for key, value in before.items():
            assert torch.equal(after[key], value), key
        assert sparsity(module.teacher) == 0.0 and not module.teacher.training


@pytest.mark.parametrize("make", [
    lambda: StructuredPruning(rates=[0.5, 0, 0, 0.5], verbose=False),
    lambda: UnstructuredPruning(amount=0.5, every_n_epochs=1, rounds=2, verbose=False),
])
def test_matching_term_runs_after_pruning(make):
    module = _module()

    class Record(Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # The step's matching loss, with the student as pruned at that step.
            student = pl_module.student
            self.values.append((trainer.callback_metrics["train/match"].item(),
                                student.features[11].out_channels, sparsity(student)))

    record, callback = Record(), make()
    matching = AttributionMatching(mode="sswa", weight=10.0, drop_prob=0.3, layer="pool5")
    trainer = _trainer([callback, matching, record], max_epochs=2, limit_val_batches=1)
    trainer.fit(module, _loader(), _loader(8, 1))
    assert len(record.values) == 4 and all(math.isfinite(v) and v > 0 for v, _, _ in record.values)
    assert math.isfinite(trainer.callback_metrics["val/match"].item())
    assert module.teacher.features[11].out_channels == 32  # the teacher's map has more channels
    if isinstance(callback, StructuredPruning):  # pruned before the first step, at the matched layer too
        assert all(channels == 8 for _, channels, _ in record.values)
    else:
        assert [round(eta, 2) for _, _, eta in record.values] == [0.5, 0.5, 0.75, 0.75]


# -- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"amount": 0.0}, "amount"), ({"amount": 1.0}, "amount"), ({"amount": -0.2}, "amount"),
        ({"amount": "0.2"}, "amount"), ({"rounds": 0}, "rounds"), ({"rounds": 1.5}, "rounds"),
        ({"every_n_epochs": 0}, "every_n_epochs"), ({"scope": "local"}, "scope"),
        ({"parameters": "linear"}, "parameters"), ({"rewind": "start"}, "rewind"), ({"rewind": -1}, "rewind"),
        ({"rewind": True}, "rewind"), ({"rewind": 3, "start_epoch": 2}, "rewind"), ({"start_epoch": -1}, "start_epoch"),
        ({"reset_optimizer": 1}, "reset_optimizer"), ({"input_size": (1, 3, 0, 32)}, "input_size"),
        ({"input_size": ("a", "b")}, "input_size"), ({"verbose": 2}, "verbose"),
    ],
)
def test_unstructured_argument_errors(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as err:
        UnstructuredPruning(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)  # names the value too


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"rates": 1.0}, "rates"), ({"rates": -0.1}, "rates"), ({"rates": [0.2, 1.5]}, "rates"),
        ({"rates": []}, "rates"),
        ({"rates": "0.3"}, "rates"), ({"rates": 0.3, "importance": "taylor"}, "importance"),
        ({"rates": 0.3, "at_epoch": -1}, "at_epoch"), ({"rates": 0.3, "verbose": None}, "verbose"),
    ],
)
def test_structured_argument_errors(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        StructuredPruning(**kwargs)


class _NoLayers(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.ReLU())


@pytest.mark.parametrize(
    "callback, module, match",
    [
        (StructuredPruning(rates=[0.5, 0.5]), _module, "rates.*4"),
        (StructuredPruning(rates=[0.9, 0, 0, 0]), _module, "rates.*every conv layer"),
    ],
)
def test_setup_errors_name_the_argument(callback, module, match):
    with pytest.raises(ValueError, match=match):
        _trainer([callback], max_epochs=1).fit(module(), _loader())


@pytest.mark.parametrize(
    "callback, match",
    [
        (StructuredPruning(rates=0.3), "`model`"),
        (UnstructuredPruning(), "`parameters`"),
        (UnstructuredPruning(parameters="conv+linear"), "`parameters`"),
    ],
)
def test_setup_errors_for_a_network_without_conv_or_linear_layers(callback, match):
    with pytest.raises(ValueError, match=match):
        callback.setup(_trainer([], 1), _NoLayers(), "fit")


def test_setup_error_for_a_module_without_a_network():
    class Empty(pl.LightningModule):
        pass

    with pytest.raises(ValueError, match="student"):
        UnstructuredPruning().setup(_trainer([], 1), Empty(), "fit")


# -- schedules and saved settings --------------------------------------------------------------


def test_callable_amount_is_a_schedule_of_the_epoch():
    schedule = {0: 0.5, 1: 0.0, 2: 0.25}  # round 2 prunes nothing
    module, probe = _module(), Probe()
    pruning = UnstructuredPruning(amount=schedule.get, every_n_epochs=1, rounds=3, verbose=False)
    assert pruning.amounts == [0.5, 0.0, 0.25]
    _trainer([pruning, probe], max_epochs=3, limit_train_batches=1).fit(module, _loader())
    total = sum(layer.weight_mask.numel() for _, layer in conv_layers(module.student))
    kept = 1.0
    for epoch in range(3):
        kept *= 1 - schedule[epoch]
        zeros = sum(int((v == 0).sum()) for k, v in probe.states[epoch].items() if k.endswith("weight_mask"))
        assert zeros == math.floor(total * (1 - kept) + 0.5), epoch  # 1 - 0.5, 1 - 0.5, 1 - 0.5 * 0.75
    assert torch.equal(probe.states[1]["features.0.weight_mask"], probe.states[0]["features.0.weight_mask"])
    assert pruning.rounds_done == 3 and pruning.target_sparsity(3) == pytest.approx(0.625)
    # A constant schedule prunes exactly as the float.
    assert UnstructuredPruning(amount=lambda e: 0.2, rounds=16).target_sparsity(16) == pytest.approx(1 - 0.8**16)


@pytest.mark.parametrize(
    "amount, match",
    [
        (lambda epoch: 1.0, r"amount\(0\) returned 1.0"),
        (lambda epoch: -0.1 if epoch == 30 else 0.2, r"amount\(30\) returned -0.1"),
        (lambda epoch: "0.2", r"amount\(0\) returned '0.2'"),
        (lambda epoch: True, r"amount\(0\) returned True"),
        (lambda epoch: 0.0, "returns 0 at every round epoch"),
    ],
)
def test_callable_amount_is_checked_at_construction(amount, match):
    with pytest.raises(ValueError, match=f"`amount`.*{match}"):
        UnstructuredPruning(amount=amount, rounds=2)


def _same_name_schedule(value):
    return lambda epoch: value  # every schedule made here has the same __qualname__


def test_load_state_dict_compares_the_saved_settings():
    with pytest.raises(ValueError, match=r"UnstructuredPruning.amount: 0.3 -> 0.2") as err:
        UnstructuredPruning(amount=0.2).load_state_dict(UnstructuredPruning(amount=0.3).state_dict())
    assert "UnstructuredPruning.amounts" in str(err.value)  # the per-round values too
    with pytest.raises(ValueError, match=r"UnstructuredPruning.rounds: 4 -> 16"):
        UnstructuredPruning().load_state_dict({"rounds": 4, "rounds_done": 2})
    old = UnstructuredPruning(amount=_same_name_schedule(0.3))
    new = UnstructuredPruning(amount=_same_name_schedule(0.2))
    assert old.state_key == new.state_key  # a schedule goes by its name, as in the training recipe
    with pytest.raises(ValueError, match=r"UnstructuredPruning.amounts: \[0.3, .*\] -> \[0.2, "):
        new.load_state_dict(old.state_dict())
    with pytest.raises(ValueError, match=r"StructuredPruning.rates: \[0.5, 0.0\] -> 0.3"):
        StructuredPruning(rates=0.3).load_state_dict({"rates": [0.5, 0.0], "done": True})
    same = UnstructuredPruning(amount=0.3, rounds=4)
    same.load_state_dict({**UnstructuredPruning(amount=0.3, rounds=4).state_dict(), "rounds_done": 3})
    assert same.rounds_done == 3


@pytest.mark.parametrize(
    "saved, resumed, match",
    [  # a changed float changes state_key: the module's recipe check speaks, not the callback
        (0.2, 0.3, r"callbacks differ .*UnstructuredPruning.amount: 0.2 -> 0.3"),
        # a schedule with the same name but other values: the recipe cannot see it, the callback does
        (_same_name_schedule(0.2), _same_name_schedule(0.3), r"state differs: UnstructuredPruning.amounts: "),
    ],
)
def test_a_changed_amount_on_resume_gives_one_error(tmp_path, saved, resumed, match):
    module = _module()
    trainer = _trainer([UnstructuredPruning(amount=saved, every_n_epochs=1, rounds=2, verbose=False)], max_epochs=1,
                       limit_train_batches=1)
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    pruning = UnstructuredPruning(amount=resumed, every_n_epochs=1, rounds=2, verbose=False)
    with pytest.raises(ValueError, match=match) as err:
        _trainer([pruning], max_epochs=2, limit_train_batches=1).fit(_module(), _loader(),
                                                                     ckpt_path=tmp_path / "last.ckpt")
    assert ("state differs" in str(err.value)) != ("callbacks differ" in str(err.value))


# -- the pruning package: one resolver, one batch helper, the old import paths ---------------


def test_pruned_network_is_the_student_else_the_model_else_the_module_never_the_teacher():
    distill = _module()
    assert pruned_network(distill) is distill.student
    teacher = TeacherModule(vgg_small(num_classes=3, width_divisor=8))
    assert pruned_network(teacher) is teacher.model
    plain = nn.Sequential(nn.Linear(2, 1))
    assert pruned_network(plain) is plain

    class OnlyTeacher(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.teacher = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="only a `teacher`"):
        pruned_network(OnlyTeacher())
    for callback in (UnstructuredPruning(), StructuredPruning(rates=0.3)):
        with pytest.raises(ValueError, match="only a `teacher`"):
            callback.setup(_trainer([], 1), OnlyTeacher(), "fit")


def test_batch_images_of_every_batch_form():
    x = torch.randn(4, 3, 8, 8)
    for batch in (x, {"image": x, "labels": torch.ones(4)}, (x, torch.ones(4)), [x]):
        assert batch_images(batch) is x
    for bad in ({"labels": x}, (), ("x", x), None):
        with pytest.raises(ValueError, match="dict with key 'image'"):
            batch_images(bad)


def test_unstructured_pruning_reads_the_input_size_from_tuple_batches():
    module = _module()
    images = torch.stack([Blobs()[i]["image"] for i in range(8)])
    tuples = DataLoader(list(zip(images, torch.zeros(8))), batch_size=4)
    module.training_step = lambda batch, batch_idx: module.student(batch[0]).sum()
    pruning = UnstructuredPruning(amount=0.5, every_n_epochs=1, rounds=1, verbose=False)
    _trainer([pruning], max_epochs=1, limit_train_batches=1).fit(module, tuples)
    assert pruning.input_size == (1, 3, 32, 32)


# old module -> (new module named in the warning, {old name: name in attrpreserve.pruning / callbacks})
OLD_PATHS = {
    "attrpreserve.surgery": ("attrpreserve.pruning.surgery", {"restore_structure": "restore_structure",
                                                              "fold_masks": "fold_masks",
                                                              "conv_layers": "conv_layers"}),
    "attrpreserve.complexity": ("attrpreserve.pruning.complexity", {"count_flops": "count_flops",
                                                                    "prunable_layers": "prunable_layers",
                                                                    "effective_tensor": "effective_tensor"}),
    "attrpreserve.shapley": ("attrpreserve.pruning.shapley", {"shapley_prune": "shapley_prune",
                                                              "prunable_layers": "shapley_layers",
                                                              "batch_inputs": "batch_images"}),
    "attrpreserve.callbacks.shapley": ("attrpreserve.callbacks.shapley_pruning", {"ShapleyPruning": "ShapleyPruning"}),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_modules_warn_once_and_reexport_the_new_objects(old):
    import importlib
    import sys
    import warnings

    import attrpreserve.callbacks
    import attrpreserve.pruning

    new, names = OLD_PATHS[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} is deprecated: import .*{re.escape(new)}"):
        shim = importlib.import_module(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert importlib.import_module(old) is shim  # once: a second import is silent
    for old_name, new_name in names.items():
        home = attrpreserve.callbacks if new_name == "ShapleyPruning" else attrpreserve.pruning
        assert getattr(shim, old_name) is getattr(home, new_name), old_name


def test_pruning_package_imports_no_lightning():
    import ast
    from pathlib import Path

    import attrpreserve.pruning

    for path in Path(attrpreserve.pruning.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.split(".")[0] in ("lightning", "pytorch_lightning"), (path.name, name)
                assert not name.startswith(("attrpreserve.callbacks", "attrpreserve.modules")), (path.name, name)
    masks = Path(attrpreserve.pruning.__file__).parent / "masks.py"  # what attrpreserve.models imports
    assert "from attrpreserve" not in masks.read_text() and "import attrpreserve" not in masks.read_text()
