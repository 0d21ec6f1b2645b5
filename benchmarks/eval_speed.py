"""Evaluation speed: our batched protocol against a straightforward per-pair reference loop.

Both evaluate the same model on the same synthetic localisation split with Grad-CAM at conv5_3
under the paper's protocol (classes present in the mask and predicted positive, exact-pixel
pointing game, void left out, min-max-normalised maps for the AUC):

- ours: ``attrpreserve.evaluate.evaluate`` (batched: one forward per batch for the predictions,
  one for all Grad-CAM pairs, one backward from the attributed layer up);
- reference: per image one forward for the prediction, then per (image, class) pair one forward
  and one ``.backward()`` (parameter gradients included, as the paper's scripts do), sklearn
  ``roc_auc_score`` per map and a Python pointing-game check; sklearn for mAP/F1.

The numbers must agree (asserted); the script prints images/s of both and the speed ratio.

What bounds the ratio: ours costs one forward per image plus a tiny backward from conv5_3 up;
the reference costs one forward per image plus a forward and a full backward (about two forwards
more, parameter gradients included) per pair, i.e. about 4.5 forward-equivalents per image at
~1.2 pairs per image. On a CPU, where a batch-1 convolution is about as efficient per image as a
batched one, that is the ratio you see (measured 4-5x, vgg_small, 64 px, 2-core CPU, quiet
machine); batch-1 launch overhead and the per-map sklearn AUC make the gap much larger on a GPU.
On a CPU shared with other jobs, torch's intra-op threads spin against them and every small op
of the batch-1 loop pays for it (ratios of ~20x were measured that way): compare with
``--threads 1`` or on a quiet machine.

    .venv/bin/python benchmarks/eval_speed.py --num-images 128 --batch-size 32
    .venv/bin/python benchmarks/eval_speed.py --device cuda --arch vgg16 --image-size 227 --batch-size 64
    .venv/bin/python benchmarks/eval_speed.py --device cuda --arch vgg16 --image-size 227 --batch-size 64 \
        --precisions bf16-mixed --preload      # ours in bf16 against fp32, batches already on the GPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attrpreserve.data import SyntheticDataModule  # noqa: E402
from attrpreserve.evaluate import evaluate  # noqa: E402
from attrpreserve.models import create_model, resolve_layer  # noqa: E402
from benchmarks._common import sync  # noqa: E402

VOID = 255


def reference_evaluate(model: nn.Module, loader, num_classes: int, device: torch.device) -> dict:
    """The straightforward loop: batch size 1, one forward + one backward per (image, class) pair."""
    model.eval()
    layer = resolve_layer(model, "conv5_3")
    store: dict = {}

    def keep(_m, _i, output):
        if output.requires_grad:
            output.retain_grad()
        store["features"] = output

    handle = layer.register_forward_hook(keep)
    all_logits, all_labels, aucs, hits = [], [], [], []
    try:
        for batch in loader:
            for b in range(batch["image"].shape[0]):
                image = batch["image"][b:b + 1].to(device)
                mask = batch["mask"][b].numpy()
                with torch.no_grad():
                    logits = model(image)[0]
                all_logits.append(logits.cpu().numpy())
                all_labels.append(batch["labels"][b].numpy())
                for c in range(num_classes):
                    if not (mask == c + 1).any() or logits[c] <= 0:
                        continue
                    model.zero_grad()
                    out = model(image)
                    out[0, c].backward()
                    features, grads = store["features"], store["features"].grad
                    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True))
                    cam = F.interpolate(cam, size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
                    cam = cam.detach().cpu().double().numpy()
                    span = cam.max() - cam.min()
                    cam = (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)
                    valid = mask != VOID
                    target = mask[valid] == c + 1
                    if target.all():
                        continue
                    aucs.append(roc_auc_score(target, cam[valid]))
                    # first maximum in row-major order among valid pixels
                    point = np.unravel_index(np.argmax(np.where(valid, cam, -np.inf)), cam.shape)
                    hits.append(mask[point] == c + 1)
    finally:
        handle.remove()
    logits = np.stack(all_logits)
    labels = np.stack(all_labels).astype(int)
    per_class = [average_precision_score(labels[:, k], logits[:, k]) for k in range(num_classes) if labels[:, k].any()]
    per_image = [average_precision_score(labels[i], logits[i]) for i in range(len(labels)) if labels[i].any()]
    return {
        "map": float(np.mean(per_class)),
        "map_image": float(np.mean(per_image)),
        "f1": float(f1_score(labels, (logits > 0).astype(int), average="micro", zero_division=0)),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
        "point_acc": float(np.mean(hits)) if hits else math.nan,
        "num_pairs": len(hits),
    }


def train_briefly(model: nn.Module, dm: SyntheticDataModule, steps: int, device: torch.device) -> None:
    """A few AdamW steps on the training split so the maps are not those of a random network."""
    if steps <= 0:
        return
    dm.setup("fit")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    done = 0
    while done < steps:
        for batch in dm.train_dataloader():
            loss = F.binary_cross_entropy_with_logits(model(batch["image"].to(device)), batch["labels"].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="vgg_small", choices=["vgg_small", "vgg16"])
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=0, help="AdamW steps on synthetic data first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precisions", nargs="+", default=[], choices=["bf16-mixed", "16-mixed"],
                        help="also time ours under these precisions (evaluate's `precision`), against its fp32")
    parser.add_argument("--preload", action="store_true",
                        help="materialise the batches on the device first (times the pipeline, not the loader)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    # full float32 on GPUs: TF32 convolutions make batched and batch-1 logits differ by ~1e-3,
    # enough to reorder near-tied scores, and the numbers of the two pipelines must agree
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    dm = SyntheticDataModule(num_classes=args.num_classes, image_size=args.image_size, num_train=256, num_val=1,
                             num_test=args.num_images, batch_size=args.batch_size, seed=args.seed)
    model = create_model(args.arch, num_classes=args.num_classes, width_divisor=args.width_divisor).to(device)
    train_briefly(model, dm, args.train_steps, device)
    dm.setup("test")
    loader = dm.test_dataloader()
    ours_data = loader  # with --preload, ours reads batches already on the device (the reference its loader)
    if args.preload:
        ours_data = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                     for batch in loader]
    print(f"{args.arch}/{args.width_divisor} on {device}, {args.num_images} synthetic {args.image_size}px images, "
          f"{args.num_classes} classes, batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    def run_ours(precision: str = "32-true") -> tuple[dict, float]:
        sync(device)
        start = time.perf_counter()
        result = evaluate(model, ours_data, methods=["gradcam"], protocol="paper", progress=False,
                          precision=precision)
        sync(device)
        return result, time.perf_counter() - start

    # warm-up (allocator, kernels, lazy imports); ours timed before and after the reference, so
    # load from other processes that drifts during the long reference run hits both alike
    evaluate(model, ours_data, methods=["gradcam"], max_batches=1, progress=False)
    ours, t_before = run_ours()
    sync(device)
    start = time.perf_counter()
    ref = reference_evaluate(model, loader, args.num_classes, device)
    sync(device)
    t_ref = time.perf_counter() - start
    _, t_after = run_ours()
    t_ours = (t_before + t_after) / 2

    gradcam = ours["methods"]["gradcam"]
    rows = [("map", ours["metrics"]["map"], ref["map"]), ("map_image", ours["metrics"]["map_image"], ref["map_image"]),
            ("f1", ours["metrics"]["f1"], ref["f1"]), ("auc", gradcam["auc"], ref["auc"]),
            ("point_acc", gradcam["point_acc"], ref["point_acc"]),
            ("num_pairs", gradcam["num_pairs"], ref["num_pairs"])]
    print(f"{'':10s} {'ours':>10s} {'reference':>10s}")
    for name, a, b in rows:
        print(f"{name:10s} {a:10.4f} {b:10.4f}")
    pairs = max(ref["num_pairs"], 1)
    assert gradcam["num_pairs"] == ref["num_pairs"], "pair counts differ"
    for name in ("map", "map_image", "f1"):
        assert abs(ours["metrics"][name] - ref[name]) < 1e-4, name
    # maps of a batched and a batch-1 forward differ by float rounding: allow near-tied pixels
    # to swap (AUC) and at most one near-tied maximum to move (point accuracy)
    assert abs(gradcam["auc"] - ref["auc"]) < 1e-3, "auc"
    assert abs(gradcam["point_acc"] - ref["point_acc"]) <= 1.0 / pairs + 1e-9, "point_acc"
    n = ours["metrics"]["num_images"]
    print(f"ours      {t_ours:8.2f} s  {n / t_ours:9.1f} images/s")
    print(f"reference {t_ref:8.2f} s  {n / t_ref:9.1f} images/s")
    print(f"speed-up  {t_ref / t_ours:8.1f}x  (numbers agree)")
    for precision in args.precisions:  # ours again, fp32 (TF32 off, as above) and mixed interleaved
        evaluate(model, ours_data, methods=["gradcam"], max_batches=1, progress=False, precision=precision)
        (mixed, t1), (_, t_full), (_, t2) = run_ours(precision), run_ours(), run_ours(precision)
        t_mixed, row = (t1 + t2) / 2, mixed["methods"]["gradcam"]
        print(f"ours {precision:10s} {t_mixed:6.2f} s  {n / t_mixed:9.1f} images/s  {t_full / t_mixed:.2f}x ours "
              f"fp32 ({n / t_full:.1f} images/s); auc {row['auc']:.4f} ({row['auc'] - gradcam['auc']:+.4f}), "
              f"point_acc {row['point_acc']:.4f} ({row['point_acc'] - gradcam['point_acc']:+.4f}), "
              f"pairs {row['num_pairs']}")


if __name__ == "__main__":
    main()
