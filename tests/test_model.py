"""The model against the reference DiT math, the resize property, LoRA folding and checkpoint formats."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from reference_dit import dit_forward, official_shapes, random_official_state, to_diffusers

from flexidit_trt import CheckpointError, FlexiDiT, get_config, load_checkpoint, save_checkpoint
from flexidit_trt.model.config import CONFIGS
from flexidit_trt.model.resize import resize_patch_embedding, resize_patch_projection

RTOL = 1e-5  # fp32 relative error (norm-wise) against a float64 evaluation of the reference math


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(n=3, channels=4, size=8, seed=1, num_classes=1000):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=gen)
    t = torch.tensor([999.0, 500.0, 3.0][:n])
    y = torch.tensor([7, num_classes, 42][:n])  # includes the null class
    return x, t, y


# -- the reference key layout -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_official_layout_loads_strictly(name):
    """Every config's official key layout loads; zero-stride tensors keep DiT-XL free of memory."""
    cfg = CONFIGS[name]
    shapes = official_shapes(cfg.depth, cfg.hidden_size, cfg.patch_size)
    if name == "dit_xl":
        assert len(shapes) == 292  # the public DiT-XL-2-256x256.pt holds 292 tensors
    state = {k: torch.full((1,), 0.01).expand(shape) for k, shape in shapes.items()}
    model = load_checkpoint(state)
    assert model.config.name == name
    assert (model.config.depth, model.config.hidden_size, model.config.num_heads) == (
        cfg.depth,
        cfg.hidden_size,
        cfg.num_heads,
    )
    assert model.config.patch_sizes == (2, 4)
    assert set(k for k in model.state_dict() if not k.startswith("weak.")) == set(shapes)
    if name == "dit_xl":
        assert model.num_parameters() == 675_129_632


@pytest.mark.parametrize(
    ("name", "depth", "input_size"), [("dit_s", 2, 8), ("dit_b", 1, 16), ("dit_xl", 1, 8)]
)
def test_base_forward_matches_reference(name, depth, input_size):
    cfg = get_config(name, depth=depth, input_size=input_size)
    state = random_official_state(depth, cfg.hidden_size, 2, input_size=input_size, seed=3)
    model = load_checkpoint(state, FlexiDiT.from_config(cfg, init="empty")).eval()
    x, t, y = inputs(size=input_size)
    with torch.no_grad():
        ours = model(x, t, y)
        ref = dit_forward({k: v.double() for k, v in state.items()}, x.double(), t, y, cfg.num_heads, 2)
    assert ours.shape == (3, 8, input_size, input_size)
    assert rel_err(ours, ref) <= RTOL


def test_sincos_table_matches_reference():
    model = FlexiDiT.from_config("dit_s", input_size=16)
    ref = random_official_state(1, 384, 2, input_size=16)["pos_embed"]
    assert torch.allclose(model.pos_embed, ref, atol=1e-6)


def test_diffusers_layout_gives_same_outputs(tmp_path):
    from safetensors.torch import save_file

    cfg = get_config("dit_s", depth=2, input_size=8)
    state = random_official_state(2, cfg.hidden_size, 2, input_size=8, seed=5)
    diffusers_state, diffusers_config = to_diffusers(state, cfg.num_heads, 2, 8)
    folder = tmp_path / "dit-diffusers" / "transformer"
    folder.mkdir(parents=True)
    save_file(diffusers_state, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(diffusers_config))

    from_diffusers = load_checkpoint(tmp_path / "dit-diffusers").eval()
    torch.save(state, tmp_path / "official.pt")
    from_official = load_checkpoint(tmp_path / "official.pt").eval()
    assert from_diffusers.config == from_official.config
    x, t, y = inputs()
    with torch.no_grad():
        for p in (2, 4):
            assert torch.equal(from_diffusers(x, t, y, patch_size=p), from_official(x, t, y, patch_size=p))


def dit_training_checkpoint(raw: dict, ema: dict) -> dict:
    """What DiT's train.py saves: {"model", "ema", "opt", "args"}, with the AdamW state after a step and
    the script's argparse.Namespace (which torch.load(weights_only=True) refuses unless allowed)."""
    params = [torch.nn.Parameter(v.clone()) for v in raw.values()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    args = argparse.Namespace(
        data_path="/data/imagenet/train", results_dir="results", model="DiT-S/2", image_size=64,
        num_classes=1000, epochs=1400, global_batch_size=256, global_seed=0, vae="ema",
        num_workers=4, log_every=100, ckpt_every=50_000,
    )  # fmt: skip
    return {"model": raw, "ema": ema, "opt": opt.state_dict(), "args": args}


def test_training_checkpoint_prefers_ema(tmp_path):
    ema = random_official_state(1, 384, 2, input_size=8, seed=1)
    raw = random_official_state(1, 384, 2, input_size=8, seed=2)
    torch.save(dit_training_checkpoint(raw, ema), tmp_path / "0100000.pt")
    model = load_checkpoint(tmp_path / "0100000.pt")
    assert torch.equal(model.blocks[0].attn.qkv.weight, ema["blocks.0.attn.qkv.weight"])


# -- flexible patch sizes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new"), [(2, 4), (2, 8), (4, 8)])
def test_resized_embedding_embeds_upsized_patch_like_original(old, new):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 4, old, old, generator=gen)
    patches = torch.randn(32, 4, old, old, generator=gen)
    upsized = F.interpolate(patches, size=(new, new), mode="bilinear", align_corners=False)
    new_weight = resize_patch_embedding(weight, new)
    original = torch.einsum("nchw,dchw->nd", patches, weight)
    resized = torch.einsum("nchw,dchw->nd", upsized, new_weight)
    assert rel_err(resized, original) <= RTOL


def test_resized_deembedding_upsizes_the_predicted_patch():
    gen = torch.Generator().manual_seed(0)
    out_ch, d, old, new = 8, 16, 2, 4
    weight, bias = (
        torch.randn(old * old * out_ch, d, generator=gen),
        torch.randn(old * old * out_ch, generator=gen),
    )
    w2, b2 = resize_patch_projection(weight, bias, old, new)
    token = torch.randn(5, d, generator=gen)

    def as_patch(flat, p):  # rows are ordered (p, q, c) as the reference's unpatchify reads them
        return flat.reshape(-1, p, p, out_ch).permute(0, 3, 1, 2)

    small = as_patch(F.linear(token, weight, bias), old)
    big = as_patch(F.linear(token, w2, b2), new)
    expected = F.interpolate(small, size=(new, new), mode="bilinear", align_corners=False)
    assert rel_err(big, expected) <= RTOL


def _with_active_adapters(model: FlexiDiT, seed: int = 0) -> FlexiDiT:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.lora_layers():
            for adapter in layer.lora.values():
                adapter["up"].weight.copy_(torch.randn(adapter["up"].weight.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_static_with_folded_lora_equals_adapter_path(patch):
    model = FlexiDiT.from_config(
        "dit_s", init="random", depth=2, input_size=16, patch_sizes=(2, 4, 8), lora_rank=4
    )
    _with_active_adapters(model).eval()
    x, t, y = inputs(size=16)
    with torch.no_grad():
        flexible = model(x, t, y, patch_size=patch)
        static = model.static(patch)
        folded = static(x, t, y)
    assert static.config.patch_sizes == (patch,) and static.config.lora_rank == 0
    assert not any(".lora." in k or k.startswith("weak.") for k in static.state_dict())
    assert rel_err(folded, flexible) <= RTOL
    # The static model owns its weights: changing the flexible model afterwards leaves it alone.
    before = static.blocks[0].mlp.fc2.bias.clone()
    with torch.no_grad():
        model.blocks[0].mlp.fc2.bias.add_(1.0)
    assert torch.equal(static.blocks[0].mlp.fc2.bias, before)
    if patch != 2:  # the adapters really act at weak sizes: without them the output differs
        plain = FlexiDiT.from_config("dit_s", init="random", depth=2, input_size=16, patch_sizes=(2, 4, 8))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora." not in k})
        with torch.no_grad():
            assert rel_err(plain(x, t, y, patch_size=patch), flexible) > 1e-3


def test_weak_patch_really_uses_fewer_tokens():
    model = FlexiDiT.from_config("dit_s", init="random", depth=1, input_size=16, patch_sizes=(2, 4, 8))
    assert [model.macs(p) for p in (2, 4, 8)] == sorted([model.macs(p) for p in (2, 4, 8)], reverse=True)
    assert model.weak["p4"].pos_embed.shape == (1, 16, 384)
    assert model.weak["p8"].pos_embed.shape == (1, 4, 384)


def test_mixed_precision_static_keeps_residual_fp32():
    model = FlexiDiT.from_config("dit_s", init="random", depth=2, input_size=8)
    static = model.static(2, dtype=torch.bfloat16, fp32_residual=True)
    assert static.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert static.blocks[0].adaLN_modulation[1].weight.dtype == torch.float32
    # What stays fp32 keeps its exact fp32 values (not values rounded through bf16 and back).
    for name in ("blocks.0.adaLN_modulation.1.weight", "x_embedder.proj.weight", "final_layer.linear.weight"):
        assert torch.equal(static.state_dict()[name], model.state_dict()[name]), name
    x, t, y = inputs()
    with torch.no_grad():
        out = static(x, t, y)
        ref = model.eval()(x, t, y)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) <= 2e-2  # bf16 has an 8-bit mantissa


# -- our flexible checkpoint ----------------------------------------------------------------------------------
def test_flexible_checkpoint_round_trip(tmp_path):
    model = FlexiDiT.from_config(
        "dit_s", init="random", depth=2, input_size=8, patch_sizes=(2, 4), lora_rank=2
    )
    _with_active_adapters(model, seed=3).eval()
    path = save_checkpoint(model, tmp_path / "flexi.safetensors")
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temporary behind
    assert path.stat().st_mode & 0o044  # readable by others as usual, not mkstemp's 0600
    loaded = load_checkpoint(path).eval()
    assert loaded.config == model.config
    x, t, y = inputs()
    with torch.no_grad():
        for p in (2, 4):
            assert torch.equal(loaded(x, t, y, patch_size=p), model(x, t, y, patch_size=p))


def test_official_checkpoint_into_flexible_model_derives_weak_sizes():
    state = random_official_state(2, 384, 2, input_size=8, seed=4)
    model = load_checkpoint(state, patch_sizes=(2, 4, 8))
    assert model.config.patch_sizes == (2, 4, 8)
    expected = resize_patch_embedding(state["x_embedder.proj.weight"], 8)
    assert torch.allclose(model.weak["p8"].x_embedder.proj.weight, expected)


# -- bad inputs give one clear message ---------------------------------------------------------------------------
def test_truncated_state_dict_names_missing_keys():
    state = random_official_state(2, 384, 2, input_size=8)
    del state["blocks.1.mlp.fc2.weight"], state["final_layer.linear.bias"]
    model = FlexiDiT.from_config("dit_s", depth=2, input_size=8, init="empty")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(state, model)
    message = str(err.value)
    assert "missing 2 keys" in message
    assert "blocks.1.mlp.fc2.weight" in message and "final_layer.linear.bias" in message


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(random_official_state(1, 384, 2, input_size=8), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint file"):
        load_checkpoint(path)


def test_wrong_hidden_size_names_shape_mismatches():
    state = random_official_state(1, 384, 2, input_size=8)
    model = FlexiDiT.from_config("dit_b", depth=1, input_size=8, init="empty")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(state, model)
    assert "shape mismatches" in str(err.value)
    assert "blocks.0.attn.proj.bias: checkpoint [384] vs model [768]" in str(err.value)


def test_flexible_checkpoint_without_requested_patch_size(tmp_path):
    model = FlexiDiT.from_config("dit_s", init="random", depth=1, input_size=16, patch_sizes=(2, 4))
    path = save_checkpoint(model, tmp_path / "flexi.safetensors")
    wants_8 = FlexiDiT.from_config("dit_s", init="empty", depth=1, input_size=16, patch_sizes=(2, 4, 8))
    with pytest.raises(CheckpointError, match="no weights for patch size"):
        load_checkpoint(path, wants_8)


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown model config 'dit_q'"):
        FlexiDiT.from_config("dit_q")


def test_patch_size_the_model_does_not_have():
    model = FlexiDiT.from_config("dit_s", depth=1, input_size=8)
    x, t, y = inputs()
    with pytest.raises(ValueError, match="patch size 8 is not one of this model's patch sizes"):
        model(x, t, y, patch_size=8)
    with pytest.raises(ValueError, match="patch size 8"):
        model.static(8)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="input_size 30 is not divisible by patch size 4"):
        get_config("dit_s", input_size=30)
    model = FlexiDiT.from_config("dit_s", depth=1, input_size=8)
    x, t, y = inputs(size=7)
    with pytest.raises(ValueError, match="not divisible by patch size 2"):
        model(x, t, y)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_checkpoint({"encoder.weight": torch.zeros(2)})
