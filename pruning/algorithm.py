"""The one interface every pruning algorithm implements, so one driver runs them all (STYLE 9).

The driver (`pruning.run.run_pruning`) loads and fuses the model, then calls, in order:
``prepare`` (find groups, attach whatever the algorithm trains), trains the returned model with
``param_groups`` for the optimizer and ``regularize`` after every backward pass (with BatchNorms
re-inserted after its biased convs, `pruning.retrain`, and folded back before the next call; no
training at all when ``regularized`` is False), then
``prune`` (physical removal; the result must meet the target), and records ``summary()``.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from dscnn.train import TrainConfig


class PruningError(ValueError):
    """A pruning run that cannot proceed as asked (bad target, knob, checkpoint/model pairing, output path)."""


class TargetMissed(RuntimeError):
    """The pruned model, measured, misses the latency target: nothing is written (exit status 1)."""


class PruningAlgorithm(Protocol):
    name: str  # short name used in reports and default output paths ("resrep", "csgd")
    regularized: bool  # False: no training between prepare() and prune() (magnitude pruning: fine-tuning only)

    def prepare(self, model: nn.Module, target_macs: float, example: Tensor, steps_per_epoch: int,
                epochs: int = 1) -> nn.Module:
        """Set up on the deploy-form ``model``; return the module to train (may be ``model`` itself).

        The training that follows runs ``epochs`` x ``steps_per_epoch`` iterations (``regularize`` calls).
        """
        ...

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """The optimizer's parameter groups for training ``model`` (the module `prepare` returned)."""
        ...

    def regularize(self) -> None:
        """Called after every ``loss.backward()``, before the optimizer step."""
        ...

    def prune(self, model: nn.Module) -> nn.Module:
        """Turn the trained module into the pruned deploy model (plain layers, fewer channels)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Algorithm-specific facts for the report (JSON-serialisable)."""
        ...
