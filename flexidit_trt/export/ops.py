"""Does TensorRT's ONNX parser take this graph? Checked against the operator table in
`tensorrt_onnx_ops.txt` (transcribed from onnx-tensorrt's docs/operators.md; the file names its source).

Checked: the default-domain opset is in the table's range; every node is in the default ONNX domain,
listed as supported, and fed only tensors of the types the table lists for it (a Cast also by its
target type). Not checked: the free-text restrictions, which are reported beside each operator used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import onnx
from onnx import TensorProto

from ..artifacts import BuildError

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")

# ONNX element types → the names the operator table uses.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.INT4: "INT4",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.FLOAT4E2M1: "FP4",
}


class UnsupportedOpsError(BuildError):
    """The graph uses operators, types or an opset that TensorRT's ONNX parser does not list."""


@dataclass(frozen=True)
class OpTable:
    tensorrt: str  # the TensorRT version the table describes
    opset_min: int
    opset_max: int
    types: dict[str, frozenset[str]]  # supported operator → listed types
    restrictions: dict[str, str]
    unsupported: frozenset[str]
    source: str
    sha256: str = ""  # of the table file's text

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} ONNX parser table (opsets {self.opset_min}-{self.opset_max})"

    @property
    def version(self) -> str:
        """Identifies the table's content: a graph checked against this version needs no second check
        while its bytes are unchanged (the export manifest records it per graph as `ops_table`)."""
        return f"{self.tensorrt}/{self.sha256[:16]}"


@dataclass
class OpReport:
    table: str
    opset: int
    op_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    restrictions: dict[str, str] = field(default_factory=dict)  # for the operators used

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "table": self.table,
            "opset": self.opset,
            "op_counts": dict(sorted(self.op_counts.items())),
            "problems": list(self.problems),
            "restrictions": dict(sorted(self.restrictions.items())),
        }


@lru_cache(maxsize=4)
def load_op_table(path: str | Path = OPS_FILE) -> OpTable:
    """Parse the checked-in operator table (see the file's header for its format and source)."""
    path = Path(path)
    version, opsets, section = None, None, None
    types: dict[str, frozenset[str]] = {}
    restrictions: dict[str, str] = {}
    unsupported: set[str] = set()
    source = ""
    text = path.read_text()
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if "https://" in line and not source:
                source = line.lstrip("# ").strip()
            continue
        if not line:
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section is None:
            key, _, value = line.partition(" ")
            if key == "tensorrt":
                version = value.strip()
            elif key == "opsets":
                lo, hi = value.split()
                opsets = (int(lo), int(hi))
            continue
        if section == "unsupported":
            unsupported.add(line)
            continue
        spec, _, note = line.partition("|")
        name, listed = spec.split()
        types[name] = frozenset(listed.split(","))
        if note.strip():
            restrictions[name] = note.strip()
    if version is None or opsets is None:
        raise ValueError(f"{path}: missing the 'tensorrt' or 'opsets' header line")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return OpTable(version, opsets[0], opsets[1], types, restrictions, frozenset(unsupported), source, digest)


def check_trt_ops(
    model: onnx.ModelProto, table: OpTable | None = None, *, raise_on_error: bool = True
) -> OpReport:
    """Check a graph against TensorRT's operator table; raise UnsupportedOpsError listing every problem.

    `model` should carry inferred value types (onnx.shape_inference.infer_shapes) so inputs of every node
    have a known type; tensors of unknown type are not judged.
    """
    table = table or load_op_table()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = OpReport(table=table.describe(), opset=opset, op_counts={})
    if not table.opset_min <= opset <= table.opset_max:
        report.problems.append(
            f"opset {opset} is outside the {table.opset_min}-{table.opset_max} range of the {table.describe()}"
        )
    dtypes = _value_types(model)
    bad_types: dict[tuple[str, str], int] = {}
    for node in _all_nodes(model.graph):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        report.op_counts[op] = report.op_counts.get(op, 0) + 1
        if op in table.restrictions:
            report.restrictions[op] = table.restrictions[op]
        listed = table.types.get(op)
        if listed is None:
            continue  # reported once below
        seen = [dtypes.get(name) for name in node.input if name]
        if node.op_type == "Cast":
            seen.append(next((a.i for a in node.attribute if a.name == "to"), None))
        for elem in seen:
            if elem is None:
                continue
            name = _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))
            if name not in listed:
                bad_types[(op, name)] = bad_types.get((op, name), 0) + 1
    for op in sorted(report.op_counts):
        if op not in table.types:
            why = "listed as unsupported" if op in table.unsupported else "not in the table"
            report.problems.append(f"operator {op} ({report.op_counts[op]} nodes) is {why}")
    for (op, name), count in sorted(bad_types.items()):
        report.problems.append(
            f"operator {op} gets {name} tensors ({count}x); the table lists {','.join(sorted(table.types[op]))}"
        )
    if report.problems and raise_on_error:
        raise UnsupportedOpsError(
            f"graph {model.graph.name or '(unnamed)'} does not fit the {table.describe()} [{table.source}]:\n  "
            + "\n  ".join(report.problems)
        )
    return report


def _all_nodes(graph: onnx.GraphProto):
    # Subgraphs (If/Loop bodies) are parsed by TensorRT too, so their nodes count.
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types
