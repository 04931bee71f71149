"""Checkpoint formats: the official DiT `.pt`, diffusers' DiTTransformer2DModel folder, and ours.

- official: a plain state dict in the reference key layout, or a training checkpoint of DiT's train.py
  ({"model", "ema", "opt", "args"}, read from "ema"); only the base patch size, weak sizes are derived by
  pseudo-inverse resize.
- diffusers: a folder with config.json and diffusion_pytorch_model*.safetensors (or .bin): q/k/v split,
  the timestep and class embedders copied into every block; mapped back to the reference layout.
  The files read are the full-precision weights (the shards their index names, or one file), as
  diffusers reads them when no variant is asked for; a variant such as `.fp16` only when it is the only
  weights there.
- flexible (ours): one .safetensors file with the base weights, `weak.p<k>.*` embeddings, `*.lora.p<k>.*`
  adapters and the config as JSON metadata, written by `save_checkpoint`.

Every loaded tensor must be finite: NaN or Inf are refused here, by name, not minutes later by export
validation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..artifacts import atomic_path
from ..errors import FlexiditError
from .config import CONFIGS, DiTConfig
from .dit import FlexiDiT, is_base_key

FORMAT_TAG = "flexidit-trt/1"


class CheckpointError(FlexiditError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says exactly why."""


# -- reading -----------------------------------------------------------------------------------------------
def load_checkpoint(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    model: FlexiDiT | None = None,
    *,
    patch_sizes: tuple[int, ...] | None = None,
) -> FlexiDiT:
    """Load any supported checkpoint into `model`, or into a model whose config is inferred from it.

    patch_sizes: for layouts that carry only the base patch (official, diffusers) and no `model`, the
    patch sizes to build (default: base and twice the base); weak sizes start from the resized base.
    """
    state, config, hints = read_state_dict(source)
    check_finite(state)
    layout = detect_layout(state)
    if layout == "diffusers":
        state = diffusers_to_reference(state)
    if model is None:
        inferred = config or infer_config(state, **hints)
        if layout != "flexible" and patch_sizes is not None:
            inferred = inferred.replace(patch_sizes=tuple(patch_sizes))
        elif layout != "flexible":
            inferred = inferred.replace(patch_sizes=(inferred.patch_size, 2 * inferred.patch_size))
        model = FlexiDiT.from_config(inferred, init="empty")
    if layout == "diffusers" and "pos_embed" not in state:
        state["pos_embed"] = model.pos_embed.detach().clone()  # diffusers recomputes the fixed table too
    _check_keys(model, state, flexible=(layout == "flexible"))
    with torch.no_grad():
        own = model.state_dict()
        for key, value in state.items():
            own[key].copy_(value)
        if layout != "flexible":
            model.init_weak_from_base()
            _reset_adapters(model)
    return model


def read_state_dict(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], DiTConfig | None, dict]:
    """Tensors of a checkpoint (file, folder or mapping), the config stored with it if any, and hints
    for config inference that shapes cannot give (diffusers' head count and sample size)."""
    if isinstance(source, Mapping):
        return _unwrap(dict(source)), None, {}
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_diffusers_folder(path)
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
        return state, config_from_metadata(path, meta), {}
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return _unwrap(dict(obj)), None, {}


def config_from_metadata(path: Path, meta: Mapping[str, str]) -> DiTConfig | None:
    """The config `save_checkpoint` stores in a .safetensors header; None for files not written by it."""
    if meta.get("format") != FORMAT_TAG:
        return None
    if "config" not in meta:
        raise CheckpointError(f"{path}: malformed metadata: format {FORMAT_TAG} but no 'config' entry")
    try:
        return DiTConfig.from_json(meta["config"])
    except json.JSONDecodeError as err:
        problem = f"'config' is not JSON ({err})"
    except KeyError as err:
        problem = f"'config' is missing {err}"
    except (TypeError, ValueError) as err:  # unknown or missing fields, or values no config can have
        problem = f"'config' is not a DiT config: {err}"
    raise CheckpointError(f"{path}: malformed metadata: {problem}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    _refuse_empty(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"cannot read safetensors file {path}: {err}") from err
    return state, meta


def _refuse_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy?")


@contextlib.contextmanager
def _training_globals():
    """Allow, besides tensors, exactly what DiT's train.py pickles beyond them: its argparse.Namespace
    (`args`). torch before 2.5 has no safe_globals; such checkpoints then fail with the message below."""
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
        yield


def _torch_load(path: Path) -> object:
    """torch.load with weights_only (a checkpoint must not run code), with one clear line for files
    that are not checkpoints: empty, not a zip or pickle at all, or a pickled object such as a module."""
    _refuse_empty(path)
    with open(path, "rb") as f:
        head = f.read(64)
    # torch.save writes a zip archive (since torch 1.6) or, in the legacy format, a pickle (protocol 2+).
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":
        preview = head.decode("utf-8", errors="replace").splitlines()[0][:40] if head.strip() else head[:16]
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); it starts with {preview!r}"
        )
    try:
        with _training_globals():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise CheckpointError(f"cannot read checkpoint file {path}: {_first_line(err)}") from None
        if _pickles_a_module(path):
            raise CheckpointError(
                f"{path} holds a pickled module object ({found.group(1)}), not a state dict; where the "
                "module is made, save its weights instead: torch.save(module.state_dict(), 'weights.pt')"
            ) from None
        raise CheckpointError(
            f"{path} holds a pickled {found.group(1)} object, which a checkpoint of tensors does not contain; "
            "save a dict of tensors (a state dict) instead"
        ) from None
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint file {path}: {_first_line(err)}") from err


def _pickles_a_module(path: Path) -> bool:
    """Whether the file's pickle holds an nn.Module: its state carries `_modules` and `_parameters`.
    Only the zip format's small data.pkl is read (the tensors are separate entries)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError):
        return False
    return b"_modules" in data and b"_parameters" in data


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def check_finite(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN or Inf weights by tensor name. One min/max reduction per tensor (NaN propagates through
    both, Inf shows as an extreme): about 1 s for DiT-XL's 675 M weights on 2 CPU cores, no copies."""
    bad = []
    for name, tensor in state.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        # An expanded (zero-stride) axis repeats one value: reduce over one slice of it.
        core = tensor[tuple(0 if s == 0 else slice(None) for s in tensor.stride())]
        if all(torch.isfinite(v) for v in torch.aminmax(core)):
            continue
        nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
        kinds = " and ".join(k for k, n in (("NaN", nan), ("Inf", inf)) if n)
        bad.append(f"{name} holds {kinds} ({nan + inf} of {tensor.numel()} elements)")
    if bad:
        raise CheckpointError(
            f"checkpoint weights are not finite (a diverged run or a damaged file?): {_listing(bad, 4)}"
        )


def _unwrap(obj: dict) -> dict[str, torch.Tensor]:
    # DiT's training script saves {"model", "ema", "opt", "args"}; its sampler prefers "ema".
    for key in ("ema", "model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = dict(obj[key])
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"not a state dict: entries {bad[:5]} are not tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"


def _read_diffusers_folder(path: Path) -> tuple[dict[str, torch.Tensor], None, dict]:
    folder = path / "transformer" if (path / "transformer" / "config.json").exists() else path
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{path} is a folder but has no config.json (expected a diffusers DiT folder)")
    try:
        meta = json.loads((folder / "config.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON: {err}") from None
    hints = {}
    if "num_attention_heads" in meta:
        hints["num_heads"] = int(meta["num_attention_heads"])
    if "sample_size" in meta:
        hints["input_size"] = int(meta["sample_size"])
    state: dict[str, torch.Tensor] = {}
    for file in _diffusers_weight_files(folder):
        state.update(_read_safetensors(file)[0] if file.suffix == ".safetensors" else _torch_load(file))
    return state, None, hints


def _diffusers_weight_files(folder: Path) -> list[Path]:
    """The full-precision weights (safetensors before .bin; the shards the index names, or the single
    file), which diffusers reads when no variant is asked for; else a variant (`<name>.fp16.safetensors`,
    or shards under `<name>.safetensors.index.fp16.json`) where it is the only one in the folder."""
    stem = _DIFFUSERS_WEIGHTS
    for ext in ("safetensors", "bin"):
        if (index := folder / f"{stem}.{ext}.index.json").exists():
            return _shards(index)
        if (single := folder / f"{stem}.{ext}").exists():
            return [single]
    variants: dict[str, list[Path]] = {}
    for ext in ("bin", "safetensors"):  # safetensors last: it wins within a variant
        for file in folder.iterdir():
            if m := re.fullmatch(rf"{stem}\.(\w+)\.{ext}", file.name):
                variants[m.group(1)] = [file]
            elif m := re.fullmatch(rf"{stem}\.{ext}\.index\.(\w+)\.json", file.name):
                variants[m.group(1)] = _shards(file)
    if len(variants) > 1:
        raise CheckpointError(
            f"{folder} holds several variants ({', '.join(sorted(variants))}) and no full-precision "
            f"{stem}.safetensors: keep the one to load, or load its file's folder alone"
        )
    if not variants:
        raise CheckpointError(f"{folder} has no {stem}*.safetensors or .bin weights")
    return next(iter(variants.values()))


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))  # in order, once each
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{index} is not a weight index (no 'weight_map' of tensor → file): {err}"
        ) from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index.name} names {_listing(missing)}, not in {index.parent}")
    return [index.parent / n for n in names]


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith("transformer_blocks.") for k in state):
        return "diffusers"
    if any(not is_base_key(k) for k in state):
        return "flexible"
    if "x_embedder.proj.weight" in state or any(k.startswith("blocks.") for k in state):
        return "official"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected DiT keys (x_embedder.*, blocks.N.*) or diffusers keys "
        f"(transformer_blocks.N.*); first keys are {sorted(state)[:5]}"
    )


# -- diffusers → reference names (diffusers_layout.py maps back) ---------------------------------------------
DIFFUSERS_BLOCK = {
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
    "norm1.linear": "adaLN_modulation.1",
}
DIFFUSERS_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
    "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "transformer_blocks.0.norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
}


def diffusers_to_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers' DiT weights to the reference layout (fuse q/k/v, take block 0's embedders)."""
    out: dict[str, torch.Tensor] = {}
    pending_qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in DIFFUSERS_TOP:
            out[f"{DIFFUSERS_TOP[prefix]}.{leaf}"] = value
            continue
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", prefix)
        if m is None:
            if prefix != "pos_embed":  # diffusers may store the fixed sin-cos table; we recompute it
                unknown.append(key)
            continue
        block, rest = m.groups()
        if rest.startswith("norm1.emb."):
            continue  # per-block copies of the shared embedders (block 0's were taken above)
        qkv = re.fullmatch(r"attn1\.to_([qkv])", rest)
        if qkv:
            pending_qkv.setdefault((block, leaf), {})[qkv.group(1)] = value
        elif rest in DIFFUSERS_BLOCK:
            out[f"blocks.{block}.{DIFFUSERS_BLOCK[rest]}.{leaf}"] = value
        else:
            unknown.append(key)
    for (block, leaf), parts in pending_qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"block {block}: attn1 {leaf} has only {sorted(parts)} of q/k/v")
        out[f"blocks.{block}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        raise CheckpointError(f"unexpected diffusers keys (not a DiT transformer?): {_listing(unknown)}")
    return out


# -- config inference -------------------------------------------------------------------------------------
def infer_config(
    state: Mapping[str, torch.Tensor], num_heads: int | None = None, input_size: int | None = None
) -> DiTConfig:
    """A DiTConfig that fits the tensors' shapes; the head count is the hint, or the DiT config's of the
    same width (an unknown width without a hint is an error: shapes cannot tell the head count)."""
    try:
        hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        table_rows = state["y_embedder.embedding_table.weight"].shape[0]
        out_features = state["final_layer.linear.weight"].shape[0]
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"cannot infer the model config: key {err} is missing (a truncated or non-DiT checkpoint?)"
        ) from None
    known = {c.hidden_size: c for c in CONFIGS.values()}
    if num_heads is None and hidden not in known:
        raise CheckpointError(
            f"hidden size {hidden} is none of the DiT configs' ({', '.join(map(str, sorted(known)))}): the "
            "head count cannot be told from the tensors' shapes; load it into a model of the right config: "
            "load_checkpoint(path, FlexiDiT.from_config(DiTConfig(..., num_heads=N), init='empty'))"
        )
    if num_heads is None:
        num_heads = known[hidden].num_heads
    name = known[hidden].name if hidden in known and depth == known[hidden].depth else "custom"
    if "pos_embed" in state:
        input_size = int(round(state["pos_embed"].shape[1] ** 0.5)) * patch
    elif input_size is None:
        input_size = 32  # no table and no hint: assume 256 px images (32x32 latents)
    weak = sorted({int(m.group(1)) for k in state if (m := re.match(r"weak\.p(\d+)\.", k))})
    ranks = [v.shape[0] for k, v in state.items() if k.endswith(".down.weight") and ".lora." in k]
    out_channels = out_features // (patch * patch)
    try:
        return DiTConfig(
            depth=depth,
            hidden_size=hidden,
            num_heads=num_heads,
            patch_size=patch,
            patch_sizes=(patch, *weak),
            input_size=input_size,
            in_channels=in_channels,
            num_classes=table_rows - 1,
            mlp_ratio=mlp_hidden / hidden,
            learn_sigma=out_channels == 2 * in_channels,
            class_dropout_prob=0.1,
            lora_rank=ranks[0] if ranks else 0,
            name=name,
        )
    except ValueError as err:
        raise CheckpointError(f"checkpoint shapes give an invalid config: {err}") from None


def _check_keys(model: FlexiDiT, state: Mapping[str, torch.Tensor], flexible: bool) -> None:
    """Strict on the reference layout; for flexible checkpoints also on weak sizes and adapters."""
    expected = {k: v.shape for k, v in model.state_dict().items() if flexible or is_base_key(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint does not fit {model.config.name} ({_describe(model.config)}):"]
    if missing:
        lines.append(f"  missing {len(missing)} keys: {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} keys: {_listing(unexpected)}")
    if mismatched:
        lines.append(f"  {len(mismatched)} shape mismatches: {_listing(mismatched)}")
    weak_missing = sorted({k.split(".")[1] for k in missing if k.startswith("weak.")})
    if weak_missing:
        lines.append(f"  the checkpoint has no weights for patch size(s) {', '.join(weak_missing)}")
    raise CheckpointError("\n".join(lines))


def _reset_adapters(model: FlexiDiT) -> None:
    # Adapters of a model filled from a base-only checkpoint must start as no-ops.
    for layer in model.lora_layers():
        for adapter in layer.lora.values():
            torch.nn.init.zeros_(adapter["up"].weight)


def _describe(config: DiTConfig) -> str:
    return (
        f"depth {config.depth}, hidden {config.hidden_size}, patch sizes {list(config.patch_sizes)}, "
        f"input {config.input_size}, lora rank {config.lora_rank}"
    )


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


# -- writing ----------------------------------------------------------------------------------------------
def save_checkpoint(
    model: FlexiDiT, path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the flexible checkpoint (all patch sizes, adapters, config) atomically as .safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"flexible checkpoints are .safetensors files, got {path.name}")
    meta = {"format": FORMAT_TAG, "config": model.config.to_json(), **(metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path
