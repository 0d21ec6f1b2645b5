"""``attrpreserve quickstart``: the paper's experiment in miniature, on CPU, in minutes.

On the embedded synthetic data: train a teacher (vgg_small), distil it into a /8 student twice
with the same budget, by plain KD and by KD + SSWA attribution matching (both reading the
teacher from one teacher-output cache), evaluate all three with Grad-CAM, under the paper's
protocol (the pairs each model predicts positive) and on every ground-truth pair (the same pairs
for every model), and write the table (CSV, JSON, Markdown), PNG panels of image | teacher | KD |
SSWA | mask, and the checkpoints to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar

from attrpreserve.attribution.methods import attribute
from attrpreserve.callbacks import AttributionMatching
from attrpreserve.data import SyntheticDataModule
from attrpreserve.evaluate import evaluate
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule, TeacherModule
from attrpreserve.visualize import save_panels

COLUMNS = ("model", "mAP", "F1", "AUC", "point acc", "cos", "l2", "pairs")
ALL_COLUMNS = ("model", "AUC (all)", "point acc (all)", "point acc CI (all)", "energy (all)", "cos (all)", "l2 (all)",
               "deletion (all)", "insertion (all)", "pairs (all)")
TORCHRAY_COLUMNS = ("model", "point acc (torchray)", "point acc difficult (torchray)")
PROTOCOLS = ("paper", "all", "torchray")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="attrpreserve quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=1000, help="training images")
    p.add_argument("--num-test", type=int, default=300, help="localisation images")
    p.add_argument("--teacher-epochs", type=int, default=50,
                   help="teacher epochs (default 50: at 25 the teacher is underfit, docs/study.md)")
    p.add_argument("--student-epochs", type=int, default=100)
    p.add_argument("--student-divisor", type=int, default=8, choices=(2, 4, 8))
    p.add_argument("--student-lr", type=float, default=3e-3)
    p.add_argument("--beta", type=float, default=100.0, help="weight of the SSWA matching loss")
    p.add_argument("--layer", default="conv5_3", choices=("conv5_3", "pool5"),
                   help="layer the SSWA maps are matched at: conv5_3 (default; where Grad-CAM is scored, 16x16) or "
                        "pool5 (the paper's, 8x8): docs/study.md")
    p.add_argument("--target", default="per_label", choices=("per_label", "teacher_top1", "labels"),
                   help="classes whose maps SSWA matches: every ground-truth class of an image on its own (default), "
                        "the teacher's top-1 per image (the paper's), or the mean map of the ground-truth classes: "
                        "docs/study.md")
    p.add_argument("--views", type=int, default=8, help="cached views per training image")
    p.add_argument("--head-pool", type=int, default=1,
                   help="side of the pool before both networks' linear head: 1 (default) global average pooling, "
                        "8 flatten + linear over the 8x8 pool output (VGG16's kind of head)")
    p.add_argument("--width-multiplier", type=int, default=2,
                   help="width of teacher and student: 2 (default) makes vgg_small 64-128-256-256 and its /8 "
                        "student 8-16-32-32, 32 channels at conv5_3 (docs/study.md); 1 the narrow networks, about "
                        "half the time")
    p.add_argument("--no-cache", action="store_true", help="run the teacher online in every student step")
    p.add_argument("--curves", action="store_true",
                   help="also deletion/insertion curves on every ground-truth pair, with the random-order reference "
                        "(about two more minutes on 2 cores)")
    p.add_argument("--panels", type=int, default=6, help="validation images in the PNG panels")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("num_train", "num_test", "teacher_epochs", "student_epochs", "views", "panels", "head_pool",
                 "width_multiplier"):
        if getattr(args, name) < 1:
            raise ValueError(f"Expected argument `--{name.replace('_', '-')}` to be >= 1, but got {getattr(args, name)}.")
    if args.beta < 0 or args.student_lr <= 0:
        raise ValueError("Expected `--beta` >= 0 and `--student-lr` > 0.")
    return args


def _trainer(args: argparse.Namespace, out: Path, name: str, epochs: int, callbacks: list) -> pl.Trainer:
    bar = [] if args.no_progress else [RichProgressBar(leave=True)]
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=str(out / name),
        callbacks=callbacks + bar, enable_progress_bar=not args.no_progress, enable_model_summary=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=max(1, epochs), enable_checkpointing=False,
        deterministic=True,
    )


def _pct(value: Any) -> float | None:
    return None if value is None or value != value else round(100 * float(value), 2)


def _num(value: Any, digits: int) -> float | None:
    return None if value is None or value != value else round(float(value), digits)


def _row(name: str, results: dict[str, dict[str, Any]], key: str = "methods") -> dict[str, Any]:
    """One table row from the results of every protocol; ``key="baselines"`` for the centre row."""
    paper, every, torchray = (results[p] for p in PROTOCOLS)
    row: dict[str, Any] = {"model": name, "mAP": _pct(paper["metrics"]["map"]), "F1": _pct(paper["metrics"]["f1"])}
    for suffix, result in (("", paper), (" (all)", every)):
        gradcam = result[key].get("gradcam") or result[key]["center"]
        row.update({f"AUC{suffix}": _pct(gradcam["auc"]), f"point acc{suffix}": _pct(gradcam["point_acc"]),
                    f"cos{suffix}": _num(gradcam.get("cos"), 3), f"l2{suffix}": _num(gradcam.get("l2"), 2),
                    f"pairs{suffix}": gradcam["num_pairs"]})
    gradcam = every[key].get("gradcam") or every[key]["center"]
    low, high = gradcam.get("point_acc_ci") or (None, None)
    row.update({"point acc CI (all)": None if low is None else f"{_pct(low)}-{_pct(high)}",
                "energy (all)": _pct(gradcam.get("energy")), "deletion (all)": _num(gradcam.get("deletion"), 3),
                "insertion (all)": _num(gradcam.get("insertion"), 3)})
    ray = torchray[key].get("gradcam") or torchray[key]["center"]
    row.update({"point acc (torchray)": _pct(ray["point_acc"]),
                "point acc difficult (torchray)": _pct(ray.get("point_acc_difficult"))})
    if key == "baselines":  # no model: no predictions, and the paper's pairs are a model's own
        row.update(dict.fromkeys(COLUMNS[1:]))
    return row


def _random_row(every: dict[str, Any]) -> dict[str, Any]:
    """Deletion/insertion of a random pixel order: the reference the maps' curves are read against."""
    random = (every.get("faithfulness") or {}).get("random") or {}
    return {"model": "random order", "deletion (all)": _num(random.get("deletion"), 3),
            "insertion (all)": _num(random.get("insertion"), 3)}


def _markdown(rows: list[dict[str, Any]]) -> str:
    text = []
    for title, keys in (("Paper protocol: the pairs each model predicts positive", COLUMNS),
                        ("Every ground-truth pair: the same pairs for every model", ALL_COLUMNS),
                        ("TorchRay's pointing game: 15 px, mean of per-class accuracies", TORCHRAY_COLUMNS)):
        keys = tuple(k for k in keys if any(row.get(k) is not None for row in rows))  # no curves: no such columns
        if "deletion (all)" in keys:
            title += " (deletion: lower is more faithful; insertion: higher)"
        text += [f"{title}\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        text += ["| " + " | ".join("-" if row.get(k) is None else str(row[k]) for k in keys) + " |" for row in rows
                 if any(row.get(k) is not None for k in keys[1:])]
        text.append("")
    return "\n".join(text)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the quickstart; returns the table rows (teacher, KD, SSWA)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pl.seed_everything(args.seed, workers=True)
    dm = SyntheticDataModule(num_classes=4, num_train=args.num_train, num_val=200, num_test=args.num_test,
                             batch_size=32, seed=args.seed, cache_teacher=False)
    dm.setup()
    # Default: a global-average-pool head, learnt from scratch in a few CPU minutes (see VGG.head_pool);
    # --head-pool 8 keeps the 8x8 pool output: flatten + linear, VGG16's own kind of head.
    teacher = TeacherModule(vgg_small(num_classes=4, head_pool=args.head_pool, width_multiplier=args.width_multiplier),
                            optimizer="adamw", lr=1e-3,
                            milestones=(max(1, int(args.teacher_epochs * 0.75)),))
    wide = f" x{args.width_multiplier} width" if args.width_multiplier > 1 else ""
    print(f"[1/4] teacher: vgg_small{wide}, {args.teacher_epochs} epochs on {args.num_train} synthetic images")
    trainer = _trainer(args, out, "teacher", args.teacher_epochs, [])
    trainer.fit(teacher, dm)
    trainer.save_checkpoint(out / "teacher.ckpt")

    students: dict[str, DistillationModule] = {}
    cache_dir = out / "teacher_cache"
    for name, callbacks in (("KD", []), ("SSWA", [AttributionMatching(mode="sswa", weight=args.beta, layer=args.layer,
                                                                         target=args.target, seed=args.seed)])):
        source = "run online" if args.no_cache else f"read from a {args.views}-view cache"
        print(f"[{2 + len(students)}/4] student /{args.student_divisor} by {name}: {args.student_epochs} epochs, "
              f"teacher {source}")
        pl.seed_everything(args.seed + 1, workers=True)  # same student initialisation for both
        data = SyntheticDataModule(num_classes=4, num_train=args.num_train, num_val=200, num_test=args.num_test,
                                   batch_size=32, seed=args.seed, cache_teacher=not args.no_cache, cache_views=args.views,
                                   cache_dir=str(cache_dir), cache_seed=args.seed)
        module = DistillationModule(teacher.model, vgg_small(num_classes=4, width_divisor=args.student_divisor,
                                                             head_pool=args.head_pool,
                                                             width_multiplier=args.width_multiplier),
                                    optimizer="adamw", lr=args.student_lr,
                                    milestones=(max(1, int(args.student_epochs * 0.75)),))
        trainer = _trainer(args, out, name.lower(), args.student_epochs, callbacks)
        trainer.fit(module, data)
        trainer.save_checkpoint(out / f"student_{name.lower()}.ckpt")
        students[name] = module

    curves = " (with deletion/insertion curves)" if args.curves else ""
    print(f"[4/4] evaluation: Grad-CAM at conv5_3; the paper's protocol, every ground-truth pair{curves} and "
          "TorchRay's pointing game")
    networks = {"teacher": (teacher.model, None), **{n: (m.student, teacher.model) for n, m in students.items()}}
    rows = []
    for name, (net, reference) in networks.items():
        results = {protocol: evaluate(net, dm, methods=["gradcam"], protocol=protocol, teacher=reference,
                                      progress=not args.no_progress, faithfulness=args.curves and protocol == "all",
                                      out=out / "results" / protocol / name.lower())
                   for protocol in PROTOCOLS}
        rows.append(_row(name, results))
    rows.append(_row("center (baseline)", results, key="baselines"))
    if args.curves:
        rows.append(_random_row(results["all"]))
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(_markdown(rows))
    with open(out / "table.csv", "w") as f:
        keys = list(dict.fromkeys(COLUMNS + ALL_COLUMNS + TORCHRAY_COLUMNS))
        f.write(",".join(keys) + "\n")
        for row in rows:
            f.write(",".join("" if row.get(k) is None else str(row[k]) for k in keys) + "\n")
    _panels(out, dm, teacher.model, {n: m.student for n, m in students.items()}, args.panels)
    print(_markdown(rows))
    print(f"wrote {out}/table.{{csv,json,md}}, {out}/panels.png and the checkpoints "
          f"in {time.time() - started:.0f} s")
    return rows


def _panels(out: Path, dm: SyntheticDataModule, teacher: torch.nn.Module, students: dict[str, torch.nn.Module],
            count: int) -> None:
    batch = next(iter(torch.utils.data.DataLoader(dm.localization_dataset, batch_size=count)))
    images = batch["image"]
    with torch.no_grad():
        classes = teacher.eval()(images).argmax(dim=1)
    maps = {"teacher": attribute(teacher, images, classes, "gradcam")}
    for name, net in students.items():
        maps[name] = attribute(net, images, classes, "gradcam")
    titles = [dm.class_names[int(c)] for c in classes]
    save_panels(out / "panels.png", dm.denormalize(images), maps, batch["mask"], titles, dm.class_names)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
