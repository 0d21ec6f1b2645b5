"""Complexity counts, channel removal, structure restore and deployment export (no Trainer)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from attrpreserve.models import vgg16, vgg_small
from attrpreserve.pruning.complexity import count_flops, count_parameters, sparsity
from attrpreserve.pruning.masks import effective_tensor, folded_state_dict, is_masked, make_permanent
from attrpreserve.pruning.surgery import (
    channels_to_remove, conv_layers, export_pruned, remove_channels, restore_structure,
)


def _tiny() -> nn.Sequential:
    # 8x8 input: conv 3->4 (pad 1) 8x8, pool 4x4, grouped conv 4->4 (groups 2, pad 1) 4x4,
    # conv 4->6 (no pad) 2x2, flatten 24, linear 24->5.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(24, 5),
    )


def _mask_first_conv(net: nn.Sequential, zeros: int = 27) -> None:
    mask = torch.ones(108)
    mask[torch.randperm(108, generator=torch.Generator().manual_seed(0))[:zeros]] = 0
    prune.custom_from_mask(net[0], "weight", mask.view(4, 3, 3, 3))


# -- complexity ----------------------------------------------------------------------------


def test_flops_equal_a_hand_count():
    net = _tiny()
    per_sample = 8 * 8 * (4 * 3 * 9) + 4 * 4 * (4 * 2 * 9) + 2 * 2 * (6 * 4 * 9) + 24 * 5
    assert per_sample == 6912 + 1152 + 864 + 120
    assert count_flops(net, (1, 3, 8, 8), nonzero=False) == per_sample
    assert count_flops(net, (2, 3, 8, 8), nonzero=False) == 2 * per_sample
    assert count_flops(net, (1, 3, 8, 8), nonzero=True) == per_sample  # dense weights: same
    _mask_first_conv(net)
    assert count_flops(net, (1, 3, 8, 8), nonzero=True) == per_sample - 8 * 8 * 27
    assert count_flops(net, (1, 3, 8, 8), nonzero=False) == per_sample


def test_flops_leave_modes_and_statistics_untouched():
    net = _tiny().train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_flops(net, (2, 3, 8, 8))
    assert net.training and not net[1].training and net[0].training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_parameters_and_sparsity_equal_a_hand_count():
    net = _tiny()
    dense = (3 * 4 * 9 + 4) + 8 + (4 * 2 * 9 + 4) + (4 * 6 * 9 + 6) + (24 * 5 + 5)
    assert count_parameters(net) == dense == sum(p.numel() for p in net.parameters())
    assert count_parameters(net, nonzero=True) == dense - 4  # BatchNorm biases start at 0
    assert sparsity(net) == 0.0
    _mask_first_conv(net)
    assert count_parameters(net) == dense  # weight_orig counted once, masks not at all
    assert count_parameters(net, nonzero=True) == dense - 4 - 27
    assert sparsity(net, "conv") == 27 / (108 + 72 + 216)
    assert sparsity(net, "conv+linear") == 27 / (108 + 72 + 216 + 120)
    # The effective weight is read even before the pruning hook refreshed `weight`.
    with torch.no_grad():
        net[0].weight_mask[0].zero_()
    assert sparsity(net) == int((effective_tensor(net[0], "weight") == 0).sum()) / (108 + 72 + 216)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sparsity(_tiny(), "linear"), "parameters"),
        (lambda: sparsity(nn.Sequential(nn.ReLU())), "module"),
        (lambda: count_flops(_tiny(), (8, 8, "x")), "input_size"),
        (lambda: count_flops(_tiny(), (0, 3, 8, 8)), "input_size"),
        (lambda: count_flops(nn.Sequential(nn.ReLU()), (1, 3)), "module"),
    ],
)
def test_complexity_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- channel removal -----------------------------------------------------------------------


def _trained_like(net: nn.Module) -> nn.Module:
    # BatchNorm with non-trivial statistics and biases, so a kept-but-wrong channel shows.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.1, generator=g)
    return net.eval()


def _zero_channels(net: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    # The unpruned network with the removed channels silenced. Zeroing a conv filter is not
    # enough: its BatchNorm channel still outputs bias - gamma * mean / std. Zeroing the BN
    # weight and bias makes the channel's BN output exactly 0 (ReLU 0, max-pool 0), so every
    # later layer sees the zero that removing the channel means (the next conv's input channel
    # and, after the last conv, the linear columns of that channel multiply 0).
    modules = list(net.features)
    with torch.no_grad():
        for name, idxs in removed.items():
            index = int(name.split(".")[1])
            conv, bn = modules[index], modules[index + 1]
            conv.weight[idxs] = 0
            conv.bias[idxs] = 0
            bn.weight[idxs] = 0
            bn.bias[idxs] = 0
    return net


@pytest.mark.parametrize(
    "build, rates",
    [
        (lambda: vgg_small(num_classes=3, width_divisor=8), [0.5, 0.0, 0.25, 0.5]),
        (lambda: vgg_small(num_classes=3, width_divisor=8), 0.3),
        (lambda: vgg16(num_classes=3, width_divisor=8), [0.5, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_removed_channels_preserve_the_function_of_the_kept_ones(build, rates):
    torch.manual_seed(0)
    net = _trained_like(build())
    reference = _trained_like(build())
    reference.load_state_dict(net.state_dict())
    norms = {name: conv.weight.abs().sum(dim=(1, 2, 3)) for name, conv in conv_layers(net)}
    channels = {name: conv.out_channels for name, conv in conv_layers(net)}
    images = torch.randn(4, 3, 32, 32)

    removed = remove_channels(net, rates, importance="l1", example_input=images[:1])

    per_layer = rates if isinstance(rates, list) else [rates] * len(channels)
    for (name, conv), rate in zip(conv_layers(net), per_layer):
        n = channels_to_remove(channels[name], rate)
        assert len(removed[name]) == n and conv.out_channels == channels[name] - n
        # The removed filters are the n smallest L1 norms.
        kept = sorted(set(range(channels[name])) - set(removed[name]))
        if n:
            assert norms[name][removed[name]].max() <= norms[name][kept].min()
    last = list(channels)[-1]
    side = net.avgpool.output_size[0]
    assert net.classifier[1].in_features == (channels[last] - len(removed[last])) * side * side
    assert not net.training  # mode restored (eval, as given)
    expected = _zero_channels(reference, removed)(images)
    torch.testing.assert_close(net(images), expected, rtol=1e-5, atol=1e-5)
    assert count_parameters(net) < count_parameters(reference)
    assert count_flops(net, (1, 3, 32, 32)) < count_flops(reference, (1, 3, 32, 32))


def test_linear_keeps_the_columns_of_the_surviving_channels():
    # The reference scripts tile the channel mask over the flattened columns; the right
    # columns of channel c are the s*s consecutive ones c*s*s ... (c+1)*s*s-1.
    torch.manual_seed(0)
    net = vgg_small(num_classes=3, width_divisor=8).eval()
    before = net.classifier[1].weight.detach().clone()
    removed = remove_channels(net, [0, 0, 0, 0.5], example_input=torch.zeros(1, 3, 32, 32))
    kept = sorted(set(range(16)) - set(removed["features.11"]))
    columns = torch.cat([torch.arange(c * 64, (c + 1) * 64) for c in kept])
    assert torch.equal(net.classifier[1].weight, before[:, columns])


def test_remove_channels_keeps_train_mode_and_statistics():
    net = vgg_small(num_classes=3, width_divisor=8).train()
    stats = net.features[1].running_mean.clone()
    remove_channels(net, 0.0, example_input=torch.randn(2, 3, 32, 32))
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net.features[1].running_mean, stats)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rates": [0.5, 0.5]}, "rates"),
        ({"rates": 1.0}, "rates"),
        ({"rates": -0.1}, "rates"),
        ({"rates": [0.9, 0, 0, 0]}, "every conv layer"),  # 4 channels: round(3.6) = 4
        ({"rates": 0.1, "importance": "taylor"}, "importance"),
        ({"rates": 0.1, "example_input": [1, 3, 32, 32]}, "example_input"),
    ],
)
def test_remove_channels_errors(kwargs, match):
    net = vgg_small(num_classes=3, width_divisor=8)
    with pytest.raises(ValueError, match=match):
        remove_channels(net, **kwargs)


def test_remove_channels_refuses_masks_and_models_without_convs():
    net = vgg_small(num_classes=3, width_divisor=8)
    prune.identity(net.features[0], "weight")
    with pytest.raises(ValueError, match="make_permanent"):
        remove_channels(net, 0.5, example_input=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="model"):
        remove_channels(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), 0.5, example_input=torch.zeros(1, 3))


# -- restore, fold, export -----------------------------------------------------------------


def _masked_and_thinned() -> nn.Module:
    torch.manual_seed(0)
    net = _trained_like(vgg_small(num_classes=3, width_divisor=8))
    remove_channels(net, [0.5, 0, 0.25, 0.5], example_input=torch.zeros(1, 3, 32, 32))
    for _, conv in conv_layers(net):
        prune.l1_unstructured(conv, "weight", amount=0.4)
    return net


def test_restore_structure_loads_masks_and_removed_channels():
    saved = _masked_and_thinned()
    state = {f"student.{k}": v for k, v in saved.state_dict().items()}
    state["teacher.features.0.weight"] = torch.zeros(1)  # other prefixes are ignored
    fresh = vgg_small(num_classes=3, width_divisor=8).eval()
    restore_structure(fresh, state, prefix="student.")
    fresh.load_state_dict(saved.state_dict())  # strict: every key and shape fits
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh(images), saved(images), rtol=0, atol=0)
    for (name, conv), (_, ref) in zip(conv_layers(fresh), conv_layers(saved)):
        assert torch.equal(conv.weight_mask, ref.weight_mask), name
        assert conv.out_channels == ref.out_channels and conv.in_channels == ref.in_channels
    assert fresh.features[1].num_features == 2 and fresh.classifier[1].in_features == 8 * 64
    # A second call changes nothing (the module already has the saved structure).
    params = [id(p) for p in fresh.parameters()]
    restore_structure(fresh, saved.state_dict())
    assert [id(p) for p in fresh.parameters()] == params


def test_restore_structure_drops_masks_the_state_dict_lacks():
    net = vgg_small(num_classes=3, width_divisor=8)
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    prune.identity(net.features[0], "weight")
    restore_structure(net, plain)
    assert not is_masked(net)
    net.load_state_dict(plain)


def test_make_permanent_and_export_give_plain_weights_that_reload(tmp_path):
    net = _masked_and_thinned()
    images = torch.randn(2, 3, 32, 32)
    expected = net(images)
    folded = folded_state_dict(net)
    assert is_masked(net) and not any(k.endswith(("_orig", "_mask")) for k in folded)
    path = export_pruned(net, tmp_path / "deploy" / "student.pt")
    state = torch.load(path, weights_only=True)
    assert state.keys() == folded.keys()
    assert sparsity(net) == pytest.approx(sum(int((state[f"{n}.weight"] == 0).sum()) for n, _ in conv_layers(net))
                                          / sum(state[f"{n}.weight"].numel() for n, _ in conv_layers(net)))
    fresh = restore_structure(vgg_small(num_classes=3, width_divisor=8).eval(), state)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(images), expected, rtol=0, atol=0)
    make_permanent(net)
    assert not is_masked(net) and isinstance(net.features[0].weight, nn.Parameter)
    torch.testing.assert_close(net(images), expected, rtol=0, atol=0)
