"""Loading checkpoints: files that are not checkpoints give one clear line, non-finite weights are
refused by name at load, and diffusers folders load by rule (shards through the index, the full-precision
file before a variant, the head count from config.json or an error)."""

from __future__ import annotations

import json

import pytest
import torch
from reference_dit import dit_forward, random_official_state, to_diffusers
from safetensors.torch import save_file

from flexidit_trt import CheckpointError, DiTConfig, FlexiDiT, get_config, load_checkpoint, save_checkpoint
from flexidit_trt.artifacts import BuildError
from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import TrtStatus


def tiny_state(seed: int = 0, hidden: int = 384, depth: int = 1) -> dict[str, torch.Tensor]:
    return random_official_state(depth, hidden, 2, input_size=8, seed=seed)


# -- files that are not checkpoints --------------------------------------------------------------------------
def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match=r"empty.pt is empty \(0 bytes\)"):
        load_checkpoint(path)


def test_text_file_renamed_pt(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("DiT-XL-2 weights: see https://example.org\nsecond line\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "not a PyTorch checkpoint" in message and "'DiT-XL-2 weights" in message, message
    assert "\n" not in message


def test_pickled_module_is_named_and_conversion_given(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert (
        "holds a pickled module object (torch.nn.modules.container.Sequential), not a state dict" in message
    )
    assert "torch.save(module.state_dict(), " in message
    assert "weights_only" not in message  # no option of ours offers it, and it would run the file's code


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"depth": 1, "hidden_size": 384}), "missing"),
        ('{"depth": 1, "hidden_size": 384, "num_heads": 6, "patch_sizes": [2], "colour": 3}', "colour"),
        (None, "no 'config'"),
    ],
)
def test_malformed_safetensors_metadata(tmp_path, config, problem):
    model = FlexiDiT.from_config("dit_s", init="random", depth=1, input_size=8)
    path = tmp_path / "bad_meta.safetensors"
    meta = {"format": "flexidit-trt/1", **({} if config is None else {"config": config})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"bad_meta.safetensors: malformed metadata.*{problem}"):
        load_checkpoint(path)


# -- non-finite weights --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_official_weights_are_named(bad):
    state = tiny_state()
    state["blocks.0.mlp.fc1.weight"][3, 5] = bad
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(state)
    assert "blocks.0.mlp.fc1.weight" in str(err.value) and "1 of 589824" in str(err.value)
    assert ("NaN" if bad != bad else "Inf") in str(err.value)


def test_non_finite_flexible_weights_fail_the_build_before_export(tmp_path):
    model = FlexiDiT.from_config("dit_s", init="random", depth=1, input_size=8)
    with torch.no_grad():
        model.weak["p4"].linear.bias[0] = float("nan")
    path = save_checkpoint(model, tmp_path / "nan.safetensors")
    with pytest.raises(BuildError, match=r"weak\.p4\.linear\.bias"):
        build_artifacts(checkpoint=path, workdir=tmp_path / "wd", trt=TrtStatus(False, "n/a"), progress=False)
    assert not list((tmp_path / "wd").rglob("*.onnx"))


def test_finite_check_on_expanded_tensors():
    """Zero-stride (expanded) tensors, as the layout tests use for DiT-XL: the check reduces over one
    slice of the repeated axes, and still finds and counts a NaN."""
    state = {k: torch.full((1,), 0.01).expand(v.shape) for k, v in tiny_state(hidden=384).items()}
    state["blocks.0.attn.qkv.bias"] = torch.full((1,), float("nan")).expand(3 * 384)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.bias holds NaN \(1152 of 1152"):
        load_checkpoint(state)


# -- diffusers folders ---------------------------------------------------------------------------------------
def diffusers_folder(tmp_path, state, num_heads=6, name="dit-diffusers"):
    diffusers_state, config = to_diffusers(state, num_heads, 2, 8)
    folder = tmp_path / name / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder, diffusers_state, config


def write_shards(folder, diffusers_state, parts=2):
    keys = sorted(diffusers_state)
    weight_map = {}
    for i in range(parts):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {k: diffusers_state[k] for k in keys[i::parts]}
        save_file(chunk, str(folder / name))
        weight_map.update(dict.fromkeys(chunk, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_full_weights_win_over_an_fp16_variant(tmp_path):
    """Shards (through the index) and an fp16 variant in one folder: the full-precision shards load, by
    rule; the variant (which sorts after the shards) is not read."""
    state = tiny_state(seed=7)
    folder, diffusers_state, _ = diffusers_folder(tmp_path, state)
    write_shards(folder, diffusers_state)
    save_file(
        {k: v.half() for k, v in diffusers_state.items()},
        str(folder / "diffusion_pytorch_model.fp16.safetensors"),
    )
    model = load_checkpoint(tmp_path / "dit-diffusers")
    assert torch.equal(model.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])


def test_full_file_is_chosen_without_reading_the_variant(tmp_path):
    state = tiny_state(seed=8)
    folder, diffusers_state, _ = diffusers_folder(tmp_path, state)
    save_file(diffusers_state, str(folder / "diffusion_pytorch_model.safetensors"))
    # A leftover of an interrupted download under a variant's name: never opened.
    (folder / "diffusion_pytorch_model.tf32.safetensors").write_bytes(b"\x00" * 7)
    model = load_checkpoint(tmp_path / "dit-diffusers")
    assert torch.equal(model.blocks[0].attn.proj.weight, state["blocks.0.attn.proj.weight"])


def test_variant_alone_loads_and_two_variants_are_an_error(tmp_path):
    state = tiny_state(seed=9)
    folder, diffusers_state, _ = diffusers_folder(tmp_path, state)
    save_file(
        {k: v.half() for k, v in diffusers_state.items()},
        str(folder / "diffusion_pytorch_model.fp16.safetensors"),
    )
    model = load_checkpoint(tmp_path / "dit-diffusers")
    assert torch.equal(model.blocks[0].mlp.fc2.weight, state["blocks.0.mlp.fc2.weight"].half().float())
    save_file(diffusers_state, str(folder / "diffusion_pytorch_model.ema.safetensors"))
    with pytest.raises(CheckpointError, match=r"several variants \(ema, fp16\) and no full-precision"):
        load_checkpoint(tmp_path / "dit-diffusers")


def test_index_naming_a_missing_shard(tmp_path):
    folder, diffusers_state, _ = diffusers_folder(tmp_path, tiny_state())
    write_shards(folder, diffusers_state)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"index.json names diffusion_pytorch_model-00002-of-00002"):
        load_checkpoint(tmp_path / "dit-diffusers")


def test_unknown_width_needs_the_head_count():
    """Hidden 256 is none of the DiT sizes: the shapes cannot tell 4 heads from 2 or 8, so say so."""
    state = tiny_state(hidden=256)
    with pytest.raises(CheckpointError, match=r"hidden size 256 .* head count"):
        load_checkpoint(state)
    # Given a model (which fixes the head count) it loads and computes the reference forward.
    config = DiTConfig(depth=1, hidden_size=256, num_heads=2, input_size=8)
    model = load_checkpoint(state, FlexiDiT.from_config(config, init="empty")).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 1000])
    with torch.no_grad():
        ref = dit_forward({k: v.double() for k, v in state.items()}, x.double(), t, y, 2, 2)
        assert ((model(x, t, y).double() - ref).norm() / ref.norm()).item() <= 1e-5


def test_diffusers_head_count_from_config_json(tmp_path):
    state = tiny_state(hidden=256, seed=3)
    folder, diffusers_state, config = diffusers_folder(tmp_path, state, num_heads=2)
    save_file(diffusers_state, str(folder / "diffusion_pytorch_model.safetensors"))
    assert load_checkpoint(tmp_path / "dit-diffusers").config.num_heads == 2
    del config["num_attention_heads"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="head count"):
        load_checkpoint(tmp_path / "dit-diffusers")


def test_known_width_still_infers_its_heads():
    assert load_checkpoint(tiny_state()).config.num_heads == get_config("dit_s").num_heads
