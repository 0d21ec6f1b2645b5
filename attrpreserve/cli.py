"""The ``attrpreserve`` command: ``fit | validate | test`` (LightningCLI), ``evaluate``, ``quickstart``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI

USAGE = """usage: attrpreserve {fit,validate,test,evaluate,info,check-data,sweep,quickstart} [options] [--debug]

Compress CNNs while preserving their attribution maps (Park et al., NeurIPS 2020).

subcommands:
  fit         train a teacher or distil/prune a student     (LightningCLI: --config configs/....yaml)
  validate    validate a model on the validation split      (LightningCLI)
  test        run the test loop on the localisation split   (LightningCLI)
  evaluate    score attribution maps of a checkpoint: mAP, F1, AUC, point accuracy, cos/l2 to a teacher
  info        how a checkpoint was trained: networks, weights files, callbacks, epochs, metrics
  check-data  read every file of a VOC-layout folder and list every problem found
  sweep       run a grid of configs x overrides x seeds, evaluate each run, aggregate the table and plot
  quickstart  teacher -> KD student and SSWA student on synthetic data, on CPU, with the comparison table

Run `attrpreserve SUBCOMMAND --help` for the options of each. A mistake in the arguments or the
files prints one line and exits with status 2; --debug (or ATTRPRESERVE_DEBUG=1) shows the traceback.
"""

# SyntheticDataModule arguments that define the localisation split `evaluate` scores.
SYNTHETIC_SETTINGS = ("num_classes", "image_size", "num_train", "num_val", "num_test", "seed", "scale", "ratio",
                      "min_visible", "object_size", "max_objects", "max_distractors", "max_occlusion", "void_border",
                      "mean", "std")

# Errors a user's arguments, files or data cause: one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


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

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would re-parse a checkpoint's hyperparameters as the model's arguments, over
        # the user's config and flags: ours hold provenance (`weights_sources`) that is no argument,
        # and a flag such as --model.init_args.test_localization=true would lose to the saved value.
        # The config names the model; the checkpoint gives its weights and pruned structure
        # (on_load_checkpoint), and a resumed fit checks its recipe (`on_recipe_change`).
        return

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # LightningCLI gives save_hyperparameters its own keys; our modules drop them, and the data
        # modules' copy would reach the logger's config as a stray `_instantiator`.
        for obj in (self.model, self.datamodule):
            hparams = getattr(obj, "hparams", None)
            if hparams is None:
                continue
            for key in ("_instantiator", "_class_path"):
                hparams.pop(key, None)
                getattr(obj, "_hparams_initial", {}).pop(key, None)


def _methods_help() -> str:
    from attrpreserve.attribution.methods import METHODS, get_method, method_knobs

    lines = []
    for name in METHODS:
        rule = get_method(name).layer_rule
        layer = f"layer (default {rule.default_layer or 'the model default, pool5'})" if rule is not None else "no layer"
        knobs = ", ".join(method_knobs(name) or ()) or "no options"
        lines.append(f"  {name:<17} {layer}; {knobs}")
    return "\n".join(lines)


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attrpreserve evaluate",
        description="Score a checkpoint's attribution maps against segmentation masks (and a teacher's maps).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint of `attrpreserve fit` (teacher or distillation)")
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint for cos/l2 (default: the teacher inside a distillation checkpoint)")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher comparison")
    p.add_argument("--data", required=True, help="a local VOC2012 folder, or 'synthetic'")
    p.add_argument("--split", default=None, help="VOC: the localisation split file name (default: val)")
    p.add_argument("--image-size", type=int, default=None, help="default: 227 for VOC, 64 for synthetic")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--num-workers", type=int, default=0, help="default: 0")
    p.add_argument("--num-classes", type=int, default=None,
                   help="synthetic data only (default: the checkpoint's class count)")
    p.add_argument("--seed", type=int, default=None,
                   help="synthetic data only (default: the seed of the data the checkpoint was trained on, else 0)")
    p.add_argument("--methods", default="gradcam", help="comma-separated (default: gradcam); see below")
    p.add_argument("--layer", default=None,
                   help="layer of the evaluated network for the layer methods (gradcam, swa, ewa): an alias "
                        "(conv5_3, pool5) or a dotted module name (default: the method's default)")
    p.add_argument("--teacher-layer", default=None,
                   help="the teacher's layer, when its architecture differs (default: --layer)")
    p.add_argument("--method-arg", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, repeatable: ig.n_steps=16, lrp.composite=alpha1_beta0")
    p.add_argument("--protocol", default="paper", choices=("paper", "torchray", "all"),
                   help="paper (default): pairs the model predicts positive, exact pixel; all: every ground-truth "
                        "pair (the same pairs for every model); torchray: TorchRay's pointing game (a hit within "
                        "15 px, mean of per-class accuracies, difficult-only classes skipped)")
    p.add_argument("--baselines", default="center",
                   help="model-free rows scored on the same pairs: center (a centred Gaussian), or none "
                        "(default: center)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of the scored pairs for the 95%% intervals of point accuracy and AUC; 0: none "
                        "(default: 1000)")
    p.add_argument("--faithfulness", action="store_true",
                   help="also deletion/insertion curves of each map (area under the model's score as pixels are "
                        "removed/added in the map's order) with a random-order reference")
    p.add_argument("--faithfulness-steps", type=int, default=20, help="stages of those curves (default: 20)")
    p.add_argument("--void-as-background", action="store_true",
                   help="count VOC void pixels as background (the reference scripts' behaviour)")
    p.add_argument("--max-images", type=int, default=None, help="score the first N images (default: all)")
    p.add_argument("--max-batches", type=int, default=None, help="score the first N batches (default: all)")
    p.add_argument("--out", default=None,
                   help="folder for results.json/csv (default: <checkpoint folder>/<checkpoint name>_eval)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the table and summary to wandb (offline unless WANDB_MODE says otherwise): into "
                        "the training run of the checkpoint when it names one, else a run named after the run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda when available, else cpu; under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "16-mixed"),
                   help="the networks' passes under autocast, as the Trainer's precision (maps and metrics stay "
                        "float32; default: 32-true)")
    p.epilog = (f"methods (layer; options for --method-arg):\n{_methods_help()}\n\n"
                "Several processes: `torchrun --nproc_per_node N -m attrpreserve evaluate ...` splits the batches\n"
                "over them and prints the single-process table (rank 0 writes it).")
    return p


def _parse_value(text: str) -> Any:
    """``16`` -> 16, ``0.5`` -> 0.5, ``true`` -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_kwargs_from(methods: list[str], items: Sequence[str], layer: str | None) -> dict[str, dict[str, Any]]:
    """Per-method keyword arguments from ``--method-arg METHOD.KEY=VALUE`` items and ``--layer``.

    Raises:
        ValueError: an item not of the form METHOD.KEY=VALUE, or naming a method not evaluated.

    Example:
        >>> method_kwargs_from(["gradcam", "ig"], ["ig.n_steps=16"], "conv5_3")
        {'gradcam': {'layer': 'conv5_3'}, 'ig': {'n_steps': 16}}
    """
    from attrpreserve.attribution.methods import get_method

    kwargs: dict[str, dict[str, Any]] = {}
    if layer is not None:
        for name in methods:
            if get_method(name).layer_rule is not None:
                kwargs.setdefault(name, {})["layer"] = layer
    for item in items:
        head, sep, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not sep or not dot or not method or not key:
            raise ValueError(f"Expected `--method-arg` as METHOD.KEY=VALUE (e.g. ig.n_steps=16), but got {item!r}.")
        if method not in methods:
            raise ValueError(f"Expected `--method-arg {item}` to name an evaluated method ({', '.join(methods)}), "
                             f"but got {method!r}: add it to --methods.")
        kwargs.setdefault(method, {})[key] = _parse_value(value)
    return kwargs


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


def _run_folder(ckpt: Path) -> Path:
    """The run's folder: ``runs/x/name`` for ``runs/x/name/checkpoints/last.ckpt``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _finish_wandb() -> None:
    """End this process's wandb run, if any: Lightning leaves it open after a fit (so more can be
    logged), and a later WandbLogger in the same process would write into it instead of its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _evaluation_logger(ckpt: Path, run: dict[str, Any] | None, config: dict[str, Any]) -> Any:
    """A WandbLogger on the checkpoint's training run (resumed) or, without one, on a new run named
    after the run folder."""
    from attrpreserve.loggers import WandbLogger

    _finish_wandb()
    if run and run.get("id"):
        save_dir = run.get("save_dir") or str(_run_folder(ckpt))
        if not Path(save_dir).is_dir():  # moved: keep the run next to the checkpoint
            save_dir = str(_run_folder(ckpt))
        # A wandb service shared with the process that trained (WANDB_SERVICE inherited) may still
        # be closing that run's stream: "run ID ... is in use" for a few seconds.
        for attempt in range(12):
            logger = WandbLogger(project=run.get("project") or "attrpreserve", save_dir=save_dir,
                                 name=run.get("name"), id=run["id"], resume="allow")
            try:
                logger.experiment
                break
            except Exception as err:  # noqa: BLE001 - wandb raises its own types; only this one is waited out
                if "in use" not in str(err) or attempt == 11:
                    raise
                time.sleep(5)
    else:
        folder = _run_folder(ckpt)
        logger = WandbLogger(save_dir=str(folder), name=f"{folder.name}-evaluate", job_type="evaluate")
    logger.experiment.config.update({"evaluate": config}, allow_val_change=True)
    return logger


def evaluate_main(argv: Sequence[str]) -> dict:
    """``attrpreserve evaluate``: load, evaluate, print the table, write JSON/CSV (and wandb)."""
    from attrpreserve.attribution.methods import check_method
    from attrpreserve.data import SyntheticDataModule, VOCDataModule
    from attrpreserve.evaluate import evaluate
    from attrpreserve.evaluation.report import format_table, log_summary
    from attrpreserve.models.weights import file_digest, read_checkpoint
    from attrpreserve.modules import DistillationModule, load_module, load_network

    args = evaluate_parser().parse_args(list(argv))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("Expected `--methods` to name at least one method, but got an empty list.")
    for method in methods:  # before any expensive work
        check_method(method)
    method_kwargs = method_kwargs_from(methods, args.method_arg, args.layer)
    teacher_kwargs = method_kwargs_from(methods, args.method_arg, args.teacher_layer or args.layer)
    for name, value in (("--max-images", args.max_images), ("--max-batches", args.max_batches),
                        ("--batch-size", args.batch_size), ("--image-size", args.image_size)):
        if value is not None and value < 1:
            raise ValueError(f"Expected `{name}` to be >= 1, but got {value}.")
    if args.data != "synthetic" and not Path(args.data).exists():
        raise FileNotFoundError(f"Expected `--data` to be 'synthetic' or a local VOC2012 folder, but {args.data!r} "
                                "does not exist.")
    ckpt = Path(args.ckpt)
    device = torch.device(_join_process_group(args.device))
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    say = print if rank0 else (lambda *a, **k: None)
    saved_ckpt = read_checkpoint(ckpt)  # once: its data settings and wandb run, beside load_module's read
    module = load_module(ckpt)
    model = module.student if isinstance(module, DistillationModule) else module.model
    say(f"checkpoint: {ckpt} ({type(module).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)",
        flush=True)
    teacher, teacher_from = None, None
    if not args.no_teacher:
        if args.teacher is not None:
            teacher, teacher_from = load_network(args.teacher), str(Path(args.teacher).resolve())
        elif isinstance(module, DistillationModule):
            teacher, teacher_from = module.teacher, "the distillation checkpoint"
    if teacher is not None:
        say(f"teacher: {teacher_from}", flush=True)
    if args.data == "synthetic":
        # The run's own data settings (seed, sizes, objects: they define the localisation split)
        # unless a flag says otherwise; a checkpoint trained on other data gives the defaults.
        saved = saved_ckpt.get("datamodule_hyper_parameters") or {}
        kept = {k: v for k, v in saved.items() if k in SYNTHETIC_SETTINGS} if "num_test" in saved else {}
        kept.update({k: v for k, v in (("num_classes", args.num_classes), ("image_size", args.image_size),
                                       ("seed", args.seed)) if v is not None})
        kept.setdefault("num_classes", getattr(model, "num_classes", None) or 4)
        data = SyntheticDataModule(**kept, batch_size=args.batch_size, num_workers=args.num_workers)
    else:
        extra = {"seg_split": args.split} if args.split else {}
        data = VOCDataModule(args.data, image_size=args.image_size or 227, batch_size=args.batch_size,
                             num_workers=args.num_workers, **extra)
    data.setup("test")
    provenance = {
        "checkpoint": {"path": str(ckpt.resolve()), "sha256": file_digest(ckpt)},
        "teacher_source": teacher_from,
        "data": {"root": args.data if args.data == "synthetic" else str(Path(args.data).resolve()),
                 "split": args.split or ("test" if args.data == "synthetic" else "val"),
                 "image_size": data.image_size, "seed": getattr(data, "seed", None),
                 "num_test": len(data.localization_dataset)},
        "command": ["attrpreserve", "evaluate", *argv],
    }
    logger = None
    if args.wandb and rank0:
        run = saved_ckpt.get("wandb")
        logger = _evaluation_logger(ckpt, run, {"checkpoint": str(ckpt), "protocol": args.protocol,
                                                "methods": methods, "method_kwargs": method_kwargs})
    out = Path(args.out) if args.out else ckpt.parent / f"{ckpt.stem}_eval"
    started = time.perf_counter()
    result = evaluate(model.to(device), data, methods=methods, protocol=args.protocol,
                      teacher=teacher.to(device) if teacher is not None else None,
                      count_void_as_background=args.void_as_background, max_batches=args.max_batches,
                      max_images=args.max_images, method_kwargs=method_kwargs, teacher_method_kwargs=teacher_kwargs,
                      progress=not args.no_progress, provenance=provenance, logger=logger, out=out,
                      baselines=() if args.baselines in ("", "none") else [b.strip() for b in args.baselines.split(",")],
                      bootstrap=args.bootstrap, faithfulness=args.faithfulness,
                      faithfulness_steps=args.faithfulness_steps, precision=args.precision)
    if logger is not None:
        log_summary(logger, result, key=f"evaluate/{args.protocol}")
        say(f"wandb: logged to run {logger.version} in {logger.save_dir}")
        logger.experiment.finish()
    say(format_table(result, plain=True))
    say(f"{result['metrics']['num_images']} images in {time.perf_counter() - started:.1f} s; wrote {out}/results.json "
        f"and {out}/results.csv")
    return result


def info_main(argv: Sequence[str]) -> None:
    """``attrpreserve info --ckpt X``: how a checkpoint was trained."""
    from attrpreserve.recipe import describe_checkpoint

    p = argparse.ArgumentParser(prog="attrpreserve info", description="How a checkpoint of `attrpreserve fit` was "
                                "trained: networks, parameters, sparsity, weights files, callbacks, epochs, metrics.")
    p.add_argument("--ckpt", required=True, help="a checkpoint written by `attrpreserve fit`")
    p.add_argument("--json", action="store_true", help="print the recipe as JSON")
    args = p.parse_args(list(argv))
    print(describe_checkpoint(args.ckpt, as_json=args.json))


def _user_error(err: BaseException) -> BaseException | None:
    """The user's mistake behind ``err``: the innermost ValueError/FileNotFoundError/... of its
    chain (jsonargparse wraps our constructors' errors in its own); ``None`` for anything else,
    which is a bug and keeps its traceback."""
    found = None
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, USER_ERRORS):
            found = err
        elif found is not None:
            break
        err = err.__cause__ or err.__context__
    return found


def _dispatch(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "evaluate":
        evaluate_main(rest)
    elif command == "info":
        info_main(rest)
    elif command == "check-data":
        from attrpreserve.data.check import main as check_data_main

        return int(check_data_main(rest) or 0)
    elif command == "sweep":
        from attrpreserve.study import main as sweep_main

        return int(sweep_main(rest) or 0)
    elif command == "quickstart":
        from attrpreserve.quickstart import main as quickstart_main

        quickstart_main(rest)
    else:
        # LightningCLI parses the rest (it exits 2 itself on a malformed option). It reads
        # sys.argv when given no args, and warns when given both: hand it ours that way.
        saved, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            AttrPreserveCLI(None)
        finally:
            sys.argv = saved
            _finish_wandb()
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """The ``attrpreserve`` command; returns the exit status (0 success, 2 a user's mistake)."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("ATTRPRESERVE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    try:
        return _dispatch(argv)
    except Exception as err:  # noqa: BLE001 - sorted below: a user's mistake, or re-raised
        user = _user_error(err)
        if user is None or debug:
            raise
        message = str(user.args[0]) if isinstance(user, (ValueError, FileNotFoundError)) and user.args else str(user)
        print(f"attrpreserve {argv[0]}: error: {message}", file=sys.stderr)
        print("(--debug or ATTRPRESERVE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
