"""Channel pruning of deploy graphs under a FLOPs (deploy MACs) or measured-latency target: a shared graph layer + algorithms.

Shared layer: `pruning.groups` (coupling groups from Torch-Pruning's dependency graph),
`pruning.macs` (deploy MACs of implied widths), `pruning.widths` (uniform target widths),
`pruning.surgery` (physical removal + numerical check), `pruning.targets` (``0.3G`` / ``0.5x``),
`pruning.retrain` (training a deploy graph with BN put back), `pruning.source` (checkpoint or
torchvision model in, pruned model out), `pruning.run` (the driver every `PruningAlgorithm`
shares), `pruning.report`, `pruning._cli`.
Algorithms, each a subpackage with its own helpers: `pruning.resrep` (ResRep: compactors, mask
updates; ``python -m pruning.resrep``), `pruning.csgd` (Centripetal SGD: k-means, clusters,
per-layer ratio widths; ``python -m pruning.csgd``) and `pruning.magnitude` (L1 magnitude,
Torch-Pruning's group importance, then fine-tuning; ``python -m pruning.magnitude``).
"""

from pruning.algorithm import PruningAlgorithm, PruningError
from pruning.csgd import CSGD, CSGDConfig
from pruning.groups import ChannelGroup, GroupScan, Member, find_groups
from pruning.macs import CostModel
from pruning.magnitude import Magnitude, MagnitudeConfig
from pruning.report import ModelStats, PruneReport
from pruning.resrep import ResRep, ResRepConfig
from pruning.run import RunConfig, run_pruning
from pruning.surgery import remove_channels
from pruning.targets import MacsTarget, parse_target

__all__ = [
    "CSGD", "CSGDConfig", "ChannelGroup", "CostModel", "MacsTarget", "GroupScan", "Magnitude", "MagnitudeConfig",
    "Member", "ModelStats", "PruneReport",
    "PruningAlgorithm", "PruningError", "ResRep", "ResRepConfig", "RunConfig", "find_groups", "parse_target",
    "remove_channels", "run_pruning",
]
