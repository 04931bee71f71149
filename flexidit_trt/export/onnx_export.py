"""One ONNX graph per patch size: `model.static(p)` (LoRA folded) traced with the TorchScript exporter.

Graph signature, the same at every precision so the runtime can switch engines mid-trajectory with no
conversions (the sampler's latents and its fused step are fp32 whatever the engine's precision):

    x   float32 [batch, C, H, W]    latents
    t   float32 [batch]             timesteps (the sinusoidal embedding needs fp32 range)
    y   int64   [batch]             class labels; num_classes is the null class
    out float32 [batch, 2C, H, W]   noise prediction, then the variance values

`batch` is the only dynamic axis (a guided pass runs the conditional and unconditional halves
together, so it is twice the image batch). The precision lives inside the graph — TensorRT 11 builds
strongly typed networks only — as the weights' dtype plus Casts at the ends; with `fp32_residual` the
embedders, adaLN modulation, gates and the residual stream stay fp32 and only attention and MLP run in
fp16/bf16 (the fix NVIDIA used for fp16 overflow in DiT blocks).

Why the TorchScript exporter: the torch.export-based one needs onnxscript, which neither our CPU
machines nor the GPU machine have; the TorchScript one traces this static network exactly.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from ..artifacts import BuildError, OptionError, fsync_replace, remove_quietly, staging_dir

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_OPSET = 17  # LayerNormalization is a single node from 17; every TensorRT 10.x parser reads 17
MIN_OPSET = 17
# Bump when the graphs change for the same settings and weights (layout, or what the model code puts in
# them, e.g. 2: fp32-residual graphs keep the fp32 weights unrounded; a change to the seeded random init
# too, since random weights are reused by seed): cached graphs of another version re-export.
EXPORTER_VERSION = 2
TRACE_BATCH = 2
# protobuf cannot serialise a message of 2 GiB or more; leave room for the graph beside the weights.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27
INPUT_NAMES = ("x", "t", "y")
OUTPUT_NAME = "out"
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, int64, ...
    shape: tuple[int | str, ...]  # "batch" marks the dynamic axis

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ExportedGraph:
    """What export_onnx wrote: the graph file, its external-data file (if any) and its signature."""

    path: Path
    data_path: Path | None
    patch_size: int
    tokens: int
    precision: str
    fp32_residual: bool
    opset: int
    ir_version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    seconds: float

    @property
    def files(self) -> list[Path]:
        return [self.path] + ([self.data_path] if self.data_path else [])

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def io_dict(self) -> dict:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}


class GraphModule(nn.Module):
    """The exported signature around a static network: whatever its precision, the prediction leaves fp32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, y).float()


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def export_options(
    precision: str, fp32_residual: bool = False, opset: int | None = DEFAULT_OPSET
) -> tuple[str, bool, int | None]:
    """Validated, normalised export options (the public entries call this first, once): OptionError for an
    unknown precision or an unsupported opset (None: not checked); the fp32 residual applies to fp16 and
    bf16 only (an fp32 graph has nothing to keep in fp32), so it comes back False for fp32."""
    precision_dtype(precision)
    if opset is not None:
        check_opset(opset)
    return precision, bool(fp32_residual) and precision != "fp32", opset


def check_opset(opset: int) -> int:
    from .ops import load_op_table

    table = load_op_table()
    hi = min(table.opset_max, _exporter_max_opset())
    if not MIN_OPSET <= opset <= hi:
        raise OptionError(
            f"opset {opset} is not supported: need {MIN_OPSET} (single-node LayerNormalization) to {hi} "
            f"(the lower of the torch exporter's maximum and the {table.describe()})"
        )
    return opset


def _exporter_max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except ImportError:  # moved in some torch version: trust the table's range
        return 99


def graph_module(
    model: nn.Module,
    patch_size: int,
    precision: str = "fp32",
    fp32_residual: bool = False,
    opset: int = DEFAULT_OPSET,
    gelu_epilogue: bool = False,
) -> GraphModule:
    """`model.static(p)` at `precision`, wrapped in the exported signature (the module export_onnx traces).
    gelu_epilogue: for the AOTInductor packages only (an ATen op, not an ONNX one; model.Mlp)."""
    precision, fp32_residual, _ = export_options(precision, fp32_residual, None)
    dtype = PRECISIONS[precision]
    try:
        static = model.static(patch_size, dtype, fp32_residual=fp32_residual, gelu_epilogue=gelu_epilogue)
    except ValueError as err:
        raise BuildError(str(err)) from None
    if dtype == torch.bfloat16 and opset < 22:
        # ONNX admits bf16 Conv only from opset 22; the patch embedding is one tiny conv, so it stays fp32
        # (PatchEmbed casts its input to its weight's dtype, and the residual cast follows it).
        static.x_embedder.float()
    return GraphModule(static).eval()


def example_inputs(
    config, batch: int = TRACE_BATCH, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded inputs of the graph signature: N(0,1) latents, timesteps in [0, 1000), labels incl. null."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000.0
    y = torch.randint(0, config.num_embeddings, (batch,), generator=gen, dtype=torch.int64)
    return x, t, y


def export_onnx(
    model: nn.Module,
    patch_size: int,
    path: str | os.PathLike,
    *,
    precision: str = "fp32",
    fp32_residual: bool = False,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    module: GraphModule | None = None,
    check: Callable[[Path, GraphModule], None] | None = None,
) -> ExportedGraph:
    """Export `model` (a FlexiDiT) at `patch_size` to `path`, atomically.

    external_data: None writes the weights to a side file only when the graph would pass protobuf's
    2 GiB limit; True/False force it. module: a prepared `graph_module(...)` to trace (saves building
    it twice when the caller already has it). check: called with the staged graph before it is moved
    into place; raise from it to abandon the graph (validation uses this, so a graph that fails it
    never lands at `path`).

    The graph goes to a staging folder beside `path`; the external-data file gets a fresh name per
    export (`p2.<token>.onnx.data`) and lands first, then the .onnx replaces the old one in a single
    rename, then data files of earlier exports of this graph are removed. An interrupt leaves the old
    graph intact (plus, at worst, an orphan data file that the next export removes).
    """
    path = Path(path)
    precision, fp32_residual, opset = export_options(precision, fp32_residual, opset)
    module = module or graph_module(model, patch_size, precision, fp32_residual, opset)
    config = module.config
    start = time.perf_counter()
    with staging_dir(path.parent) as stage:
        staged, data_name, ir_version = _export_to(stage, path.stem, module, opset, external_data)
        seconds = time.perf_counter() - start  # the export alone; validation reports its own time
        if check is not None:
            check(staged, module)
        if data_name is not None:
            fsync_replace(stage / data_name, path.parent / data_name)
        fsync_replace(staged, path)
    _remove_stale_data(path, keep=data_name)
    inputs, outputs = graph_signature(config)
    return ExportedGraph(
        path=path,
        data_path=path.parent / data_name if data_name else None,
        patch_size=patch_size,
        tokens=config.tokens(patch_size),
        precision=precision,
        fp32_residual=fp32_residual,
        opset=opset,
        ir_version=ir_version,
        inputs=inputs,
        outputs=outputs,
        seconds=seconds,
    )


def file_signature(path: str | os.PathLike) -> dict:
    """The inputs and outputs an ONNX file declares, as the manifest records them (its weights unread)."""
    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value.name, "dtype": dtype, "shape": dims}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def graph_signature(config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs every exported graph of `config` has (whatever the patch size and precision):
    what the manifest records, and what a reused entry's record is checked against."""
    spatial = (config.input_size, config.input_size)
    inputs = [
        TensorSpec("x", "float32", (BATCH_AXIS, config.in_channels, *spatial)),
        TensorSpec("t", "float32", (BATCH_AXIS,)),
        TensorSpec("y", "int64", (BATCH_AXIS,)),
    ]
    return inputs, [TensorSpec(OUTPUT_NAME, "float32", (BATCH_AXIS, config.out_channels, *spatial))]


def _export_to(
    stage: Path, stem: str, module: GraphModule, opset: int, external_data: bool | None
) -> tuple[Path, str | None, int]:
    """Trace `module` into `stage`; returns (the staged graph, its external-data file name or None, IR version)."""
    raw_dir = stage / "raw"
    raw_dir.mkdir()
    raw = raw_dir / "model.onnx"
    args = example_inputs(module.config)
    dynamic = {name: {0: BATCH_AXIS} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-side shape checks (constant per graph: the sequence length is
        # fixed per engine) and about the TorchScript exporter's deprecation (see the module docstring).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # A path, not a buffer: graphs over 2 GiB need a folder for the exporter's external data.
        torch.onnx.export(
            module,
            args,
            str(raw),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load(str(raw))  # pulls in any external data the exporter wrote
    config = module.config
    proto.graph.name = f"{config.name}_p{config.patch_size}"
    helper.set_model_props(
        proto,
        {
            "flexidit_trt.patch_size": str(config.patch_size),
            "flexidit_trt.tokens": str(config.tokens(config.patch_size)),
            "flexidit_trt.config": config.to_json(),
        },
    )
    weight_bytes = sum(_tensor_nbytes(t) for t in proto.graph.initializer)
    use_external = weight_bytes >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    staged = stage / f"{stem}.onnx"
    data_name = None
    if use_external:
        data_name = f"{stem}.{uuid.uuid4().hex[:12]}.onnx.data"
        onnx.save_model(
            proto,
            str(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(staged))
    ir_version = proto.ir_version
    del proto
    shutil.rmtree(raw_dir)
    return staged, data_name, ir_version


def _tensor_nbytes(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * _elem_size(t.data_type)


def _elem_size(elem_type: int) -> int:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, TypeError):
        return 4


def _remove_stale_data(path: Path, keep: str | None) -> None:
    # Data files of earlier exports of this graph (each export names its own): no graph refers to them.
    for old in path.parent.glob(f"{path.stem}.*.onnx.data"):
        if old.name != keep:
            remove_quietly(old)
