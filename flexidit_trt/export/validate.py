"""Validation of an exported graph: ONNX checker, strict shape inference, the signature, TensorRT operator
support, and ONNX Runtime against PyTorch on seeded random inputs.

Error measure: max |ort - torch| over the output (absolute) and that divided by max |torch| (relative:
elementwise ratios blow up where the prediction crosses zero). PyTorch runs the same static module in
the same precision on the CPU, so the error measures the export, not the precision's loss.

bf16 on ONNX Runtime's CPU provider: it has bf16 kernels for Cast and little else (MatMul, Gemm, Conv,
LayerNormalization, Softmax and the elementwise ops are missing), and its fp16→fp32 fallback does not
cover bf16. So a bf16 graph runs *emulated*: every bf16 tensor is read as fp32 and every value the graph
computes in bf16 is rounded to bf16 (Cast to bf16 and back) where it is produced. That is what bf16
kernels that accumulate in fp32 compute, PyTorch's CPU kernels among them; the route is recorded.
fp16 and fp32 graphs run as they are.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from ..artifacts import BuildError, remove_quietly
from .onnx_export import INPUT_NAMES, OUTPUT_NAME, example_inputs
from .ops import OpReport, check_trt_ops

# Allowed max |ort - torch| / max |torch| per precision (same-precision PyTorch reference). fp32 is the
# issue's 1e-4; fp16/bf16 allow for summation order and rounding points differing between the two
# (a few ulps: fp16's ulp is 2^-10, bf16's 2^-7, compounded over the blocks).
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 4e-2}
DEFAULT_BATCHES = (1, 2)


class ValidationError(BuildError):
    """The graph failed a check; the message says which and by how much."""


@dataclass
class Comparison:
    batch: int
    max_abs_error: float
    max_rel_error: float
    reference_max_abs: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ValidationReport:
    precision: str
    tolerance: float
    route: str  # how ONNX Runtime ran the graph (native / bf16 emulated)
    provider: str
    comparisons: list[Comparison]
    ops: OpReport
    seconds: float

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.comparisons), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.comparisons), default=0.0)

    @property
    def passed(self) -> bool:
        return self.ops.ok and all(c.max_rel_error <= self.tolerance for c in self.comparisons)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "tolerance_rel": self.tolerance,
            "route": self.route,
            "provider": self.provider,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "ops": self.ops.to_dict(),
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }


# -- structure -----------------------------------------------------------------------------------------------
def check_structure(path: str | os.PathLike, *, out_channels: int | None = None) -> onnx.ModelProto:
    """ONNX checker, strict shape inference and the signature; returns the graph with inferred types
    (weights not loaded). Raises ValidationError."""
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=False)
        proto = onnx.load(str(path), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ValidationError(f"{path.name}: ONNX checker / shape inference failed: {err}") from None
    _check_signature(inferred, path.name, out_channels)
    return inferred


def _check_signature(model: onnx.ModelProto, name: str, out_channels: int | None) -> None:
    want_in = {"x": TensorProto.FLOAT, "t": TensorProto.FLOAT, "y": TensorProto.INT64}
    got_in = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    outs = list(model.graph.output)
    problems = []
    if got_in != want_in:
        problems.append(f"inputs {_named_types(got_in)} (expected {_named_types(want_in)})")
    if (
        len(outs) != 1
        or outs[0].name != OUTPUT_NAME
        or outs[0].type.tensor_type.elem_type != TensorProto.FLOAT
    ):
        problems.append(f"outputs {[o.name for o in outs]} (expected one float32 '{OUTPUT_NAME}')")
    else:
        dims = outs[0].type.tensor_type.shape.dim
        shape = [d.dim_param or d.dim_value for d in dims]
        if len(shape) != 4 or not isinstance(shape[0], str) or (out_channels and shape[1] != out_channels):
            problems.append(f"output shape {shape} (expected [batch, {out_channels or 'C'}, H, W])")
    if problems:
        raise ValidationError(f"{name}: unexpected graph signature: " + "; ".join(problems))


def _named_types(types: dict[str, int]) -> dict[str, str]:
    return {k: TensorProto.DataType.Name(v).lower() for k, v in types.items()}


# -- numerics ------------------------------------------------------------------------------------------------
def ort_providers() -> list[str]:
    """CUDA when this onnxruntime has it (onnxruntime-gpu), the CPU otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )


def compare_with_torch(
    path: str | os.PathLike,
    module: torch.nn.Module,
    *,
    precision: str,
    batches: tuple[int, ...] = DEFAULT_BATCHES,
    seed: int = 0,
    inferred: onnx.ModelProto | None = None,
    providers: list[str] | None = None,
) -> tuple[list[Comparison], str, str]:
    """Run the graph in ONNX Runtime and `module` (its PyTorch source) on the same seeded inputs.

    Returns (comparisons per batch, route, provider). bf16 graphs run emulated (see the module docstring).
    """
    import onnxruntime as ort

    path = Path(path)
    providers = providers or ort_providers()
    emulated = None
    if precision == "bf16":
        inferred = inferred or check_structure(path)
        # Beside the graph (it references the graph's external data), under a name the folders' orphan
        # cleanup removes (`.*.tmp`) should an interrupt get past the `finally` below.
        emulated = bf16_emulation_path(path)
        route = "bf16 emulated: fp32 compute, every bf16 value rounded where it is produced"
    else:
        route = f"native {precision}"
    try:
        if emulated is not None:
            write_bf16_emulation(inferred, emulated)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about fp16 nodes it runs via fp32 on the CPU; expected
        session = ort.InferenceSession(str(emulated or path), options, providers=providers)
        provider = session.get_providers()[0]
        results = []
        for batch in batches:
            x, t, y = example_inputs(module.config, batch, seed + batch)
            with torch.no_grad():
                ref = module(x, t, y).float().numpy()
            (out,) = session.run(
                [OUTPUT_NAME], dict(zip(INPUT_NAMES, (x.numpy(), t.numpy(), y.numpy()), strict=True))
            )
            if out.shape != ref.shape:
                raise ValidationError(
                    f"{path.name}: ONNX Runtime gave shape {list(out.shape)} at batch {batch}, "
                    f"PyTorch {list(ref.shape)}"
                )
            results.append(_compare(batch, out.astype(np.float32), ref))
        del session
    finally:
        remove_quietly(emulated)
    return results, route, provider


def _compare(batch: int, out: np.ndarray, ref: np.ndarray) -> Comparison:
    if not np.isfinite(out).all() or not np.isfinite(ref).all():
        return Comparison(batch, float("inf"), float("inf"), float(np.nanmax(np.abs(ref))))
    abs_err = float(np.max(np.abs(out - ref)))
    scale = float(np.max(np.abs(ref)))
    return Comparison(batch, abs_err, abs_err / max(scale, 1e-30), scale)


def validate_onnx(
    path: str | os.PathLike,
    module: torch.nn.Module | None,
    *,
    precision: str,
    batches: tuple[int, ...] = DEFAULT_BATCHES,
    tolerance: float | None = None,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """All checks on one graph. `module` None skips the ONNX Runtime comparison (structure and operators
    only). Raises ValidationError (or UnsupportedOpsError) unless raise_on_failure is False."""
    start = time.perf_counter()
    path = Path(path)
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    out_channels = module.config.out_channels if module is not None else None
    inferred = check_structure(path, out_channels=out_channels)
    ops = check_trt_ops(inferred, raise_on_error=raise_on_failure)
    comparisons: list[Comparison] = []
    route, provider = "not run", "none"
    if module is not None:
        comparisons, route, provider = compare_with_torch(
            path, module, precision=precision, batches=batches, inferred=inferred
        )
    report = ValidationReport(
        precision, tolerance, route, provider, comparisons, ops, time.perf_counter() - start
    )
    if raise_on_failure and not report.passed:
        worst = max(comparisons, key=lambda c: c.max_rel_error)
        raise ValidationError(
            f"{path.name}: ONNX Runtime ({provider}, {route}) differs from PyTorch at batch {worst.batch}: "
            f"max abs error {worst.max_abs_error:.3g}, relative {worst.max_rel_error:.3g} > tolerance "
            f"{tolerance:g} for {precision}"
        )
    return report


# -- bf16 emulation for ONNX Runtime's CPU provider ----------------------------------------------------------
def bf16_emulation_path(path: str | os.PathLike) -> Path:
    """Where the emulated copy of the graph at `path` is written while it runs: a hidden `.tmp` file in
    the graph's folder (artifacts.remove_orphans removes any left behind)."""
    path = Path(path)
    return path.with_name(f".{path.name}.bf16-emulated.tmp")


def write_bf16_emulation(inferred: onnx.ModelProto, dest: str | os.PathLike) -> Path:
    """Write a copy of a bf16 graph that ONNX Runtime's CPU provider can run (see the module docstring).

    `inferred` is the graph with inferred value types, weights not loaded: external weights stay where
    they are and are referenced, not copied, so `dest` must sit in the original graph's folder.
    """
    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT
    model = onnx.ModelProto()
    model.CopyFrom(inferred)
    g = model.graph
    types: dict[str, int] = {
        vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]
    }
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ValidationError("bf16 emulation does not handle subgraphs (If/Loop/Scan)")

    nodes = []
    read_as_f32: dict[str, str] = {}  # bf16 initializers/inputs → their fp32 view
    for name in [i.name for i in g.initializer] + [i.name for i in g.input]:
        if types.get(name) == bf16:
            read_as_f32[name] = f"{name}__emu_f32"
            nodes.append(helper.make_node("Cast", [name], [read_as_f32[name]], to=f32))
    for node in g.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(new.input):
            if name in read_as_f32:
                new.input[i] = read_as_f32[name]
        rounded = []
        for i, name in enumerate(new.output):
            if types.get(name) == bf16:
                # Compute (now in fp32), round to bf16, read back as fp32 under the original name.
                new.output[i] = f"{name}__emu_raw"
                rounded += [
                    helper.make_node("Cast", [f"{name}__emu_raw"], [f"{name}__emu_bf16"], to=bf16),
                    helper.make_node("Cast", [f"{name}__emu_bf16"], [name], to=f32),
                ]
        nodes += [new, *rounded]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    for out in g.output:
        if out.type.tensor_type.elem_type == bf16:
            out.type.tensor_type.elem_type = f32
    dest = Path(dest)
    onnx.save_model(model, str(dest))
    return dest
