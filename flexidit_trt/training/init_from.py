"""Going on from an earlier flexify (`flexify --init`): the checks that the file fits this run, its
weak-size weights loaded, and the record of what a pass went on from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model import CheckpointError, FlexiDiT
from ..model.checkpoints import check_finite, config_from_metadata, read_state_dict
from ..model.config import DiTConfig
from ..model.dit import is_base_key
from .loop import TrainError


def continue_from(model: FlexiDiT, base: dict[str, torch.Tensor], init: Path) -> None:
    """Load the weak sizes' parts of the flexible checkpoint `init` into `model`, which holds `base`;
    TrainError where `init` was made from another base or with other patch sizes or rank."""
    name = Path(init).name
    try:
        state, _, _ = read_state_dict(init)
        check_finite(state)
    except CheckpointError as err:
        raise TrainError(f"--init {name}: {err}") from None
    if all(is_base_key(k) for k in state):
        raise TrainError(
            f"--init {name} holds no weak-size weights: a base checkpoint, not a flexify output "
            f"(give it as --checkpoint)"
        )
    for key, value in base.items():
        # Compared at the stored precision: a --half checkpoint holds the base rounded to fp16 once.
        if key in state and not torch.equal(state[key], value.to(state[key].dtype)):
            raise TrainError(
                f"--init {name} was made from another base model ({key} differs from --checkpoint's)"
            )
    own = model.state_dict()
    weak = {k: v for k, v in own.items() if not is_base_key(k)}
    dropped = sorted(k for k in state if not is_base_key(k) and k not in weak)
    if dropped:
        raise TrainError(
            f"--init {name} has weak-size weights this flexify would drop ({dropped[0]}, {len(dropped)} in all): "
            f"give the --patch-sizes and --lora-rank it was made with"
        )
    missing = sorted(k for k in weak if k not in state)
    if missing:
        raise TrainError(
            f"--init {name} has no {missing[0]} ({len(missing)} weak-size weights missing): flexify it with the same "
            f"--patch-sizes and --lora-rank ({model.config.lora_rank})"
        )
    for key, value in weak.items():
        if state[key].shape != value.shape:
            raise TrainError(
                f"--init {name}: {key} is {tuple(state[key].shape)}, this flexify's is {tuple(value.shape)} "
                f"(another --lora-rank or --patch-sizes)"
            )
        value.copy_(state[key].to(value.dtype))


def init_config(init: Path) -> DiTConfig:
    """The config a flexible --init file was saved with (its rank, when --lora-rank is not given)."""
    meta = _metadata(init)
    if meta.get("kind") == "base":
        raise TrainError(
            f"--init {Path(init).name} is a base checkpoint, not a flexify output (give it as --checkpoint)"
        )
    config = config_from_metadata(Path(init), meta)
    if config is None:
        raise TrainError(f"--init {Path(init).name} is not a flexible checkpoint written by flexify")
    return config


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except OSError:
        raise
    except Exception as err:  # a truncated or foreign file: say which and why
        raise TrainError(
            f"--init {Path(path).name} is not a .safetensors file written by flexify ({err})"
        ) from None


def lineage(init: Path) -> dict[str, str]:
    """The metadata that names what a flexify --init went on from: the file, and that file's own record
    (its steps, t ranges and, in turn, what it went on from), so a chain of passes stays readable."""
    earlier = _metadata(init)
    kept = ("init", "distill_steps", "weak_t_ranges", "distill_var_weight", "init_record")
    return {
        "init": Path(init).name,
        "init_record": json.dumps({k: earlier[k] for k in kept if k in earlier}),
    }
