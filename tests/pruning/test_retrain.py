"""Training a deploy graph with BN put back: identity at the start, exact fold at the end."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pruning.retrain import RetrainBN, add_batchnorm, fold_batchnorm
from tests.pruning.tiny import tiny_deploy


def test_batchnorm_starts_as_identity_and_folds_exactly() -> None:
    model = tiny_deploy("resnet20", dtype=torch.float64)
    reference = copy.deepcopy(model)
    add_batchnorm(model)
    wrapped = [m for m in model.modules() if isinstance(m, RetrainBN)]
    assert len(wrapped) == sum(isinstance(m, nn.Conv2d) for m in reference.modules())
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference(x))  # eval identity before any training step
        train_out = model.train()(x)  # the first training batch sets the BN to the identity on itself
    scale = reference(x).abs().max()
    assert (train_out - reference(x)).abs().max() <= 1e-10 * scale
    # pretend training moved the BN: the fold must reproduce the eval-mode model exactly
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in wrapped:
            m.bn.running_var.mul_(torch.rand(m.bn.num_features, generator=g, dtype=torch.float64) + 0.5)
            m.bn.bias.add_(torch.randn(m.bn.num_features, generator=g, dtype=torch.float64) * 0.1)
        expected = model.eval()(x)
        fold_batchnorm(model)
        assert not any(isinstance(m, (RetrainBN, nn.BatchNorm2d)) for m in model.modules())
        assert (model(x) - expected).abs().max() <= 1e-10 * expected.abs().max()


def test_bias_free_convs_stay_without_batchnorm() -> None:
    model = tiny_deploy("dscnn_t0")  # its head conv is bias-free, as in the train form
    add_batchnorm(model)
    assert isinstance(model.head_conv, nn.Conv2d) and isinstance(model.stages[0][0].expand.conv, RetrainBN)
    add_batchnorm(model)  # a second call wraps nothing twice
    assert not any(isinstance(m.conv, RetrainBN) for m in model.modules() if isinstance(m, RetrainBN))
