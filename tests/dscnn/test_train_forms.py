"""The registry contract for both training modes, over the same cases as `test_models` (SPEC 9).

- online (OREPA) form: forward/backward reaches every parameter, and it fuses to a deploy form
  equal to its own train-mode function in eval (the contract of `tests.contracts`);
- the default exact fast path equals the per-branch reference for one whole-model train step.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from dscnn.blocks.fast_branch import branch_impl
from dscnn.online import is_online, to_online
from tests.contracts import assert_deploy_equivalent, assert_trains
from tests.dscnn.test_models import CASES, _small


@pytest.mark.parametrize("name,overrides", CASES)
def test_online_forward_backward(name: str, overrides: dict[str, Any]) -> None:
    assert_trains(to_online(_small(name, overrides)), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,overrides", CASES)
def test_online_deploy_equivalence(name: str, overrides: dict[str, Any], dtype: torch.dtype) -> None:
    assert_deploy_equivalent(to_online(_small(name, overrides)), torch.randn(2, 3, 32, 32), dtype)


def test_online_conversion_is_explicit() -> None:
    model = _small("dscnn_t0", {})
    assert not is_online(model)
    assert is_online(to_online(model))


#: Models whose train form holds fast-path blocks (depthwise BranchConv), at tiny widths: float64
#: convolutions have no oneDNN kernel, so full widths would make this the slowest test here.
FAST_PATH_CASES = [("dscnn_t0", {"widths": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "head_dim": 32}),
                   ("dscnn_t0", {"widths": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "branch_set": "7x7,3x3,1x1,id"}),
                   ("falconnet", {"depths": (1, 1, 1, 1)})]


@pytest.mark.parametrize("name,overrides", FAST_PATH_CASES)
def test_train_step_fast_path_equals_reference(name: str, overrides: dict[str, Any]) -> None:
    """Output, every gradient and every buffer after one float64 train step, fast vs reference."""
    model = _small(name, overrides).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    runs = []
    for impl in ("fast", "reference"):
        m = copy.deepcopy(model)
        with branch_impl(impl):
            y = m(x)
        y.square().mean().backward()
        runs.append((y.detach(), m))
    (y_fast, fast), (y_ref, ref) = runs
    assert (y_fast - y_ref).abs().max() <= 1e-9 * y_ref.abs().max()
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(fast.named_parameters(), ref.parameters())]
    assert all(a is not None and b is not None for _, a, b in grads)
    floor = 1e-6 * max(float(b.abs().max()) for _, _, b in grads)  # theoretically-zero grads (bias before BN)
    for n, a, b in grads:
        assert float((a - b).abs().max()) <= 1e-8 * max(float(b.abs().max()), floor), n
    for (n, b), c in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(b.double(), c.double(), rtol=1e-9, atol=1e-12), n
