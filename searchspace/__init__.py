"""searchspace: the latency-budgeted architecture search over the re-parameterized space.

``run_search(SearchConfig.from_mapping({"budget_ms": 2, "dataset": "cifar10", ...}))`` runs or
resumes a study; ``search.py`` is its command line. Ray Tune (several machines) is selected by
``SearchConfig.ray`` and lives in `searchspace.ray_backend`, imported only when used.
"""

from searchspace.baselines import BASELINES, Baseline, get_baseline
from searchspace.config import SETTINGS, InvalidSetting, RayConfig, SearchConfig, default_of, read_study_table
from searchspace.run import SearchResult, run_search
from searchspace.space import SPACES, get_space, sample
from searchspace.storage import open_storage

__all__ = [
    "BASELINES", "SETTINGS", "SPACES", "Baseline", "InvalidSetting", "RayConfig", "SearchConfig", "SearchResult",
    "default_of", "get_baseline", "get_space", "open_storage", "read_study_table", "run_search", "sample",
]
