"""The TensorRT operator-support check against the checked-in table (onnx-tensorrt's operators.md)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from flexidit_trt.export import UnsupportedOpsError, check_trt_ops, load_op_table
from flexidit_trt.export.ops import OPS_FILE


def tiny_graph(nodes, inputs, outputs, opset: int = 17, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets)
    return onnx.shape_inference.infer_shapes(model)


def vec(name: str, elem=TensorProto.FLOAT, n=4):
    return helper.make_tensor_value_info(name, elem, [n])


def test_table_names_its_source_and_range():
    text = OPS_FILE.read_text()
    assert "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md" in text
    table = load_op_table()
    assert (table.tensorrt, table.opset_min, table.opset_max) == ("10.15", 9, 24)
    assert "onnx-tensorrt" in table.source
    # What the DiT graphs use, with the types they use it in.
    for op in ("LayerNormalization", "MatMul", "Gemm", "Softmax", "Conv", "Gather", "Cast", "Transpose"):
        assert {"FP32", "FP16", "BF16"} <= table.types[op], op
    assert "Unique" in table.unsupported and "Unique" not in table.types
    assert "LayerNormalization" in table.restrictions


def test_supported_graph_passes():
    node = helper.make_node("Add", ["a", "b"], ["c"])
    report = check_trt_ops(tiny_graph([node], [vec("a"), vec("b")], [vec("c")]))
    assert report.ok and report.op_counts == {"Add": 1} and report.opset == 17


def test_unsupported_operator_fails():
    node = helper.make_node("Unique", ["a"], ["u"])
    model = tiny_graph([node], [vec("a")], [vec("u")])
    with pytest.raises(UnsupportedOpsError, match=r"operator Unique \(1 nodes\) is listed as unsupported"):
        check_trt_ops(model)
    report = check_trt_ops(model, raise_on_error=False)
    assert not report.ok and report.op_counts == {"Unique": 1}


def test_operator_outside_the_table_and_foreign_domain_fail():
    gelu = helper.make_node("FastGelu", ["a"], ["b"], domain="com.microsoft")
    model = tiny_graph([gelu], [vec("a")], [vec("b")], extra_opsets=[("com.microsoft", 1)])
    with pytest.raises(UnsupportedOpsError, match="com.microsoft::FastGelu .* is not in the table"):
        check_trt_ops(model)


def test_unlisted_types_and_opset_fail():
    add = helper.make_node("Add", ["a", "b"], ["c"])
    doubles = tiny_graph(
        [add], [vec("a", TensorProto.DOUBLE), vec("b", TensorProto.DOUBLE)], [vec("c", TensorProto.DOUBLE)]
    )
    with pytest.raises(UnsupportedOpsError, match="operator Add gets DOUBLE tensors"):
        check_trt_ops(doubles)
    cast = helper.make_node("Cast", ["a"], ["b"], to=TensorProto.DOUBLE)
    with pytest.raises(UnsupportedOpsError, match="operator Cast gets DOUBLE"):
        check_trt_ops(tiny_graph([cast], [vec("a")], [vec("b", TensorProto.DOUBLE)]))
    relu = helper.make_node("Relu", ["a"], ["b"])
    too_new = tiny_graph([relu], [vec("a")], [vec("b")], opset=25)
    with pytest.raises(UnsupportedOpsError, match="opset 25 is outside the 9-24 range"):
        check_trt_ops(too_new)
