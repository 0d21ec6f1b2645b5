"""WandbLogger that is offline unless the user asks otherwise (no account, no network)."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.loggers import WandbLogger as _WandbLogger


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger`` with ``offline`` decided by the environment.

    Args:
        offline: ``None`` (default): offline unless ``WANDB_MODE`` is set to something else
            than ``offline``/``disabled``; ``True``/``False`` force it.
        project, save_dir, name, **kwargs: as Lightning's ``WandbLogger``.

    Example:
        >>> os.environ.pop("WANDB_MODE", None) is None or True
        True
        >>> WandbLogger(save_dir="/tmp").__dict__["_offline"]
        True
    """

    def __init__(
        self,
        project: str = "attrpreserve",
        save_dir: str = "runs",
        name: str | None = None,
        offline: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")
        # Absolute: wandb's service process resolves a relative folder against the directory it
        # started in, which need not be this process's current one.
        save_dir = os.path.abspath(save_dir)
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, name=name, offline=offline, **kwargs)
