"""C-SGD's clusters on the layers of a group: the centripetal gradient, the merge, the spread.

A group's clustering is one label per group channel (`pruning.csgd.kmeans`). A layer tied to the group
sees it through its own channel numbering (`pruning.groups.Member.channels`: per group channel,
this layer's indices, usually one; a flattened feature map gives a linear layer one per position).
`member_ids` turns the labels into one cluster id per layer channel: channels of one group cluster
at the same position share an id, and layer channels outside the group get ids of their own, so
every formula below leaves them alone.

The merge (docs/design.md 6.3) keeps the first channel of each cluster: every producer's rows of the cluster
become their mean, and each consumer's input slices of the cluster are summed into the kept one
(the others zeroed). The result computes exactly what the pruned model will, and exactly what the
trained model did when the cluster members were identical (kernel and bias).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from pruning.groups import OUT, ChannelGroup, Member


def member_ids(member: Member, labels: Tensor, width: int) -> Tensor:
    """One cluster id per channel of ``member`` (``width`` of them) on its side of the group."""
    k = int(labels.max()) + 1
    positions = max((len(c) for c in member.channels), default=1) or 1
    ids = torch.arange(width) + k * positions  # outside the group: a cluster of its own
    for r, indices in enumerate(member.channels):
        for t, c in enumerate(indices):
            ids[c] = int(labels[r]) * positions + t
    return _compact(ids)


def kept_channels(labels: Tensor) -> Tensor:
    """Bool per group channel: True for the first (smallest) channel of each cluster."""
    first = torch.full((int(labels.max()) + 1,), labels.numel(), dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(labels.numel()), reduce="amin")
    keep = torch.zeros(labels.numel(), dtype=torch.bool)
    keep[first] = True
    return keep


def cluster_mean(values: Tensor, ids: Tensor) -> Tensor:
    """Per row (dim 0) of ``values``: the mean of the rows with the same id."""
    ids = ids.to(values.device)
    count = values.shape[0]  # ids are < rows (`member_ids`); no ids.max(): it would sync a GPU every step
    sums = values.new_zeros((count, *values.shape[1:])).index_add_(0, ids, values)
    sizes = values.new_zeros(count).index_add_(0, ids, torch.ones_like(ids, dtype=values.dtype))
    return (sums / sizes.clamp_min(1).view(-1, *([1] * (values.ndim - 1))))[ids]


def centripetal_gradient(weight: Tensor, grad: Tensor, ids: Tensor, strength: float, weight_decay: float) -> Tensor:
    """docs/design.md 6.2: row i of cluster C gets ``mean_{j in C} g_j + wd * W_i + strength * (W_i - mean_{j in C} W_j)``."""
    return cluster_mean(grad, ids) + weight_decay * weight + strength * (weight - cluster_mean(weight, ids))


def cluster_spread(vectors: Tensor, ids: Tensor) -> tuple[float, float]:
    """Largest distance of a row to its cluster mean: absolute, and relative to that mean's norm."""
    mean = cluster_mean(vectors, ids)
    distance = (vectors - mean).norm(dim=1)
    relative = distance / mean.norm(dim=1).clamp_min(1e-12)
    relative[distance == 0] = 0.0
    return float(distance.max()), float(relative.max())


def group_spread(model: nn.Module, group: ChannelGroup, labels: Tensor) -> tuple[float, float]:
    """`cluster_spread` of each producer's rows (kernel row and bias, float64); the largest of them."""
    spreads = [(0.0, 0.0)]
    for member in group.producers:
        conv = model.get_submodule(member.module)
        assert isinstance(conv, nn.Conv2d)
        parts = [conv.weight.detach().flatten(1)]
        if conv.bias is not None:
            parts.append(conv.bias.detach().unsqueeze(1))
        rows = torch.cat(parts, dim=1).double().cpu()
        spreads.append(cluster_spread(rows, member_ids(member, labels, rows.shape[0])))
    return max(s[0] for s in spreads), max(s[1] for s in spreads)


def merge_clusters(
    model: nn.Module, groups: tuple[ChannelGroup, ...], labels: Mapping[str, Tensor]
) -> dict[str, list[int]]:
    """Merge each group's clusters in place (see module docstring); returns, per root, the channels to remove."""
    removed: dict[str, list[int]] = {}
    with torch.no_grad():
        for group in groups:
            keep = kept_channels(labels[group.root])
            for member in group.members:
                layer = model.get_submodule(member.module)
                assert isinstance(layer, (nn.Conv2d, nn.Linear))
                if member.side == OUT:
                    _average_rows(layer, member_ids(member, labels[group.root], layer.weight.shape[0]))
                else:
                    _sum_columns(layer, member, labels[group.root], keep)
            removed[group.root] = (~keep).nonzero().flatten().tolist()
    return removed


def _average_rows(layer: nn.Conv2d | nn.Linear, ids: Tensor) -> None:
    layer.weight.copy_(cluster_mean(layer.weight, ids))
    if layer.bias is not None:
        layer.bias.copy_(cluster_mean(layer.bias, ids))


def _sum_columns(layer: nn.Conv2d | nn.Linear, member: Member, labels: Tensor, keep: Tensor) -> None:
    """Input slices of a cluster summed into the kept channel's slice; the others zeroed."""
    columns = layer.weight.transpose(0, 1)  # (in, out, ...): a view, written in place
    ids = member_ids(member, labels, columns.shape[0]).to(columns.device)
    sums = columns.new_zeros((int(ids.max()) + 1, *columns.shape[1:])).index_add_(0, ids, columns)
    kept = torch.ones(columns.shape[0], dtype=torch.bool)
    for r, indices in enumerate(member.channels):
        kept[list(indices)] = bool(keep[r])
    kept = kept.to(columns.device).view(-1, *([1] * (columns.ndim - 1)))
    columns.copy_(torch.where(kept, sums[ids], torch.zeros_like(columns)))


def _compact(ids: Tensor) -> Tensor:
    """Renumber ids to 0..m-1 (same grouping), so per-cluster buffers stay small."""
    return torch.unique(ids, return_inverse=True)[1]
