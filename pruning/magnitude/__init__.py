"""L1 magnitude pruning (Torch-Pruning's group L1 importance) on the deploy graph, then fine-tuning.

`pruning.magnitude.algorithm` (Magnitude, MagnitudeConfig), `pruning.magnitude.cli`
(``python -m pruning.magnitude``).
"""

from pruning.magnitude.algorithm import Magnitude, MagnitudeConfig
from pruning.magnitude.cli import main

__all__ = ["Magnitude", "MagnitudeConfig", "main"]
