"""The loss-term extension point of :class:`~attrpreserve.modules.DistillationModule`.

A callback (attribution matching, a future regulariser) registers a :class:`LossTerm` with the
module instead of patching ``training_step``. Each step the module runs the teacher and the
student once, capturing the layers every active term asked for, and calls each term with::

    term(batch, teacher=ForwardResult, student=ForwardResult) -> scalar tensor

The module adds ``term.weight * value`` to the loss and logs ``<stage>/<term.name>`` (unweighted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass
class ForwardResult:
    """One network's forward on a batch.

    Attributes:
        logits: ``[B, K]``. For the teacher they are connected to its captured features when a
            term asked for teacher gradients (``teacher_grad=True``), else constant.
        features: layer name (as the term asked) -> captured output ``[B, C, H, W]``. The
            teacher's are cut from the graph before the layer (``requires_grad`` leaf when
            gradients were asked for), so ``autograd.grad(logit, feature)`` costs only the head.
        model: the network that produced them.
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    model: nn.Module | None = None


@runtime_checkable
class LossTerm(Protocol):
    """What a registered loss term provides.

    Attributes:
        name: unique key; the logged value is ``train/<name>`` / ``val/<name>``.
        weight: multiplier of the term in the total loss.
        student_layers: student layers whose outputs the term reads from ``student.features``.
        teacher_layers: teacher layers whose outputs it reads from ``teacher.features``.
        teacher_grad: whether it needs gradients of teacher logits w.r.t. teacher features.
    """

    name: str
    weight: float
    student_layers: Sequence[str]
    teacher_layers: Sequence[str]
    teacher_grad: bool

    def __call__(self, batch: Any, teacher: ForwardResult, student: ForwardResult) -> Tensor: ...
