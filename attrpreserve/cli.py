"""The ``attrpreserve`` command: ``fit | validate | test`` (LightningCLI), ``evaluate``, ``quickstart``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI

USAGE = """usage: attrpreserve {fit,validate,test,evaluate,quickstart} [options]

Compress CNNs while preserving their attribution maps (Park et al., NeurIPS 2020).

subcommands:
  fit         train a teacher or distil/prune a student     (LightningCLI: --config configs/....yaml)
  validate    validate a model on the validation split      (LightningCLI)
  test        run the test loop on the localisation split   (LightningCLI)
  evaluate    score attribution maps of a checkpoint: mAP, F1, AUC, point accuracy, cos/l2 to a teacher
  quickstart  teacher -> KD student and SSWA student on synthetic data, on CPU, with the comparison table

Run `attrpreserve SUBCOMMAND --help` for the options of each.
"""


class AttrPreserveCLI(LightningCLI):
    """LightningCLI over every LightningModule/LightningDataModule (``class_path`` in configs)."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=list(args) if args is not None else None,
            run=run,
        )


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attrpreserve evaluate",
        description="Score a checkpoint's attribution maps against segmentation masks (and a teacher's maps).",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint of `attrpreserve fit` (teacher or distillation)")
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint for cos/l2; default: the teacher inside a distillation checkpoint")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher comparison")
    p.add_argument("--data", required=True, help="a local VOC2012 folder, or 'synthetic'")
    p.add_argument("--image-size", type=int, default=None, help="default: 227 for VOC, 64 for synthetic")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=4, help="synthetic data only")
    p.add_argument("--seed", type=int, default=0, help="synthetic data only")
    p.add_argument("--methods", default="gradcam", help="comma-separated, e.g. gradcam,lrp,ebp")
    p.add_argument("--protocol", default="paper", choices=("paper", "torchray", "all"),
                   help="paper: pairs the model predicts positive; all: every ground-truth pair (the same pairs for "
                        "every model); torchray: every pair, 15 px tolerance, per-class mean")
    p.add_argument("--void-as-background", action="store_true",
                   help="count VOC void pixels as background (the reference scripts' behaviour)")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for results.json/csv (default: next to the checkpoint)")
    p.add_argument("--wandb", action="store_true", help="also log the table to an (offline) wandb run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="under torchrun each process takes cuda:LOCAL_RANK")
    p.epilog = ("Several processes: `torchrun --nproc_per_node N -m attrpreserve evaluate ...` splits the batches "
                "over them and prints the single-process table (rank 0 writes it).")
    return p


def _join_process_group(device: str) -> str:
    """Under torchrun (``WORLD_SIZE`` > 1), join its process group; returns this process's device."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return device


def evaluate_main(argv: Sequence[str]) -> dict:
    """``attrpreserve evaluate``: load, evaluate, print the table, write JSON/CSV."""
    from attrpreserve.attribution.methods import check_method
    from attrpreserve.data import SyntheticDataModule, VOCDataModule
    from attrpreserve.evaluate import evaluate, format_table
    from attrpreserve.modules import DistillationModule, load_module, load_network

    args = evaluate_parser().parse_args(list(argv))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:  # before any expensive work
        check_method(method)
    device = torch.device(_join_process_group(args.device))
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    module = load_module(args.ckpt)
    model = module.student if isinstance(module, DistillationModule) else module.model
    teacher = None
    if not args.no_teacher:
        if args.teacher is not None:
            teacher = load_network(args.teacher)
        elif isinstance(module, DistillationModule):
            teacher = module.teacher
    if args.data == "synthetic":
        data = SyntheticDataModule(num_classes=args.num_classes, image_size=args.image_size or 64,
                                   batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers)
    else:
        data = VOCDataModule(args.data, image_size=args.image_size or 227, batch_size=args.batch_size,
                             num_workers=args.num_workers)
    data.setup("test")
    logger = None
    if args.wandb and rank0:
        from attrpreserve.loggers import WandbLogger

        logger = WandbLogger(name=f"evaluate-{Path(args.ckpt).stem}")
    out = Path(args.out) if args.out else Path(args.ckpt).parent / f"{Path(args.ckpt).stem}_eval"
    result = evaluate(model.to(device), data, methods=methods, protocol=args.protocol,
                      teacher=teacher.to(device) if teacher is not None else None,
                      count_void_as_background=args.void_as_background, max_batches=args.max_batches,
                      logger=logger, out=out)
    if rank0:
        print(format_table(result, plain=True))
        print(f"wrote {out}/results.json and {out}/results.csv")
    return result


def main(args: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] == "evaluate":
        evaluate_main(argv[1:])
        return
    if argv[0] == "quickstart":
        from attrpreserve.quickstart import main as quickstart_main

        return quickstart_main(argv[1:])
    # From the console LightningCLI reads sys.argv itself (passing both makes it warn).
    AttrPreserveCLI(None if args is None else argv)


if __name__ == "__main__":
    main()
