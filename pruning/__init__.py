"""Channel pruning of deploy graphs under a FLOPs target: shared graph layer + algorithms.

Shared layer: `pruning.groups` (coupling groups from Torch-Pruning's dependency graph),
`pruning.flops` (deploy MACs of implied widths), `pruning.surgery` (physical removal + numerical
check), `pruning.targets` (``0.3G`` / ``0.5x``), `pruning.retrain` (training a deploy graph with BN
put back), `pruning.source` (checkpoint or torchvision model in, pruned model out), `pruning.run`
(the driver every `PruningAlgorithm` shares), `pruning.report`, `pruning._cli`.
Algorithms: `pruning.resrep` (ResRep, ``python -m pruning.resrep``), `pruning.csgd` (Centripetal SGD,
``python -m pruning.csgd``; with `pruning.kmeans`, `pruning.clusters`, `pruning.widths`).
"""

from pruning.algorithm import PruningAlgorithm
from pruning.flops import CostModel
from pruning.groups import ChannelGroup, GroupScan, Member, find_groups
from pruning.report import ModelStats, PruneReport
from pruning.run import RunConfig, run_pruning
from pruning.surgery import remove_channels
from pruning.targets import FlopsTarget, parse_target

__all__ = [
    "CSGD", "CSGDConfig", "ChannelGroup", "CostModel", "FlopsTarget", "GroupScan", "Member", "ModelStats", "PruneReport",
    "PruningAlgorithm", "ResRep", "ResRepConfig", "RunConfig", "find_groups", "parse_target",
    "remove_channels", "run_pruning",
]


def __getattr__(name: str) -> object:
    # Lazy: `python -m pruning.resrep` must not find pruning.resrep imported by the package first.
    if name in ("ResRep", "ResRepConfig"):
        from pruning import resrep

        return getattr(resrep, name)
    if name in ("CSGD", "CSGDConfig"):
        from pruning import csgd

        return getattr(csgd, name)
    raise AttributeError(f"module 'pruning' has no attribute {name!r}")
