"""Which networks of a LightningModule the map-drawing callbacks look at."""

from __future__ import annotations

from torch import nn


def map_networks(pl_module: nn.Module, caller: str) -> dict[str, nn.Module]:
    """``{"teacher": ..., "student": ...}`` for a DistillationModule, ``{"model": ...}`` for a
    TeacherModule: the networks whose maps panels draw and monitors score (the teacher first,
    its top-1 class is the one the student's maps explain).

    Raises:
        ValueError: the module has neither ``teacher`` and ``student`` nor ``model``; the message
            names ``caller``.

    Example:
        >>> holder = nn.Module()
        >>> holder.model = nn.Linear(2, 2)
        >>> list(map_networks(holder, "AttributionPanels"))
        ['model']
    """
    if hasattr(pl_module, "teacher") and hasattr(pl_module, "student"):
        return {"teacher": pl_module.teacher, "student": pl_module.student}
    if hasattr(pl_module, "model"):
        return {"model": pl_module.model}
    raise ValueError(f"{caller} needs a module with `teacher` and `student` or with `model`; got "
                     f"{type(pl_module).__name__}.")
