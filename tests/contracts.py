"""Shared contracts every re-parameterizable block and registry model must satisfy (docs/design.md section 0)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dscnn import Reparameterizable, is_deploy_form, reparameterize_model

#: Leaf module types allowed in a deploy-form model (docs/design.md section 0: "deploy form is plain").
PLAIN_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Identity, nn.Sigmoid,
    nn.Softmax, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Dropout,
    nn.GroupNorm,  # SCConv's SRU: not linear, so never fused
)

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters so that an identity-like fold cannot pass by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.8 + 0.2)
                if m.affine:
                    m.weight.copy_(1 + torch.randn(n, generator=g) * 0.3)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.3)
            for name, p in m.named_parameters(recurse=False):
                # zero-initialised scales (e.g. layer scale 1e-5) would hide a wrong branch: make them O(1)
                if "scale" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 1)


def assert_plain(model: nn.Module) -> None:
    """No BN, no unfused branch module; every leaf is a plain layer."""
    assert is_deploy_form(model)
    for name, m in model.named_modules():
        assert not isinstance(m, nn.modules.batchnorm._BatchNorm), f"BatchNorm left at {name}"
        if isinstance(m, Reparameterizable):
            assert m.is_reparameterized, f"unfused block at {name}"
        if not list(m.children()):
            assert isinstance(m, PLAIN_LEAVES), f"non-plain leaf {type(m).__name__} at {name}"


def assert_deploy_equivalent(module: nn.Module, x: Tensor, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
    """Train vs deploy form agree within the docs/design.md section 0 tolerance; fusing twice changes nothing."""
    module = copy.deepcopy(module).to(dtype)
    randomize_bn(module, seed)
    module.eval()
    x = x.to(dtype)
    with torch.no_grad():
        y_train = module(x)
        reparameterize_model(module)
        y_deploy = module(x)
        state = {k: v.clone() for k, v in module.state_dict().items()}
        reparameterize_model(module)
        y_again = module(x)
    assert y_deploy.shape == y_train.shape
    scale = y_train.abs().max().item()
    err = (y_deploy - y_train).abs().max().item()
    assert err <= TOL[dtype] * scale, f"deploy differs from train: {err:.3g} > {TOL[dtype]:g} * {scale:.3g}"
    assert torch.equal(y_again, y_deploy)
    assert state.keys() == module.state_dict().keys()
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert_plain(module)


def assert_trains(model: nn.Module, x: torch.Tensor, num_classes: int = 10) -> None:
    """Train-mode forward gives finite logits of the right shape and the backward reaches every parameter."""
    model.train()
    y = model(x)
    assert y.shape == (x.shape[0], num_classes) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
