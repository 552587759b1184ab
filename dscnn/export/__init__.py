"""Export of deploy-form models (ONNX, TorchScript), each file checked against PyTorch.

Library: `export_onnx`, `export_torchscript`, `verify_onnx`, `verify_torchscript`,
`measure_onnx_latency_ms` (`dscnn.export.files`) and `run_export` (`dscnn.export.run`: a checkpoint
in, files and a typed `ExportReport` out). Command line: ``python -m dscnn.export``
(`dscnn.export.cli`).
"""

from dscnn.export.files import (
                                DEFAULT_OPSET,
                                REL_TOLERANCE,
                                OutputCheck,
                                VerifyReport,
                                export_onnx,
                                export_torchscript,
                                measure_onnx_latency_ms,
                                verify_onnx,
                                verify_torchscript,
)
from dscnn.export.run import ExportConfig, ExportReport, real_inputs, run_export

__all__ = [
    "DEFAULT_OPSET", "REL_TOLERANCE", "ExportConfig", "ExportReport", "OutputCheck", "VerifyReport", "export_onnx",
    "export_torchscript", "measure_onnx_latency_ms", "real_inputs", "run_export", "verify_onnx", "verify_torchscript",
]
