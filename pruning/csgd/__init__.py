"""Centripetal SGD (Ding et al., CVPR 2019) on the deploy graph: the algorithm and its clustering.

`pruning.csgd.algorithm` (CSGD, CSGDConfig), `pruning.csgd.kmeans`, `pruning.csgd.clusters`
(centripetal gradient, cluster merge), `pruning.csgd.widths` (per-layer ratio widths), `pruning.csgd.cli`.
"""

from pruning.csgd.algorithm import CONVERGED, CSGD, GAMMA_FACTOR, VECTOR_FACTOR, CSGDConfig
from pruning.csgd.cli import main

__all__ = ["CONVERGED", "CSGD", "CSGDConfig", "GAMMA_FACTOR", "VECTOR_FACTOR", "main"]
