"""ResRep (Ding et al., ICCV 2021) on the deploy graph: the algorithm, its compactors and mask updates.

`pruning.resrep.algorithm` (ResRep, ResRepConfig), `pruning.resrep.compactor` (compactor layers),
`pruning.resrep.masking` (global mask updates to a MACs target), `pruning.resrep.cli`.
"""

from pruning.resrep.algorithm import SMALL_ROW_NORM, ResRep, ResRepConfig
from pruning.resrep.cli import main

__all__ = ["SMALL_ROW_NORM", "ResRep", "ResRepConfig", "main"]
