"""End-to-end distillation speed of this tree against the code of an earlier commit.

``store_speed.py --fit`` compares the decoded-image store with the JPEG path *of this tree*, which
shares every other improvement (whole batches of cached views, the uint8 crop before the
normalisation, the head's skipped identity pool), so it understates what changed since an issue
was filed. This script measures against the code as it was: it checks ``--commit`` out into a
temporary git worktree (local, nothing fetched) and runs the same ``Trainer.fit`` with that code
and with this tree, each fit in a fresh subprocess, the runs interleaved so that drift of the
machine hits both alike. The fit: SSWA matching (weight 100, ``pool5``), a vgg_small (``--arch``)
teacher read from its 8-view cache (``--online``: run in every step), its /8 student, a generated VOC-layout
folder (``voc_folder.py``), ``image_size`` 64, batch 32; images/s of the epochs after the first.

Without git (a copy of the tree, as on a lent GPU machine), ``--base-tree DIR`` takes the earlier
code from a folder instead: ``mkdir .base && git archive 5661e2a | tar -x -C .base``.

Rows: ``base/jpeg/wN`` (the commit, N loader workers), ``now/jpeg/wN`` and ``now/store/wN`` (this
tree without and with the store). Ratios: each ``now`` row against the base row with the same
workers and against the base's best row.

  python benchmarks/fit_vs_commit.py --commit 5661e2a            # before the decoded-image store
  python benchmarks/fit_vs_commit.py --commit 5661e2a --online --workers 0 2
  python benchmarks/fit_vs_commit.py --commit 5661e2a --online --arch vgg16 --image-size 227 --batch-size 64 \
      --accelerator gpu --workers 8 --num-images 2048 --min-side 300 --max-side 500   # on a GPU
  python benchmarks/fit_vs_commit.py --base-tree .base ...       # the earlier code from a folder
  python benchmarks/fit_vs_commit.py --commit 5661e2a --online --now-precision bf16-mixed --now-channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(argv: list[str]) -> None:
    """One fit with the package found in ``--src``; prints one JSON line with the epoch rates."""
    parser = argparse.ArgumentParser()
    for name in ("--src", "--root", "--work"):
        parser.add_argument(name, required=True)
    parser.add_argument("--store", action="store_true")
    parser.add_argument("--online", action="store_true")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--accelerator", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.src)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import pytorch_lightning as pl

    import attrpreserve
    from attrpreserve.callbacks import AttributionMatching
    from attrpreserve.data import VOCDataModule
    from attrpreserve.models import create_model
    from attrpreserve.modules import DistillationModule

    if not Path(attrpreserve.__file__).resolve().is_relative_to(Path(args.src).resolve()):
        raise RuntimeError(f"imported {attrpreserve.__file__}, not the code in {args.src}")

    from _common import EpochTimer

    extra = {"store": True, "store_dir": f"{args.work}/store"} if args.store else {}
    dm = VOCDataModule(args.root, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
                       cache_teacher=not args.online, cache_views=8, cache_dir=f"{args.work}/teacher",
                       pin_memory=None, **extra)  # None: pinned where CUDA is
    torch.manual_seed(0)
    teacher = create_model(args.arch, num_classes=20).eval()
    extra_module = {"channels_last": True} if args.channels_last else {}  # this tree only
    module = DistillationModule(teacher, create_model(args.arch, num_classes=20, width_divisor=8), lr=0.01,
                                **extra_module)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=args.epochs + 1, accelerator=args.accelerator, devices=1, logger=False,
                         precision=args.precision, benchmark=args.accelerator != "cpu",  # as the VOC configs
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[AttributionMatching(mode="sswa", weight=100.0), timer])
    trainer.fit(module, dm)
    print("RESULT " + json.dumps({"rates": timer.rates[1:], "threads": torch.get_num_threads()}))


def _fit(src: Path, root: Path, work: Path, store: bool, workers: int, args: argparse.Namespace,
         precision: str, channels_last: bool) -> list[float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--src", str(src), "--root", str(root),
               "--work", str(work), "--workers", str(workers), "--epochs", str(args.epochs),
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--arch", args.arch,
               "--accelerator", args.accelerator, "--precision", precision]
    command += ["--store"] * store + ["--online"] * args.online + ["--channels-last"] * channels_last
    command += ["--threads", str(args.threads)] if args.threads else []
    # the child puts `src` first on sys.path and checks where attrpreserve came from
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"fit with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])["rates"]


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    earlier = parser.add_mutually_exclusive_group(required=True)
    earlier.add_argument("--commit", help="the earlier code (any git revision of this repository)")
    earlier.add_argument("--base-tree", help="the earlier code, from a folder (a `git archive` of it)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader workers to try (each row)")
    parser.add_argument("--online", action="store_true", help="run the teacher in every step (no cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fit (default: torch's)")
    parser.add_argument("--arch", default="vgg_small", choices=["vgg_small", "vgg16"], help="teacher (the student "
                        "is its /8)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu, gpu)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision of the fits (32-true, "
                        "bf16-mixed); this tree's: --now-precision")
    parser.add_argument("--now-precision", default=None, help="this tree's fits only (default: --precision)")
    parser.add_argument("--now-channels-last", action="store_true", help="this tree's fits: channels_last networks")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=1600)
    parser.add_argument("--min-side", type=int, default=112)
    parser.add_argument("--max-side", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per fit (after one warm-up epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="fits per row, interleaved")
    parser.add_argument("--data", default=None, help="folder for the generated VOC data (kept); default: temporary")
    args = parser.parse_args(argv)
    repo = HERE.parent  # this tree
    if args.base_tree is not None:
        base = Path(args.base_tree).resolve()
        if not (base / "attrpreserve" / "__init__.py").is_file():
            raise FileNotFoundError(f"Expected argument `--base-tree` to be a folder holding attrpreserve/, but "
                                    f"{str(base)!r} has no attrpreserve/__init__.py.")
        label = f"the tree in {base}"
    else:
        commit = subprocess.run(["git", "rev-parse", "--verify", f"{args.commit}^{{commit}}"], cwd=repo,
                                capture_output=True, text=True)
        if commit.returncode:
            raise ValueError(f"Expected argument `--commit` to name a commit of {repo}, but got {args.commit!r}.")
        sha = commit.stdout.strip()
        label = sha[:10]
    tmp = Path(tempfile.mkdtemp(prefix="fit_vs_commit_"))
    try:
        if args.base_tree is None:
            base = tmp / "base"
            subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(base), sha], cwd=repo, check=True)
        sys.path.insert(0, str(HERE))
        from voc_folder import make_voc_folder

        root = make_voc_folder(Path(args.data) if args.data else tmp / "data", args.num_images, args.min_side,
                               args.max_side)
        now = (args.now_precision or args.precision, args.now_channels_last)
        rows = [(f"base/jpeg/w{w}", base, False, w, tmp / "work_base", (args.precision, False)) for w in args.workers]
        rows += [(f"now/{kind}/w{w}", repo, kind == "store", w, tmp / "work_now", now) for w in args.workers
                 for kind in ("jpeg", "store")]
        rates: dict[str, list[float]] = {name: [] for name, *_ in rows}
        for _ in range(args.repeats):
            for name, src, store, workers, work, (precision, channels_last) in rows:
                rates[name] += _fit(src, root, work, store, workers, args, precision, channels_last)
                print(f"  {name:16s} {' '.join(f'{r:.0f}' for r in rates[name])} images/s", flush=True)
    finally:
        if args.base_tree is None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")], cwd=repo, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    teacher = "online teacher" if args.online else "teacher from the 8-view cache"
    print(f"base {label} vs this tree; SSWA fit, {args.arch} -> /8 on {args.accelerator} "
          f"(base {args.precision}; this tree {now[0]}, channels_last={now[1]}), {teacher}; "
          f"{args.num_images} JPEGs "
          f"{args.min_side}-{args.max_side} px, image_size {args.image_size}, batch {args.batch_size}, threads "
          f"{args.threads or 'default'}; images/s of {args.epochs} epochs x {args.repeats} fits after a warm-up epoch")
    for name, values in rates.items():
        print(f"  {name:16s} median {sorted(values)[len(values) // 2]:7.1f}  (range {min(values):.1f}-"
              f"{max(values):.1f})")
    best_base = max(args.workers, key=lambda w: max(rates[f"base/jpeg/w{w}"]))
    for name in rates:
        if name.startswith("now/"):
            workers = name.rsplit("/w", 1)[1]
            same = max(rates[name]) / max(rates[f"base/jpeg/w{workers}"])
            best = max(rates[name]) / max(rates[f"base/jpeg/w{best_base}"])
            print(f"ratio {name} / base/jpeg/w{workers} = {same:.2f}; / base's best (w{best_base}) = {best:.2f}")
    return rates


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
