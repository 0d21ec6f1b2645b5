"""What our ``Metric`` classes share beyond torchmetrics' ``Metric``: its ``plot()``, adding a
batch's values to the sum states, and the flags of a score in [0, 1]."""

from typing import Any, Optional, Union

from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE


class PlottableMetric(Metric):
    """A torchmetrics ``Metric`` whose ``plot()`` draws its values within the class's
    ``plot_lower_bound``/``plot_upper_bound`` (torchmetrics' ``Metric._plot``)."""

    def plot(
        self,
        val: Optional[Union[Tensor, dict[str, Tensor], list[Tensor], list[dict[str, Tensor]]]] = None,
        ax: Optional[_AX_TYPE] = None,
    ) -> _PLOT_OUT_TYPE:
        """Plot one value or a sequence of values of the metric (needs matplotlib).

        Args:
            val: a result of ``forward``/``compute`` or a list of them (one point per step);
                ``None`` plots ``compute()``.
            ax: matplotlib axes to draw into (default: a new figure).

        Returns:
            ``(figure, axes)``.

        Raises:
            ModuleNotFoundError: matplotlib is not installed.

        Example:
            >>> import torch
            >>> from attrpreserve.metrics import PointingGame
            >>> metric = PointingGame()
            >>> values = [metric(torch.rand(4, 8, 8), torch.rand(4, 8, 8) > 0.5) for _ in range(3)]
            >>> fig, ax = metric.plot(values)
            >>> type(fig).__name__, tuple(round(float(y), 2) for y in ax.get_ylim())  # bounds, 10% margin
            ('Figure', (-0.1, 1.1))
            >>> import matplotlib.pyplot as plt
            >>> plt.close(fig)
        """
        return self._plot(val, ax)

    def _add_to_states(self, **values: Any) -> None:
        """``state += value`` for each named sum state (the body of an ``update``)."""
        for name, value in values.items():
            getattr(self, name).add_(value)


class UnitScoreMetric(PlottableMetric):
    """A score in [0, 1], higher is better, from sum states (pointing games, mask AUROC, per-image
    AP): torchmetrics' flags set once, and ``plot()`` drawn between 0 and 1."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
