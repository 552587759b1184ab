"""Hard decisions (``gate > threshold``) taken the same way by the reference and the export.

A model with a hard threshold (SCConv's SRU splits features by ``sigmoid(...) > 0.5``) is not
continuous: an element whose gate is within rounding of the threshold goes one way in float64 and
the other way in a float32 runtime, and the output jumps by far more than any rounding (one flip
moved a barely trained DSCNN's logits by 2e-6 where rounding alone moves them by 1e-7). Two
correct float32 runtimes disagree that way too. So the float64 reference takes the *export's*
decisions: onnxruntime is asked for the result of every comparison node as an extra output (a
copy of the graph, in memory; the file is not changed), and the reference's comparisons, in the
order it executes them, return those results instead (`forced_decisions`, a torch function
mode). Every decision the reference would have taken otherwise must be one it takes within
``tolerance`` of the compared values' magnitude from the threshold: a flip further away is a
real difference (a wrong gate), reported as a problem. For TorchScript, which runs PyTorch's
kernels, the decisions are those of PyTorch's own float32 run (`recorded_decisions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

ONNX_COMPARISONS = ("Greater", "Less", "GreaterOrEqual", "LessOrEqual")
_TORCH = {
    torch.gt: torch.gt, torch.greater: torch.gt, Tensor.gt: torch.gt, Tensor.__gt__: torch.gt,
    torch.lt: torch.lt, torch.less: torch.lt, Tensor.lt: torch.lt, Tensor.__lt__: torch.lt,
    torch.ge: torch.ge, torch.greater_equal: torch.ge, Tensor.ge: torch.ge, Tensor.__ge__: torch.ge,
    torch.le: torch.le, torch.less_equal: torch.le, Tensor.le: torch.le, Tensor.__le__: torch.le,
}


def with_decision_outputs(proto: onnx.ModelProto) -> tuple[bytes, int]:
    """A serialized copy of ``proto`` that also outputs every comparison node's result, and their count."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    names = [node.output[0] for node in model.graph.node if node.op_type in ONNX_COMPARISONS]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, None))
    return model.SerializeToString(), len(names)


@dataclass
class DecisionLog:
    """What the reference did with the forced decisions of one forward pass."""

    aligned: bool = True  # the reference made exactly as many comparisons, of the same shapes
    flipped: int = 0  # elements decided otherwise than the reference would have
    far: list[str] = field(default_factory=list)  # flips far from the threshold: real differences


class _Mode(TorchFunctionMode):
    def __init__(self, forced: Sequence[Tensor] | None, tolerance: float, log: DecisionLog) -> None:
        super().__init__()
        self.forced, self.tolerance, self.log = forced, tolerance, log
        self.seen: list[Tensor] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if func not in _TORCH or not isinstance(result, Tensor) or len(args) < 2:
            return result
        index = len(self.seen)
        self.seen.append(result)
        if self.forced is None:
            return result
        if index >= len(self.forced) or tuple(self.forced[index].shape) != tuple(result.shape):
            self.log.aligned = False
            return result
        decision = self.forced[index].to(result.device)
        differs = decision != result
        if bool(differs.any()):
            self.log.flipped += int(differs.sum())
            a, b = (torch.as_tensor(v, dtype=torch.float64) for v in args[:2])
            margin = (a - b).abs().expand_as(result)[differs]
            band = self.tolerance * max(a.abs().max().item(), b.abs().max().item(), 1e-30)
            if margin.max().item() > band:
                self.log.far.append(f"comparison {index}: {int((margin > band).sum())} element(s) decided otherwise "
                                    f"up to {margin.max().item():.3g} from the threshold (allowed {band:.3g})")
        return decision


@contextmanager
def recorded_decisions() -> Iterator[list[Tensor]]:
    """Collect the result of every tensor comparison run inside, in order."""
    mode = _Mode(None, 0.0, DecisionLog())
    with mode:
        yield mode.seen


@contextmanager
def forced_decisions(forced: Sequence[Tensor] | None, tolerance: float, log: DecisionLog) -> Iterator[None]:
    """Make the comparisons run inside return ``forced`` (in order); None: change nothing."""
    if forced is None:
        yield
        return
    mode = _Mode(forced, tolerance, log)
    with mode:
        yield
    if len(mode.seen) != len(forced):
        log.aligned = False


def as_tensors(arrays: Sequence[Any]) -> list[Tensor]:
    return [torch.from_numpy(np.asarray(a)) for a in arrays]
