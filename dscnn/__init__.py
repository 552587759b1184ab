"""dscnn: structurally re-parameterized blocks and models that fold exactly into plain convs."""

from dscnn import models as _models  # noqa: F401  (registers every model)
from dscnn._registry import build_model, config_from_dict, create_model, list_models, register_model
from dscnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dscnn.complexity import count_macs, count_params, deploy_copy
from dscnn.config import ArchConfig
from dscnn.reparam import Reparameterizable, is_deploy_form, reparameterize_model

__all__ = [
    "ArchConfig", "CheckpointError", "Reparameterizable", "build_model", "config_from_dict",
    "count_macs", "count_params", "create_model", "deploy_copy", "is_deploy_form", "list_models",
    "load_checkpoint", "register_model", "reparameterize_model", "save_checkpoint",
]

# Deployment cost measurement (latency protocol, on-disk cache, the one cost function).
from dscnn.cost import DeployCost, measure_deploy_cost  # noqa: E402
from dscnn.latency import LatencyResult, LatencySettings, NoisyMeasurementWarning, measure_latency_ms  # noqa: E402
from dscnn.measure_cache import MeasureCache  # noqa: E402

__all__ += [
    "DeployCost", "LatencyResult", "LatencySettings", "MeasureCache", "NoisyMeasurementWarning",
    "measure_deploy_cost", "measure_latency_ms",
]
