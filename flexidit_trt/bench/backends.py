"""The backends `flexidit-trt bench` compares: their names, the torch variants (one lever each), the
label each results file carries, and why one cannot run here."""

from __future__ import annotations

from ..model.fp8 import FP8_MIN_ROWS
from ..runtime.choose import installed
from .diffusers_peer import DIFFUSERS_PRECISIONS, peer_spec

# The torch engines the bench compares: one per lever, each adding to the one before (EngineOptions'
# options, every one given: `run` turns the GELU epilogue on by itself), so a lever's gain is the difference
# of two neighbouring columns.
_LEVERS = ("compile", "precompute_modulation", "gelu_epilogue", "flash_attention", "autotune")
TORCH_VARIANTS: dict[str, dict[str, bool]] = {
    name: {**dict(zip(_LEVERS, (i < on for i in range(len(_LEVERS))), strict=True)), "fp8": False}
    for on, name in enumerate(
        ("torch-eager", "torch", "torch-premod", "torch-fused", "torch-flash", "torch-tuned")
    )
}
# torch-fp8: torch-flash with the blocks' GEMMs in FP8 where their rows make FP8 win (`model.fp8`), a lever
# for throughput at large batches; bf16/fp16 only, asked for by name.
TORCH_VARIANTS["torch-fp8"] = {**TORCH_VARIANTS["torch-flash"], "fp8": True}
BACKENDS = (
    "trt",
    "aoti",
    "torch",
    "torch-premod",
    "torch-fused",
    "torch-flash",
    "torch-tuned",
    "torch-fp8",
    "torch-eager",
    "ort",
    *(f"diffusers{c}-{p}" for c in ("-compiled", "") for p in DIFFUSERS_PRECISIONS),
)
# What a user asks for by these names runs at every precision diffusers is benched at (both files written).
BACKEND_GROUPS = {
    stem: tuple(f"{stem}-{p}" for p in DIFFUSERS_PRECISIONS) for stem in ("diffusers", "diffusers-compiled")
}
# The run order: each backend's file is written as it finishes, so a backend that takes the process down
# (an AOTInductor package that crashes on load) goes last and loses no one else's numbers.
# torch-tuned is asked for by name only: minutes of autotuning for engines that measured slower
# (benchmarks/NOTES.md).
DEFAULT_BACKENDS = (
    "torch-eager",
    "torch",
    "torch-premod",
    "torch-fused",
    "torch-flash",
    "ort",
    "trt",
    "aoti",
)


def expand_backends(names: tuple[str, ...]) -> tuple[str, ...]:
    """The backends to run, in run order: groups (`diffusers`, `diffusers-compiled`) expanded to their
    precisions, duplicates dropped, the diffusers-compiled ones first (every other trajectory's
    speedup_vs_diffusers is taken against them, so they are measured before it). ValueError names unknown
    ones."""
    bad = [n for n in names if n not in BACKENDS and n not in BACKEND_GROUPS]
    if not names or bad:
        allowed = ", ".join((*BACKENDS, *BACKEND_GROUPS))
        raise ValueError(f"unknown backend(s) {bad or '(none)'}; allowed: {allowed}")
    out = tuple(dict.fromkeys(b for n in names for b in BACKEND_GROUPS.get(n, (n,))))
    return tuple(sorted(out, key=lambda b: not b.startswith("diffusers-compiled-")))


def is_diffusers(name: str) -> bool:
    return name.startswith("diffusers-")


def backend_label(name: str, device: str) -> str:
    if is_diffusers(name):
        compiled, precision = peer_spec(name)
        how = ', transformer torch.compile(mode="reduce-overhead", fullgraph=True)' if compiled else ", eager"
        return (
            f"diffusers DiTPipeline, {precision}{how}, same weights, DDPM, tiny stand-in VAE decode "
            "(see bench/diffusers_peer.py)"
        )
    gpu = device != "cpu"
    graphs = " in CUDA graphs, one shared pool" if gpu else " (CPU)"
    premod = "torch.compile, adaLN modulation precomputed per chunk"
    fused = premod + (", fc1 + GELU in one GEMM" if gpu else "")
    return {
        "trt": "TensorRT engines, one shared activation block, CUDA graphs",
        "aoti": "AOTInductor packages in CUDA graphs, one shared pool",
        "torch": "torch.compile (GELU epilogue off)" + graphs,
        "torch-premod": premod + graphs,
        "torch-fused": fused + (graphs if gpu else " (CPU: no GEMM epilogue)"),
        "torch-flash": fused
        + (", flash attention in engines of <= 64 tokens" + graphs if gpu else " (CPU: as torch-premod)"),
        "torch-tuned": fused
        + (
            ", flash attention and inductor max-autotune in engines of <= 64 tokens" + graphs
            if gpu
            else " (CPU: as torch-premod, nothing tuned)"
        ),
        "torch-fp8": fused
        + ", flash attention in engines of <= 64 tokens"
        + f", block GEMMs of >= {FP8_MIN_ROWS} rows in FP8 e4m3 with per-row scales"
        + graphs,
        "torch-eager": "eager PyTorch" + graphs,
        "ort": "ONNX Runtime "
        + ("CUDA provider, IO binding, ORT's CUDA graphs where it captures them" if gpu else "CPU provider"),
    }[name]


def config_difference(engine_config: dict, model_config: dict) -> str:
    """The first shape field that differs between an engine's config and the benchmarked model's."""
    keys = (
        "depth",
        "hidden_size",
        "num_heads",
        "patch_size",
        "input_size",
        "in_channels",
        "num_classes",
        "mlp_ratio",
        "learn_sigma",
    )
    for key in keys:
        if key in engine_config and engine_config[key] != model_config[key]:
            return f"{key} {engine_config[key]} vs {model_config[key]}"
    return ""


def unavailable(backend: str, device: str) -> str | None:
    """Why `backend` cannot run on `device` in this installation, before anything is built or loaded (a
    missing runtime is the reason a reader needs, not the missing engines it would have loaded)."""
    if is_diffusers(backend):
        if not installed("diffusers"):
            return "diffusers is not installed here (pip install 'flexidit-trt[bench]')"
        if peer_spec(backend)[0] and device == "cpu":
            return 'torch.compile(mode="reduce-overhead") captures CUDA graphs; this run is on the CPU'
        return None
    if backend == "trt" and not installed("tensorrt"):
        return "TensorRT is not installed here"
    if backend in ("trt", "aoti") and device == "cpu":
        return f"the {backend} backend runs engines on a CUDA GPU; this run is on the CPU"
    if backend == "ort":
        if not installed("onnxruntime"):
            return "onnxruntime is not installed here"
        from ..engines.ort_backend import provider_missing

        return provider_missing(device)
    return None
