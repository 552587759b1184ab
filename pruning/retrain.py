"""Training a deploy-form (BN-free) model with its BatchNorms temporarily put back.

A fused graph trains badly with SGD: without BN its gradients are orders of magnitude larger
than the train form's (ResNet-56 after folding: ~50x), and a learning rate that suits the train
form makes it diverge in one step. So every conv that carries a bias (where fusion folded a BN) gets
a BatchNorm2d after it for the duration of training, and the BN is folded back afterwards
(`dscnn.fusion.fold_bn_module`): what is trained has the train form's dynamics, and what comes out is
plain again. The BN starts as the identity: ``running_mean = beta = batch mean`` and
``running_var = batch var, gamma = sqrt(var + eps)`` on the first training batch (and an exact
identity in eval mode before that), so training starts from the deploy model's function.

interpretation: ResRep and C-SGD train conv-BN(-compactor) models; docs/design.md 5.1 prunes the deploy
graph. Re-inserting BN for training reconciles the two. Bias-free convs (which had no BN in the
train form either, e.g. FasterNet's projection, DSCNN's head conv) stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dscnn.data import ImageDataset
from dscnn.fusion import fold_bn_module
from dscnn.train import TrainConfig, TrainResult, train_and_evaluate


class RetrainBN(nn.Module):
    """``bn(conv(x))`` with a BN that is the identity until trained; `fold` returns the plain conv."""

    initialized: Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            assert self.bn.running_var is not None
            self.bn.running_var.fill_(1.0 - self.bn.eps)  # exact identity in eval mode before training
        self.register_buffer("initialized", torch.tensor(False, device=conv.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.training and not bool(self.initialized):
            self._start_as_identity(y)
        return self.bn(y)

    @torch.no_grad()
    def _start_as_identity(self, y: Tensor) -> None:
        var, mean = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean)
        self.initialized.fill_(True)

    def fold(self) -> nn.Conv2d:
        """The conv with the BN (eval statistics) folded in, in place."""
        conv = self.conv
        with torch.no_grad():
            kernel, bias = fold_bn_module(conv.weight, conv.bias, self.bn)
            conv.weight.copy_(kernel)
            assert conv.bias is not None
            conv.bias.copy_(bias)
        return conv


def add_batchnorm(model: nn.Module) -> nn.Module:
    """Put a `RetrainBN` around every biased Conv2d of ``model``, in place; returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and module.bias is not None and not _inside_retrain_bn(model, name):
            model.set_submodule(name, RetrainBN(module))
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every `RetrainBN` back into its conv, in place (eval statistics); returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, RetrainBN):
            model.set_submodule(name, module.fold())
    return model


def train_deploy(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    *,
    param_groups: Callable[[nn.Module, TrainConfig], list[dict[str, Any]]] | None = None,
    after_backward: Callable[[], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """`dscnn.train.train_and_evaluate` on a deploy-form model, with BNs re-inserted meanwhile.

    ``model`` is trained in place and ends plain (every re-inserted BN folded), in eval mode.
    """
    add_batchnorm(model)
    try:
        return train_and_evaluate(
            model, data, config, param_groups=param_groups, after_backward=after_backward, progress=progress
        )
    finally:
        fold_batchnorm(model.eval())


def _inside_retrain_bn(model: nn.Module, name: str) -> bool:
    parent, _, _ = name.rpartition(".")
    return bool(name) and isinstance(model.get_submodule(parent) if parent else model, RetrainBN)

