"""ONNX export: one graph per patch size from `model.static(p)`, validated, with a manifest.

Torch-based (import it only where torch is installed); see export/README.md for the artifact layout.
"""

from ..artifacts import export_dir, load_export_manifest
from .graphs import ExportResult, GraphRecord, StaleGraph, export_graphs
from .onnx_export import DEFAULT_OPSET, PRECISIONS, ExportedGraph, export_onnx, graph_module
from .ops import OpReport, UnsupportedOpsError, check_trt_ops, load_op_table
from .source import ModelSource
from .validate import TOLERANCES, ValidationError, ValidationReport, validate_onnx

__all__ = [
    "DEFAULT_OPSET",
    "PRECISIONS",
    "TOLERANCES",
    "ExportResult",
    "ExportedGraph",
    "GraphRecord",
    "ModelSource",
    "OpReport",
    "StaleGraph",
    "UnsupportedOpsError",
    "ValidationError",
    "ValidationReport",
    "check_trt_ops",
    "export_dir",
    "export_graphs",
    "export_onnx",
    "graph_module",
    "load_export_manifest",
    "load_op_table",
    "validate_onnx",
]
