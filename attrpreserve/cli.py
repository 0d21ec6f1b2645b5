"""The ``attrpreserve`` command: ``fit | validate | test`` (LightningCLI), ``evaluate``, ``quickstart``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

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


def main(args: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] == "evaluate":
        from attrpreserve.evaluate_cli import main as evaluate_main

        evaluate_main(argv[1:])
        return
    if argv[0] == "quickstart":
        from attrpreserve.quickstart import main as quickstart_main

        quickstart_main(argv[1:])
        return
    # From the console LightningCLI reads sys.argv itself (passing both makes it warn).
    AttrPreserveCLI(None if args is None else argv)


if __name__ == "__main__":
    main()
