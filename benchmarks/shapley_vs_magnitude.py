"""Shapley link pruning (SHAP-SAE) against magnitude pruning, the two experiments of Rhee and Park.

(a) Synthetic: x1 is constant, x5 = x2 + x3 and x6 = x3 - x4 carry what the target
    y = x5 * x6 needs. A 6-16-1 MLP is trained; the table lists each input's Shapley unit
    importance (mean baseline, pre-activation): x1 gets exactly 0, x5 and x6 should rank first.
(b) Digits: a 64-32-16-32-64 autoencoder on scikit-learn's 8x8 digits (no download) is trained,
    then pruned at increasing importance levels m. At the sparsity eta each m gives, the same
    trained network is pruned three ways, side by side:
      shapley     per-layer Shapley masks (the method)
      global-mag  global magnitude pruning (|w| over all layers) to the same eta
      layer-mag   magnitude pruning with the per-layer counts the Shapley masks chose
                  (separates the link criterion from the per-layer allocation)
    Test reconstruction MSE is reported right after pruning and after a short masked fine-tune.

Usage: python benchmarks/shapley_vs_magnitude.py [--seeds 3] [--epochs 150] [--finetune 20]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from attrpreserve.pruning.shapley import model_link_importance, prune_by_importance, unit_importance

LEVELS = (1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6)


def _train(net: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int, weight_decay: float = 0.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            F.mse_loss(net(x[idx]), y[idx]).backward()
            opt.step()


def synthetic(seed: int) -> list[float]:
    """Experiment (a): unit importances of x1..x6 after training."""
    n = 1024
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    x5, x6 = z[:, 0] + z[:, 1], z[:, 1] - z[:, 2]
    x = torch.cat([torch.full((n, 1), 0.7), z, x5[:, None], x6[:, None]], dim=1)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    _train(net, x, (x5 * x6)[:, None], epochs=60, lr=1e-2, seed=seed, weight_decay=1e-4)
    return unit_importance(net[0], x).tolist()


def autoencoder() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid(),
    )


def _mse(net: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(net(x), x).item()


def _layers(net: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]


def _magnitude_global(net: nn.Module, num_pruned: int) -> None:
    params = [(m, "weight") for _, m in _layers(net)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=num_pruned)


def _magnitude_per_layer(net: nn.Module, kept: dict[str, tuple[int, int]]) -> None:
    for name, module in _layers(net):
        k, total = kept[name]
        prune.l1_unstructured(module, "weight", amount=total - k)


def digits(seed: int, epochs: int, finetune: int, levels: tuple[float, ...]) -> list[dict[str, float]]:
    """Experiment (b): one row per importance level."""
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    train, test = data[order[:1437]], data[order[1437:]]
    torch.manual_seed(seed)
    base = autoencoder()
    _train(base, train, train, epochs, 3e-3, seed)
    phis = {name: li.phi for name, li in model_link_importance(base, train).items()}
    rows = []
    for m in levels:
        row: dict[str, float] = {"m": m, "dense": _mse(base, test)}
        shap = copy.deepcopy(base)
        report = prune_by_importance(shap, phis, m)
        total = sum(t for _, t in report.layers.values())
        num_pruned = round(report.sparsity * total)
        glob, layer = copy.deepcopy(base), copy.deepcopy(base)
        if num_pruned:
            _magnitude_global(glob, num_pruned)
            _magnitude_per_layer(layer, report.layers)
        row["eta"] = report.sparsity
        for key, net in (("shapley", shap), ("global-mag", glob), ("layer-mag", layer)):
            row[key] = _mse(net, test)
            if finetune:
                _train(net, train, train, finetune, 1e-3, seed + 1)
                row[key + "+ft"] = _mse(net, test)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=150, help="autoencoder training epochs (batch 128)")
    parser.add_argument("--finetune", type=int, default=20, help="masked fine-tuning epochs after pruning (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    print("(a) synthetic: Shapley unit importance of the first layer's inputs (mean baseline)")
    print("seed " + "".join(f"{f'x{i}':>8}" for i in range(1, 7)) + "  x5,x6 first")
    synth = []
    for seed in range(args.seeds):
        imp = synthetic(seed)
        synth.append(imp)
        ok = min(imp[4:]) > max(imp[1:4])
        print(f"{seed:>4} " + "".join(f"{v:8.4f}" for v in imp) + f"  {ok}")

    print(f"\n(b) digits autoencoder 64-32-16-32-64, test MSE (mean of {args.seeds} seeds; "
          f"+ft: after {args.finetune} masked epochs)")
    per_seed = [digits(seed, args.epochs, args.finetune, LEVELS) for seed in range(args.seeds)]
    keys = [k for k in per_seed[0][0] if k != "m"]
    rows = [{"m": r0["m"], **{k: sum(rs[i][k] for rs in per_seed) / len(per_seed) for k in keys}}
            for i, r0 in enumerate(per_seed[0])]
    header = f"{'m':>5} {'eta':>6} {'dense':>8}" + "".join(f"{k:>14}" for k in keys if k not in ("eta", "dense"))
    print(header)
    for r in rows:
        print(f"{r['m']:>5.2f} {r['eta']:>6.3f} {r['dense']:>8.5f}"
              + "".join(f"{r[k]:>14.5f}" for k in keys if k not in ("eta", "dense")))
    wins = sum(r["shapley"] < r["global-mag"] for r in rows if r["eta"] > 0)
    print(f"\nShapley below global magnitude (no fine-tune) at {wins}/{sum(r['eta'] > 0 for r in rows)} levels; "
          f"{time.perf_counter() - start:.1f} s")
    return {"synthetic": synth, "digits": rows}


if __name__ == "__main__":
    main()
