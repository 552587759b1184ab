"""A "plain twin" of a deploy-form model: the same layers in one flat, straight-line forward.

The twin is what a hand-written plain network with exactly the deploy model's convs would be: no
module hierarchy, no per-block Python ``forward``, no no-op modules, every leaf layer a direct
attribute of one module. Timing deploy form against twin shows what the block structure itself
costs at inference (the issue's check: the deploy form within 10% of its twin).

Built with ``torch.fx``: the deploy model is traced, every leaf module call is retargeted to a flat
attribute ``m0, m1, ...``, and Identity/Dropout calls are removed. The twin is checked numerically
against the model it came from, so a wrong twin is an error, never a fast number.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from dscnn import is_deploy_form

_NO_OPS = (nn.Identity, nn.Dropout)


def plain_twin(deploy: nn.Module, example: Tensor) -> fx.GraphModule:
    """A flat copy of ``deploy`` (a fused model in eval mode) that computes the same function.

    Args:
        deploy: a deploy-form model (``dscnn.deploy_copy`` output).
        example: an input used to check that twin and model agree.

    Raises:
        ValueError: ``deploy`` is not fused, cannot be traced, or the twin disagrees with it.
    """
    if not is_deploy_form(deploy):
        raise ValueError("plain_twin needs a deploy-form model: call dscnn.deploy_copy first")
    deploy = deploy.eval()
    try:
        traced = fx.symbolic_trace(deploy)
    except Exception as e:  # fx raises many types for data-dependent control flow
        raise ValueError(f"cannot trace {type(deploy).__name__} into a plain twin: {e}") from e
    flat = nn.Module()
    graph = traced.graph
    for node in list(graph.nodes):
        if node.op == "get_attr":  # a parameter or buffer used directly by some forward
            name = f"p{len(flat._parameters) + len(flat._buffers)}"
            value = _get_attr(traced, node.target)
            if isinstance(value, nn.Parameter):
                flat.register_parameter(name, value)
            else:
                flat.register_buffer(name, value)
            node.target = name
        elif node.op == "call_module":
            module = traced.get_submodule(node.target)
            if isinstance(module, _NO_OPS):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                continue
            name = f"m{len(flat._modules)}"
            flat.add_module(name, module)  # shared, not copied: the twin has exactly the same weights
            node.target = name
    twin = fx.GraphModule(flat, graph, class_name=f"{type(deploy).__name__}PlainTwin").eval()
    twin.graph.lint()
    _check_same_function(deploy, twin, example)
    return twin


def _get_attr(module: nn.Module, target: str) -> Tensor:
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    value = getattr(owner, name)
    if not isinstance(value, Tensor):
        raise ValueError(f"plain twin: attribute {target!r} is not a tensor")
    return value


def _check_same_function(model: nn.Module, twin: nn.Module, x: Tensor) -> None:
    with torch.inference_mode():
        y, y_twin = model(x), twin(x)
    err = (y - y_twin).abs().max().item()
    if err > 1e-5 * max(y.abs().max().item(), 1e-12):
        raise ValueError(f"plain twin disagrees with its model: max abs error {err:.3g}")
