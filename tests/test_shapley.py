"""Shapley link importance and pruning (SHAP-SAE) against brute-force Shapley enumeration."""

import itertools
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset

from attrpreserve.callbacks import ShapleyPruning
from attrpreserve.pruning.shapley import (
    importance_mask,
    link_importance,
    link_shapley,
    model_link_importance,
    shapley_prune,
    unit_importance,
)


def _exact_shapley(value, players):
    """Shapley values of ``value(frozenset)`` by enumerating every subset."""
    n = len(players)
    phi = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                total += weight * (value(s | {p}) - value(s))
        phi[p] = total
    return phi


def _exact_by_orders(value, players):
    """Shapley values as the average marginal contribution over all orders."""
    phi = dict.fromkeys(players, 0.0)
    orders = list(itertools.permutations(players))
    for order in orders:
        coalition = frozenset()
        for p in order:
            phi[p] += (value(coalition | {p}) - value(coalition)) / len(orders)
            coalition = coalition | {p}
    return phi


def _linear_value(layer, x, base, unit, act):
    """v(S): the unit's (activated) output when the links not in S carry the baseline input."""

    def value(s):
        mixed = torch.tensor([x[j] if j in s else base[j] for j in range(len(x))], dtype=torch.float64)
        with torch.no_grad():
            return float(act(layer(mixed[None]))[0, unit])

    return value


def _layer(in_f, out_f, seed):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f).double()


@pytest.mark.parametrize("output", ["pre", "post"])
def test_linear_closed_form_and_post_equal_subset_enumeration(output):
    layer = _layer(3, 2, 0)  # 6 links
    x = torch.tensor([0.8, -1.3, 2.0], dtype=torch.float64)
    base = torch.tensor([0.1, 0.5, -0.4], dtype=torch.float64)
    # A large num_permutations drives the sampling error far below the tolerance for "post".
    est = link_shapley(layer, x[None], base, output=output, num_permutations=20000,
                       generator=torch.Generator().manual_seed(0))
    act = (lambda t: t) if output == "pre" else torch.relu
    for unit in range(2):
        exact = _exact_shapley(_linear_value(layer, x.tolist(), base.tolist(), unit, act), [0, 1, 2])
        expected = torch.tensor([exact[j] for j in range(3)], dtype=torch.float64)
        tol = 0 if output == "pre" else 4 * est.error[0, unit].max().item()
        torch.testing.assert_close(est.values[0, unit], expected, rtol=1e-12, atol=tol + 1e-12)
    if output == "pre":
        torch.testing.assert_close(est.values[0], layer.weight * (x - base))


def test_conv_closed_form_equals_enumeration_over_each_patch():
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 2, padding=1).double()
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    base = torch.tensor([0.3], dtype=torch.float64)
    est = link_shapley(conv, x, base)  # [positions, 2, 1, 2, 2]
    out_h, out_w = 3, 3
    assert est.values.shape == (out_h * out_w, 2, 1, 2, 2)
    for p in range(out_h * out_w):
        r, c = divmod(p, out_w)
        # The links of position (r, c): kernel offset (dr, dc) reads input pixel (r+dr-1, c+dc-1);
        # a padding pixel cannot be changed, so it is in every coalition (value 0 either way).
        links = [(dr, dc) for dr in range(2) for dc in range(2)]

        def value(s, o):
            image = x.clone()
            for dr, dc in links:
                i, j = r + dr - 1, c + dc - 1
                if (dr, dc) not in s and 0 <= i < 2 and 0 <= j < 2:
                    image[0, 0, i, j] = base[0]
            with torch.no_grad():
                return float(conv(image)[0, o, r, c])

        for o in range(2):
            exact = _exact_shapley(lambda s, o=o: value(s, o), links)
            expected = torch.tensor([[exact[(dr, dc)] for dc in range(2)] for dr in range(2)], dtype=torch.float64)
            torch.testing.assert_close(est.values[p, o, 0], expected, rtol=0, atol=1e-12)


def test_permutation_estimate_within_its_bound_of_exact_post_values():
    layer = _layer(6, 1, 2)  # 6 links into one ReLU unit
    with torch.no_grad():
        layer.bias.fill_(-0.3)  # make the ReLU bend inside the coalitions
    x = torch.tensor([[1.0, -0.5, 0.7, -1.2, 0.4, 0.9]], dtype=torch.float64)
    exact_dict = _exact_by_orders(_linear_value(layer, x[0].tolist(), [0.0] * 6, 0, torch.relu), list(range(6)))
    exact = torch.tensor([exact_dict[j] for j in range(6)], dtype=torch.float64)
    # Efficiency: the exact values sum to ReLU(out) - ReLU(bias).
    assert math.isclose(exact.sum().item(), (torch.relu(layer(x)) - torch.relu(layer.bias)).item(), abs_tol=1e-12)
    n, seeds = 32, 200
    estimates = torch.stack([
        link_shapley(layer, x, None, "post", n, torch.Generator().manual_seed(s)).values[0, 0] for s in range(seeds)
    ])
    bound = link_shapley(layer, x, None, "post", n).error[0, 0]
    torch.testing.assert_close(bound, (layer.weight[0] * x[0]).abs() / (2 * math.sqrt(n)))
    assert (bound > 0).all() and not torch.allclose(estimates[0], exact)  # sampling is not exact here
    # The stated bound holds for the expected absolute error (<= the standard deviation) ...
    assert ((estimates - exact).abs().mean(0) <= bound).all()
    # ... the estimate is unbiased ...
    assert ((estimates.mean(0) - exact).abs() <= 4 * bound / math.sqrt(seeds)).all()
    # ... and Hoeffding's tail: every single estimate lies within the 1 - 1e-4 half-width.
    half_width = 2 * bound * math.sqrt(math.log(2 / 1e-4) / 2)
    assert ((estimates - exact).abs() <= half_width).all()


def test_link_importance_is_mean_absolute_shapley_and_unit_importance_its_mean():
    layer = _layer(4, 3, 3)
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mean = x.mean(0)
    for output in ("pre", "post"):
        gen = torch.Generator().manual_seed(5)
        li = link_importance(layer, [x[:20], x[20:]], output=output, num_permutations=16, generator=gen)
        gen = torch.Generator().manual_seed(5)
        per_example = torch.cat([link_shapley(layer, part, mean, output, 16, gen).values for part in (x[:20], x[20:])])
        torch.testing.assert_close(li.phi, per_example.abs().mean(0))
        if output == "pre":
            assert (li.error == 0).all()
        else:
            torch.testing.assert_close(li.error, (layer.weight * (x - mean)[:, None, :]).abs().mean(0) / 8)
    torch.testing.assert_close(unit_importance(layer, x), link_importance(layer, x).phi.mean(0))


def test_conv_importance_averages_over_positions_and_data():
    torch.manual_seed(6)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    li = link_importance(conv, x)
    channel_mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(li.phi, link_shapley(conv, x, channel_mean).values.abs().mean(0))
    assert unit_importance(conv, x).shape == (2,)


def test_importance_mask_keeps_smallest_set_reaching_level():
    phi = torch.tensor([1.0, 3.0, 2.0, 4.0])  # total 10, sorted 4, 3, 2, 1
    assert importance_mask(phi, 0.6).tolist() == [False, True, False, True]  # 4 + 3 = 7 >= 6
    assert importance_mask(phi, 0.7).tolist() == [False, True, False, True]  # 7 >= 7 exactly
    assert importance_mask(phi, 0.71).tolist() == [False, True, True, True]  # needs 9
    assert importance_mask(phi, 0.4).tolist() == [False, False, False, True]  # 4 >= 4
    assert importance_mask(phi, 1.0).tolist() == [True, True, True, True]
    # Zero-importance links are never needed, even at m = 1; ties are kept in index order.
    assert importance_mask(torch.tensor([0.0, 5.0, 0.0]), 1.0).tolist() == [False, True, False]
    assert importance_mask(torch.tensor([2.0, 2.0, 2.0, 2.0]), 0.5).tolist() == [True, True, False, False]
    for bad in (0, 0.0, -0.1, 1.01, True, "0.5"):
        with pytest.raises(ValueError, match="importance_level"):
            importance_mask(phi, bad)


def test_shapley_prune_reports_eta_and_masks_survive_training():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(64, 5)
    batches = [{"image": x[:32], "labels": None}, (x[32:], torch.zeros(32))]
    phis = model_link_importance(net, batches)  # before pruning (output="pre" is deterministic)
    report = shapley_prune(net, batches, importance_level=0.8)
    masks = {"0": net[0].weight_mask, "2": net[2].weight_mask}
    for name, mask in masks.items():
        assert report.layers[name] == (int(mask.sum()), mask.numel())
        assert 0 < mask.sum() < mask.numel()
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    assert report.sparsity == pytest.approx(pruned / (20 + 12))
    # Each layer kept the smallest set reaching 80 % of its own total importance.
    for name, mask in masks.items():
        phi = phis[name].phi.flatten()
        kept = phi[mask.flatten().bool()]
        assert kept.sum() >= 0.8 * phi.sum() - 1e-6
        assert kept.sum() - kept.min() < 0.8 * phi.sum()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    for name, mask in masks.items():
        assert (net.get_submodule(name).weight[mask == 0] == 0).all()


def test_model_link_importance_restores_modes_and_matches_layer_inputs():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 2)).train()
    x = torch.randn(16, 4)
    phis = model_link_importance(net, DataLoader(x, batch_size=8), layers=["3"])
    assert net.training and net[1].training
    hidden = torch.relu(net[0](x)).detach()  # eval-mode input of layer "3" (dropout off)
    torch.testing.assert_close(phis["3"].phi, link_importance(net[3], hidden).phi)
    with pytest.raises(ValueError, match=r"\['0', '3'\]"):
        model_link_importance(net, x, layers=["1"])


def test_argument_errors_name_the_argument():
    layer = nn.Linear(2, 2)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="`output`"):
        link_importance(layer, x, output="relu")
    with pytest.raises(ValueError, match="`num_permutations`"):
        link_importance(layer, x, output="post", num_permutations=0)
    with pytest.raises(ValueError, match="`baseline`"):
        link_importance(layer, x, baseline="median")
    with pytest.raises(ValueError, match="`baseline`"):
        link_importance(layer, x, baseline=torch.zeros(3))
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv2d"):
        link_importance(nn.ReLU(), x)
    with pytest.raises(ValueError, match="groups=1"):
        link_importance(nn.Conv2d(2, 2, 1, groups=2), torch.zeros(1, 2, 3, 3))


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x1 constant; x5 = x2 + x3 and x6 = x3 - x4 carry what the target needs; y = x5 * x6."""
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    x5, x6 = z[:, 0] + z[:, 1], z[:, 1] - z[:, 2]
    x = torch.cat([torch.full((n, 1), 0.7), z, x5[:, None], x6[:, None]], dim=1)
    return x, (x5 * x6)[:, None]


def test_experiment_a_constant_input_unimportant_and_carriers_rank_first():
    x, y = _synthetic(512, 9)
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * y.var().item()  # it learned the target
    importance = unit_importance(net[0], x)
    # Mean baseline: x1 - mean(x1) is exactly 0 (float64 mean of a constant), so is its importance.
    assert importance[0].item() == 0.0
    assert importance[4:].min() > importance[1:4].max()
    # With a zero baseline the constant unit's links do "contribute" w * 0.7: not 0.
    assert unit_importance(net[0], x, baseline="zero")[0] > 0


# -- the callback ---------------------------------------------------------------------------------
class _Dicts(Dataset):
    def __init__(self, n: int = 64) -> None:
        self.x, y = _synthetic(n, 10)
        self.labels = (y[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "labels": self.labels[i], "mask": torch.zeros(1), "index": i}


class _Distill(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.teacher = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        self.student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.student(batch["image"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(_Dicts(), batch_size=16)

    def on_load_checkpoint(self, checkpoint):
        # The module contract: re-create the prune reparametrisation before the weights load.
        for key in checkpoint["state_dict"]:
            if key.startswith("student.") and key.endswith(".weight_mask"):
                module = self.student.get_submodule(key[len("student."):-len(".weight_mask")])
                if not hasattr(module, "weight_mask"):
                    prune.identity(module, "weight")


def _trainer(tmp_path, callback, epochs, **kw):
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path, **kw,
    )


def test_callback_prunes_student_only_logs_sparsity_and_resumes(tmp_path):
    module = _Distill()
    teacher_before = [p.clone() for p in module.teacher.parameters()]
    callback = ShapleyPruning(importance_level=0.7, at_epoch=1, num_batches=2)
    _trainer(tmp_path, callback, 1, enable_checkpointing=False).fit(module)
    assert not hasattr(module.student[0], "weight_mask") and not callback.applied  # epoch 0 < at_epoch

    trainer = _trainer(tmp_path, callback, 2, enable_checkpointing=False)
    trainer.fit(module)
    assert callback.applied
    masks = {n: module.student.get_submodule(n).weight_mask.bool() for n in ("0", "2")}
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert 0 < pruned < 64
    assert trainer.callback_metrics["prune/sparsity"].item() == pytest.approx(pruned / 64)
    for name, mask in masks.items():
        assert torch.equal(callback.masks[name], mask)
        assert (module.student.get_submodule(name).weight[~mask] == 0).all()  # still zero after training
    assert all(not hasattr(m, "weight_mask") for m in module.teacher.modules())
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, module.teacher.parameters()))

    # State round trip onto a fresh module: masks come back at train start, none re-estimated.
    state = callback.state_dict()
    restored = ShapleyPruning(importance_level=0.7, at_epoch=1, num_batches=2)
    restored.load_state_dict(state)
    fresh = _Distill()
    _trainer(tmp_path, restored, 1, enable_checkpointing=False).fit(fresh)
    for name, mask in masks.items():
        assert torch.equal(fresh.student.get_submodule(name).weight_mask.bool(), mask)

    # Full checkpoint resume: weights with their masks, and the callback's state.
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed_cb = ShapleyPruning(importance_level=0.7, at_epoch=1, num_batches=2)
    resumed = _Distill()
    resumed_trainer = _trainer(tmp_path, resumed_cb, 3, enable_checkpointing=False)
    resumed_trainer.fit(resumed, ckpt_path=ckpt)
    assert resumed_cb.applied
    assert resumed_trainer.callback_metrics["prune/sparsity"].item() == pytest.approx(pruned / 64)
    for name, mask in masks.items():
        assert torch.equal(resumed.student.get_submodule(name).weight_mask.bool(), mask)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"importance_level": 0.0}, "importance_level"),
        ({"importance_level": 0.5, "at_epoch": -1}, "at_epoch"),
        ({"importance_level": 0.5, "num_batches": 0}, "num_batches"),
        ({"importance_level": 0.5, "layers": "0"}, "layers"),
        ({"importance_level": 0.5, "layers": []}, "layers"),
        ({"importance_level": 0.5, "output": "relu"}, "output"),
        ({"importance_level": 0.5, "num_permutations": 0}, "num_permutations"),
        ({"importance_level": 0.5, "baseline": "median"}, "baseline"),
        ({"importance_level": 0.5, "seed": 1.5}, "seed"),
    ],
)
def test_callback_validates_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        ShapleyPruning(**kwargs)


def test_callback_unknown_layer_fails_at_setup_listing_valid_names(tmp_path):
    callback = ShapleyPruning(importance_level=0.5, layers=["1"])
    with pytest.raises(ValueError, match=r"\['0', '2'\]"):
        _trainer(tmp_path, callback, 1, enable_checkpointing=False).fit(_Distill())


def test_callback_prunes_the_same_network_as_the_other_pruning_callbacks(tmp_path):
    from attrpreserve.pruning import pruned_network

    class _Model(pl.LightningModule):  # a TeacherModule-like module: the network is `model`
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    module, callback = _Model(), ShapleyPruning(importance_level=0.5)
    callback.setup(_trainer(tmp_path, callback, 1), module, "fit")
    assert pruned_network(module) is module.model and callback._names == ["0", "2"]  # named inside `model`
    with pytest.raises(ValueError, match="ShapleyPruning.importance_level: 0.7 -> 0.5"):
        callback.load_state_dict(ShapleyPruning(importance_level=0.7).state_dict())
