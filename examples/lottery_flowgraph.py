"""Lottery ticket on 8x8 digits, then look at the winning ticket as a flowgraph.

A 64-32-32-10 ReLU MLP is trained on scikit-learn's digits (bundled, no download). Each round
prunes the smallest-magnitude surviving weights over all layers (``global_unstructured``), rewinds
the survivors (and the biases) to their initial values and retrains: iterative magnitude pruning
with rewind (Frankle and Carbin 2019). The rate per round takes the network to ``--target`` of its
weights after ``--rounds`` rounds. Each round prints the test accuracy and the flowgraph's size
(:func:`attrpreserve.flowgraph.flowgraph`: vertices = non-zero operations, edges = non-zero
weights plus one per ReLU). The last ticket is written to ``--out`` as SVG and PNG (first layer
collapsed into 8x8 weight images) and as Graphviz DOT text.

Usage: python examples/lottery_flowgraph.py --out runs/lottery [--rounds 8 --target 0.02 --epochs 60]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from attrpreserve.flowgraph import draw, flowgraph, save_svg, to_dot


def mlp(hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # pixels in [0, 1]
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1437], order[1437:]
    return x[train], y[train], x[test], y[test]


def train(net: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int, lr: float = 3e-3) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


def rewind(net: nn.Module, initial: dict[str, Tensor]) -> None:
    """Reset every surviving weight and bias to its initial value (masks stay)."""
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, nn.Linear):
                weight = module.weight_orig if hasattr(module, "weight_orig") else module.weight
                weight.copy_(initial[f"{name}.weight"])
                module.bias.copy_(initial[f"{name}.bias"])


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/lottery"), help="folder for the figures")
    parser.add_argument("--rounds", type=int, default=8, help="pruning rounds after the dense run")
    parser.add_argument("--target", type=float, default=0.02, help="fraction of weights left at the end")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs per round")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args(argv)
    if not 0.0 < args.target <= 1.0:
        raise ValueError(f"Expected argument `--target` in (0, 1], but got {args.target}.")
    if args.rounds < 1:
        raise ValueError(f"Expected argument `--rounds` >= 1, but got {args.rounds}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = digits(args.seed)
    torch.manual_seed(args.seed)
    net = mlp(args.hidden)
    initial = copy.deepcopy({k: v.detach() for k, v in net.state_dict().items()})
    params = [(m, "weight") for m in net.modules() if isinstance(m, nn.Linear)]
    total = sum(m.weight.numel() for m, _ in params)

    rows = []
    print(f"{'round':>5} {'weights':>8} {'kept':>7} {'test acc':>9} {'vertices':>9} {'edges':>6}")
    for r in range(args.rounds + 1):
        if r > 0:
            keep = round(total * args.target ** (r / args.rounds))
            remaining = sum(int(m.weight_mask.sum()) if hasattr(m, "weight_mask") else m.weight.numel()
                            for m, _ in params)
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=remaining - keep)
            rewind(net, initial)
        train(net, x_train, y_train, args.epochs, args.seed + r, args.lr)
        weights = sum(int((m.weight != 0).sum()) for m, _ in params)
        graph = flowgraph(net)
        row = {"round": r, "weights": weights, "kept": weights / total, "accuracy": accuracy(net, x_test, y_test),
               "vertices": graph.number_of_nodes(), "edges": graph.number_of_edges()}
        rows.append(row)
        print(f"{r:>5} {weights:>8} {row['kept']:>7.2%} {row['accuracy']:>9.3f} {row['vertices']:>9} {row['edges']:>6}")

    args.out.mkdir(parents=True, exist_ok=True)
    ticket = flowgraph(net, input_bounds=(0.0, 1.0), input_shape=(8, 8), collapse_first_layer=True)
    save_svg(ticket, args.out / "ticket.svg")
    figure = draw(ticket)
    figure.savefig(args.out / "ticket.png", dpi=120, bbox_inches="tight")
    (args.out / "ticket.dot").write_text(to_dot(flowgraph(net)))
    print(f"collapsed ticket: {ticket.number_of_nodes()} vertices, {ticket.number_of_edges()} edges; "
          f"wrote {args.out}/ticket.svg, ticket.png, ticket.dot ({time.perf_counter() - start:.1f} s)")
    return rows


if __name__ == "__main__":
    main()
