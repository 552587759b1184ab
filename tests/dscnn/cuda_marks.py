"""The ``cuda`` marker (pyproject.toml) with its skip: CUDA-marked tests run where a GPU is, skip elsewhere.

``pytest -m cuda`` selects exactly these (benchmarks/gpu_suite.sh runs them first on a GPU machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

F = TypeVar("F", bound=Callable[..., object])


def needs_cuda(test: F) -> F:
    """Mark ``test`` ``cuda`` and skip it when torch sees no CUDA GPU."""
    skipped = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    return pytest.mark.cuda(skipped)
