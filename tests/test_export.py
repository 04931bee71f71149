"""ONNX export of one patch size: the graph matches PyTorch in ONNX Runtime, has the documented signature,
carries the LoRA, and lands atomically."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from flexidit_trt.artifacts import BuildError
from flexidit_trt.export import TOLERANCES, ValidationError, export_onnx, graph_module, validate_onnx
from flexidit_trt.export.onnx_export import example_inputs, export_options
from flexidit_trt.model import FlexiDiT


@pytest.fixture(scope="module")
def model() -> FlexiDiT:
    """dit_s cut to 2 blocks on a 16x16 latent, with LoRA adapters that actually change p4."""
    m = FlexiDiT.from_config("dit_s", init="random", input_size=16, depth=2, lora_rank=4, seed=3)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in m.lora_layers():
            for adapter in layer.lora.values():
                adapter["up"].weight.copy_(torch.randn(adapter["up"].weight.shape, generator=gen) * 0.05)
    return m


def run_ort(path, x, t, y) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})[0]


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("p", [2, 4])
def test_fp32_graph_matches_pytorch(model, tmp_path, p):
    graph = export_onnx(model, p, tmp_path / f"p{p}.onnx", precision="fp32")
    report = validate_onnx(graph.path, graph_module(model, p, "fp32"), precision="fp32", batches=(1, 2, 3))
    assert report.passed and report.max_rel_error <= 1e-4
    assert report.provider == "CPUExecutionProvider" and report.route == "native fp32"
    assert graph.tokens == (16 // p) ** 2 and graph.data_path is None


def test_graph_is_the_flexible_model_at_that_patch_size(model, tmp_path):
    """The p4 graph equals FlexiDiT.forward(..., patch_size=4): weak embeddings and LoRA folded in."""
    graph = export_onnx(model, 4, tmp_path / "p4.onnx", precision="fp32")
    x, t, y = example_inputs(model.config, batch=3, seed=11)
    with torch.no_grad():
        flexible = model(x, t, y, patch_size=4).numpy()
    assert rel_error(run_ort(graph.path, x, t, y), flexible) <= 1e-4
    # The adapters matter (the same model without them is far off), so the match means they are in.
    base_only = FlexiDiT.from_config(model.config.replace(lora_rank=0), init="empty")
    state = {k: v for k, v in model.state_dict().items() if ".lora." not in k}
    base_only.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert rel_error(base_only(x, t, y, patch_size=4).numpy(), flexible) > 1e-3


def test_signature_and_dynamic_batch(model, tmp_path):
    graph = export_onnx(model, 2, tmp_path / "p2.onnx", precision="fp16")
    proto = onnx.load(str(graph.path), load_external_data=False)
    elem = {i.name: i.type.tensor_type.elem_type for i in [*proto.graph.input, *proto.graph.output]}
    assert elem == {
        "x": onnx.TensorProto.FLOAT,
        "t": onnx.TensorProto.FLOAT,
        "y": onnx.TensorProto.INT64,
        "out": onnx.TensorProto.FLOAT,
    }
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in [*proto.graph.input, *proto.graph.output]
    }
    assert dims == {"x": ["batch", 4, 16, 16], "t": ["batch"], "y": ["batch"], "out": ["batch", 8, 16, 16]}
    ops = {n.op_type for n in proto.graph.node}
    assert "Einsum" not in ops and "Transpose" in ops  # unpatchify's permutation is a plain Transpose
    assert [s.to_dict() for s in graph.inputs][0] == {
        "name": "x",
        "dtype": "float32",
        "shape": ["batch", 4, 16, 16],
    }
    x, t, y = example_inputs(model.config, batch=5, seed=2)
    assert run_ort(graph.path, x, t, y).shape == (5, 8, 16, 16)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("fp32_residual", [False, True])
def test_low_precision_graphs_validate(model, tmp_path, precision, fp32_residual):
    graph = export_onnx(model, 2, tmp_path / "p2.onnx", precision=precision, fp32_residual=fp32_residual)
    module = graph_module(model, 2, precision, fp32_residual)
    report = validate_onnx(graph.path, module, precision=precision, batches=(2,))
    assert report.passed and report.max_rel_error <= TOLERANCES[precision]
    assert report.route.startswith("bf16 emulated" if precision == "bf16" else "native fp16")
    proto = onnx.load(str(graph.path), load_external_data=False)
    inits = {i.data_type for i in proto.graph.initializer if len(i.dims) == 2}  # the linear layers
    want = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    assert want in inits
    assert (onnx.TensorProto.FLOAT in inits) == fp32_residual  # fp32 adaLN/embedders only with the residual
    assert not list(tmp_path.glob(".*emulated*"))  # the emulation copy is removed


def test_external_data_layout_and_cleanup(model, tmp_path):
    first = export_onnx(model, 2, tmp_path / "p2.onnx", precision="fp32", external_data=True)
    assert first.data_path is not None and first.data_path.name.startswith("p2.") and first.data_path.exists()
    assert first.path.stat().st_size < 100_000  # the weights are in the side file
    report = validate_onnx(first.path, graph_module(model, 2, "fp32"), precision="fp32", batches=(2,))
    assert report.max_rel_error <= 1e-4
    second = export_onnx(model, 2, tmp_path / "p2.onnx", precision="fp32", external_data=True)
    assert second.data_path != first.data_path and not first.data_path.exists()  # old side file removed
    third = export_onnx(model, 2, tmp_path / "p2.onnx", precision="fp32", external_data=False)
    assert third.data_path is None and not list(tmp_path.glob("*.onnx.data"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.onnx"]  # no staging leftovers


def test_failed_check_leaves_the_old_graph(model, tmp_path):
    path = tmp_path / "p2.onnx"
    export_onnx(model, 2, path, precision="fp32")
    before = path.read_bytes()

    def reject(staged, module):
        assert staged.exists() and staged != path
        raise ValidationError("rejected on purpose")

    with pytest.raises(ValidationError, match="rejected on purpose"):
        export_onnx(model, 2, path, precision="fp16", check=reject)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.onnx"]


def test_validation_fails_above_tolerance(model, tmp_path):
    graph = export_onnx(model, 2, tmp_path / "p2.onnx", precision="fp32")
    other = FlexiDiT.from_config(model.config, init="random", seed=99)  # different weights: big error
    with pytest.raises(ValidationError, match="differs from PyTorch"):
        validate_onnx(graph.path, graph_module(other, 2, "fp32"), precision="fp32", batches=(1,))


def test_bad_arguments(model, tmp_path):
    with pytest.raises(BuildError, match="unknown precision"):
        export_onnx(model, 2, tmp_path / "p2.onnx", precision="int8")
    with pytest.raises(BuildError, match="opset 13 is not supported"):
        export_onnx(model, 2, tmp_path / "p2.onnx", opset=13)
    with pytest.raises(BuildError, match="patch size 8 is not one of"):
        export_onnx(model, 8, tmp_path / "p8.onnx")
    assert not list(tmp_path.iterdir())


def test_bf16_emulation_copy_is_removed_when_interrupted(model, tmp_path, monkeypatch):
    """The emulated copy is written inside the try: an interrupt while writing it or running it leaves
    nothing beside the graph."""
    import flexidit_trt.export.validate as validate

    graph = export_onnx(model, 2, tmp_path / "p2.onnx", precision="bf16")
    real = validate.write_bf16_emulation

    def interrupted(inferred, dest):
        assert dest == validate.bf16_emulation_path(graph.path)
        real(inferred, dest)
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "write_bf16_emulation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        validate_onnx(graph.path, graph_module(model, 2, "bf16"), precision="bf16", batches=(1,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.onnx"]


def test_export_options_normalise_the_fp32_residual(model, tmp_path):
    assert export_options("fp32", True, 17) == ("fp32", False, 17)
    assert export_options("bf16", 1, None) == ("bf16", True, None)
    with pytest.raises(BuildError, match="unknown precision 'fp8'"):
        export_options("fp8")
    graph = export_onnx(model, 4, tmp_path / "p4.onnx", precision="fp32", fp32_residual=True)
    assert graph.fp32_residual is False


def test_a_provider_without_the_graphs_precision_says_to_export_fp16(model, tmp_path):
    """ONNX Runtime's CPU provider has no bf16 kernels: loading a real bf16 graph there fails with its
    NOT_IMPLEMENTED, and the ort backend's error says which precision has kernels (the CUDA provider has
    gaps in bf16 too); the fp16 graph loads."""
    from flexidit_trt.engines.backend import RunError
    from flexidit_trt.engines.ort_backend import OrtBackend

    bf16 = export_onnx(model, 2, tmp_path / "bf16" / "p2.onnx", precision="bf16")
    with pytest.raises(
        RunError, match=r"NOT_IMPLEMENTED.*bf16 has no kernel there: export the graphs in fp16"
    ):
        OrtBackend.load(bf16.path, 2, "cpu")
    fp16 = export_onnx(model, 2, tmp_path / "fp16" / "p2.onnx", precision="fp16")
    assert OrtBackend.load(fp16.path, 2, "cpu").session.get_providers() == ["CPUExecutionProvider"]
    # An fp16 graph with an operator the provider lacks gets ONNX Runtime's reason and no bf16 hint.
    unknown = onnx.load(str(fp16.path))
    unknown.graph.node[0].op_type = "NoSuchOp"
    unknown.graph.node[0].domain = "com.example"
    unknown.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(unknown, str(tmp_path / "unknown.onnx"))
    with pytest.raises(RunError, match="cannot be loaded by ONNX Runtime") as err:
        OrtBackend.load(tmp_path / "unknown.onnx", 2, "cpu")
    assert "bf16" not in str(err.value)
