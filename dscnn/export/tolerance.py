"""How far from the float64 truth a correct float32 implementation of a model may land.

docs/design.md section 0 judges equality by ``max|y - y_ref| <= 1e-5 * max|y_ref|``. On the
output alone that is meaningless for a model whose logits are small next to its activations (a
barely trained one: logits of 0.09 after activations of 4): float32 rounding inside the network
is then a large fraction of the logits, and two correct float32 runtimes (PyTorch, onnxruntime's
MLAS kernels, with other summation orders) can each miss it by 25x.

So the tolerance is applied where it is meaningful, to every layer, and carried to the output:
the float64 reference is run once more with each leaf module's output moved by up to
``rel`` times that layer's own magnitudes, with random signs (seeded), and the largest change this
causes at the output is the error a correct float32 export may show. "A layer's own magnitudes"
are, per output element, ``|W| * |x| + |b|`` for a conv or linear layer (the bound of a dot
product's rounding error grows with the sum of absolute products, not with the result, which
cancellation can make small) and ``|y|`` for any other leaf. With ``rel = 1e-5`` each layer may be
wrong by about 100 float32 ulps of its magnitudes, far more than rounding (a K-term dot product
rounds to about ``sqrt(K)`` ulps), while a real bug (a wrong bias, a dropped BatchNorm, a
mis-fused branch) moves some layer by far more than 1e-5 of its magnitudes and still fails.
The output floor stays ``rel * max|y_ref|``, so a model with large logits is judged as before.
Hard decisions (a threshold on a gate) are not continuous; every run here takes the decisions of
the model under test (`dscnn.export.decisions`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dscnn.export.decisions import DecisionLog, forced_decisions

DRAWS = 2  # independent sign patterns; the allowed error is the largest response


def float64_reference(model: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``model`` in eval mode (the caller's model is untouched)."""
    return copy.deepcopy(model).to("cpu", torch.float64).eval()


def allowed_error(reference64: nn.Module, x: Tensor, rel: float, *, forced: Sequence[Tensor] | None = None,
                  log: DecisionLog | None = None, seed: int = 0) -> tuple[Tensor, float]:
    """(float64 output, allowed max abs error) of ``reference64`` (from `float64_reference`) on ``x``.

    ``forced``: the decisions of the model under test (`dscnn.export.decisions`), taken by every run
    here; what the reference would have decided otherwise is recorded in ``log``.
    """
    x = x.detach().to("cpu", torch.float64)
    log = log if log is not None else DecisionLog()
    with torch.inference_mode(), forced_decisions(forced, rel, log):
        y64 = reference64(x)
    largest = 0.0
    for draw in range(DRAWS):
        generator = torch.Generator().manual_seed(seed + draw)
        hooks = [leaf.register_forward_hook(_perturb(rel, generator)) for leaf in _leaves(reference64)]
        try:
            with torch.inference_mode(), forced_decisions(forced, rel, DecisionLog()):
                moved = reference64(x)
        finally:
            for hook in hooks:
                hook.remove()
        largest = max(largest, (moved - y64).abs().max().item())
    return y64, max(largest, rel * y64.abs().max().item())


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())] or [model]


Hook = Callable[[nn.Module, tuple[object, ...], object], object]


def _perturb(rel: float, generator: torch.Generator) -> Hook:
    def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> object:
        if not (isinstance(output, Tensor) and output.is_floating_point() and inputs and isinstance(inputs[0], Tensor)):
            return None  # leave non-tensor outputs (and layers without a tensor input) as they are
        scale = _magnitudes(module, inputs[0], output)
        noise = torch.rand(output.shape, generator=generator, dtype=output.dtype) * 2 - 1
        return output + rel * scale * noise

    return hook


def _magnitudes(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per output element: ``|W| |x| + |b|`` for convs and linears, ``|y|`` for anything else."""
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        bias = None if module.bias is None else module.bias.abs()
        return F.conv2d(x.abs(), module.weight.abs(), bias, module.stride, module.padding, module.dilation,
                        module.groups)
    if isinstance(module, nn.Linear):
        return F.linear(x.abs(), module.weight.abs(), None if module.bias is None else module.bias.abs())
    return y.abs()
