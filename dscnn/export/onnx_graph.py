"""Structural checks on an exported ONNX graph: is it the plain deploy form?

What "plain" means here (docs/design.md section 0, "deploy form is plain"), made concrete for a graph:
- no ``BatchNormalization`` node (every BN must be folded into a conv), and
- no *mergeable parallel convs*: two ``Conv`` nodes that read the same tensor with the same stride,
  dilation and group count and whose outputs are summed, possibly through nested ``Add``/``Sum``
  nodes and ``BatchNormalization``/``Identity`` nodes in between. Such a pair is exactly what docs/design.md
  rule 2 fuses into one conv, so finding one means a re-param block was left unfused.

interpretation: architecture residuals (``Add(conv(x), x)``) are allowed, and so are sums of convs
that differ in stride, dilation or groups (e.g. SCConv's grouped 3x3 + pointwise pair, which the
deploy form keeps by design): they are not re-parameterization branches.
"""

from __future__ import annotations

from collections import Counter

import onnx

_SUMS = ("Add", "Sum")
_LOOK_THROUGH = ("BatchNormalization", "Identity")  # single-data-input nodes between a conv and its sum


def node_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Count of each node type (``op_type``) in the main graph, most frequent first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def find_parallel_branches(model: onnx.ModelProto) -> list[str]:
    """One description per group of mergeable parallel convs summed in ``model`` (empty: plain).

    A nested sum (``(a + b) + c``) is searched as one sum of its leaves; every group is reported once.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[frozenset[str], str] = {}
    for node in model.graph.node:
        if node.op_type not in _SUMS:
            continue
        groups: dict[tuple[object, ...], list[onnx.NodeProto]] = {}
        for conv in _summed_convs(node, producer):
            groups.setdefault(_merge_key(conv, producer), []).append(conv)
        for key, convs in groups.items():
            names = frozenset(c.name or c.output[0] for c in convs)
            if len(names) > 1 and names not in found:
                found[names] = f"{len(names)} parallel Conv nodes ({', '.join(sorted(names))}) read {key[0]!r} and are summed"
    return list(found.values())


def _summed_convs(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The Conv nodes whose outputs reach the sum ``node`` through sums, BNs and Identity nodes only."""
    convs, stack, seen = [], list(node.input), set()
    while stack:
        name = stack.pop()
        source = producer.get(name)
        if source is None or name in seen:
            continue  # a graph input or initializer, or already visited
        seen.add(name)
        if source.op_type == "Conv":
            convs.append(source)
        elif source.op_type in _SUMS:
            stack.extend(source.input)
        elif source.op_type in _LOOK_THROUGH:
            stack.append(source.input[0])  # the data input; a BN's other inputs are its statistics
    return convs


def _merge_key(conv: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> tuple[object, ...]:
    """(input tensor, strides, dilations, groups): convs sharing it fuse into one by docs/design.md rule 2."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    return (
        _resolve(conv.input[0], producer),
        tuple(attrs.get("strides", (1, 1))),  # ONNX defaults: 1 along each (here 2-D) axis
        tuple(attrs.get("dilations", (1, 1))),
        attrs.get("group", 1),
    )


def _resolve(name: str, producer: dict[str, onnx.NodeProto]) -> str:
    """Follow Identity nodes back to the tensor they forward."""
    while (node := producer.get(name)) is not None and node.op_type == "Identity":
        name = node.input[0]
    return name
