"""diffusers in the bench: the weights renamed to diffusers' layout, the DiTPipeline peer running the same
network as the project (per denoiser call, against a float64 forward of the project's model), the backend
names, and a real tiny CPU run (diffusers eager at fp16 and bf16, the compiled ones "not run" on the CPU,
speedup_vs_diffusers and first-call seconds recorded and reported)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from reference_dit import to_diffusers

from flexidit_trt.bench import backends as bench_backends
from flexidit_trt.bench.backends import BACKENDS, expand_backends, unavailable
from flexidit_trt.bench.options import BenchOptionError, BenchOptions
from flexidit_trt.bench.report import build_report
from flexidit_trt.bench.results import find_results, read_results
from flexidit_trt.bench.trajectories import add_diffusers_speedups, fastest_diffusers
from flexidit_trt.cli import main
from flexidit_trt.model import FlexiDiT
from flexidit_trt.model.checkpoints import diffusers_to_reference
from flexidit_trt.model.diffusers_layout import diffusers_config, reference_to_diffusers

TINY = {"depth": 2, "hidden_size": 64, "num_heads": 2}


def tiny_model() -> FlexiDiT:
    return FlexiDiT.from_config("dit_s", init="random", input_size=8, seed=3, **TINY)


# -- the weights in diffusers' layout ------------------------------------------------------------------------
def test_reference_to_diffusers_inverts_the_reader_and_matches_an_independent_renaming() -> None:
    static = tiny_model().static(2)
    state = static.state_dict()
    ours = reference_to_diffusers(state)
    theirs, config = to_diffusers(state, TINY["num_heads"], 2, 8)  # tests' own transcription of the format
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    back = diffusers_to_reference(ours)
    assert set(back) == set(state) - {"pos_embed"}  # diffusers recomputes the fixed table
    assert all(torch.equal(back[k], state[k]) for k in back)
    mine = diffusers_config(static.config)
    assert {k: mine[k] for k in mine if k in config} == {k: config[k] for k in mine if k in config}
    with pytest.raises(ValueError, match="mlp_ratio"):
        diffusers_config(static.config.replace(mlp_ratio=2.0))


# -- the peer runs the same network --------------------------------------------------------------------------
def _denoiser_calls(
    peer, labels: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, t, y, output) of every transformer call of one DiTPipeline trajectory."""
    calls = []

    def record(module, args, kwargs, out):
        calls.append(
            (args[0].clone(), kwargs["timestep"].clone(), kwargs["class_labels"].clone(), out.sample.clone())
        )

    handle = peer.pipe.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        peer(labels, cfg_scale=4.0, seed=0)
    finally:
        handle.remove()
    return calls


def test_diffusers_pipeline_runs_the_projects_network_per_step() -> None:
    """Every denoiser call of diffusers' DiTPipeline (fp32, CFG batch doubled, DDPM timesteps 800 … 0),
    fed to the project's base-patch network (`static(2)`, what its torch engines are made from) in float64.

    Tolerance from the arithmetic: each output passes through about 4·depth + 4 = 12 fp32 matrix products
    of inner size ≤ 4·hidden = 256, each adding at most K·u relative rounding (u = 2⁻²⁴): 12 · 256 · 2⁻²⁴ ≈
    1.8e-4 of the largest output. diffusers embeds the timestep with frequencies i/(half − 1) where DiT uses
    i/half (diffusers_layout.py): with diffusers' own embedding only the t = 0 call agrees; with the DiT
    embedding (the test sets diffusers' shift to 0) every call does, which is the weights and the rest of
    the network agreeing."""
    pytest.importorskip("diffusers")
    from flexidit_trt.bench.diffusers_peer import DiffusersPeer

    model = tiny_model()
    reference = model.static(2).double()
    peer = DiffusersPeer.build(model, device="cpu", precision="fp32", compiled=False, steps=5)
    tol = (4 * TINY["depth"] + 4) * 4 * TINY["hidden_size"] * 2.0**-24

    def errors(calls) -> dict[int, float]:
        out = {}
        for x, t, y, got in calls:
            want = reference(x.double(), t, y)
            out[int(t[0])] = float((got.double() - want).abs().max() / want.abs().max())
        return out

    own = errors(_denoiser_calls(peer, [3, 7]))
    assert sorted(own) == [0, 200, 400, 600, 800]  # DDPMScheduler's leading spacing of 1000 into 5
    assert own[0] <= tol  # sin/cos of 0 do not depend on the frequencies
    assert all(e > tol for t, e in own.items() if t > 0), own  # beyond rounding: diffusers' frequencies
    for block in peer.pipe.transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT's frequencies
    dit = errors(_denoiser_calls(peer, [3, 7]))
    assert max(dit.values()) <= tol, dit


# -- backend names -------------------------------------------------------------------------------------------
def test_backend_groups_expand_to_both_precisions_compiled_first() -> None:
    assert expand_backends(("torch-flash", "diffusers", "diffusers-compiled")) == (
        "diffusers-compiled-fp16",
        "diffusers-compiled-bf16",
        "torch-flash",
        "diffusers-fp16",
        "diffusers-bf16",
    )
    assert expand_backends(("diffusers-compiled-bf16", "torch")) == ("diffusers-compiled-bf16", "torch")
    assert set(expand_backends(("diffusers", "diffusers-fp16"))) == {"diffusers-fp16", "diffusers-bf16"}
    with pytest.raises(BenchOptionError, match="diffusers-fp32"):
        BenchOptions(backends=("diffusers-fp32",))
    assert BenchOptions(backends=("diffusers",)).backends == ("diffusers-fp16", "diffusers-bf16")
    assert all(b in BACKENDS for b in expand_backends(("diffusers", "diffusers-compiled")))


def test_diffusers_missing_or_compiled_on_cpu_is_not_run(monkeypatch) -> None:
    assert "CUDA graphs" in unavailable("diffusers-compiled-fp16", "cpu")
    monkeypatch.setattr(bench_backends, "installed", lambda name: name != "diffusers")
    assert "diffusers is not installed" in unavailable("diffusers-bf16", "cuda:0")


def test_speedup_vs_diffusers_takes_the_faster_compiled_run_per_image_count() -> None:
    def doc(backend, runs, status="ok"):
        return {"backend": backend, "status": status, "trajectories": [dict(r) for r in runs]}

    docs = [
        doc("diffusers-compiled-fp16", [{"images": 1, "wall_s": 1.0, "cold_s": 58.0}, {"images": 8, "wall_s": 2.6, "cold_s": 42.0}]),
        doc("diffusers-compiled-bf16", [{"images": 1, "wall_s": 1.2, "cold_s": 50.0}, {"images": 8, "wall_s": 2.5, "cold_s": 45.0}]),
        doc("diffusers-fp16", [{"images": 8, "wall_s": 0.1, "cold_s": 1.0}]),  # eager: never the peer
    ]  # fmt: skip
    fastest = fastest_diffusers(docs)
    assert (
        fastest[1]["backend"] == "diffusers-compiled-fp16"
        and fastest[8]["backend"] == "diffusers-compiled-bf16"
    )
    runs = [{"images": 8, "wall_s": 1.25}, {"images": 1, "wall_s": 0.4}, {"images": 32, "wall_s": 9.0}]
    add_diffusers_speedups(runs, fastest)
    assert (
        runs[0]["speedup_vs_diffusers"] == pytest.approx(2.5 / 1.25)
        and runs[0]["diffusers"]["cold_s"] == 45.0
    )
    assert runs[1]["speedup_vs_diffusers"] == pytest.approx(1.0 / 0.4)
    assert runs[2]["speedup_vs_diffusers"] is None and runs[2]["diffusers"] is None


# -- a real tiny CPU run -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_cpu_run_with_diffusers(tmp_path) -> None:
    pytest.importorskip("diffusers")
    args = [
        "bench", "--model", "dit_s", "--image-size", "64",
        *[a for k, v in TINY.items() for a in ("--override", f"{k}={v}")],
        "--backends", "torch-eager,diffusers,diffusers-compiled", "--batch-sizes", "1", "--budgets", "0.5",
        "--steps", "6", "--device", "cpu", "--out", str(tmp_path), "--repeats", "1", "--forward-runs", "20",
        "--warmup", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    docs = {d["backend"]: d for d in map(read_results, find_results(tmp_path))}
    assert set(docs) == {"reference", "torch-eager", *expand_backends(("diffusers", "diffusers-compiled"))}
    for name in ("diffusers-compiled-fp16", "diffusers-compiled-bf16"):
        assert docs[name]["status"] == "not run" and "CUDA graphs" in docs[name]["reason"]
    reference = docs["reference"]["trajectories"][0]["wall_s"]
    for name in ("diffusers-fp16", "diffusers-bf16", "torch-eager"):
        d = docs[name]
        assert d["status"] == "ok" and d["setup_s"] > 0
        for t in d["trajectories"]:
            assert t["cold_s"] > 0 and t["wall"]["runs"] == 1
            assert t["speedup_vs_reference"] == pytest.approx(reference / t["wall_s"])
            assert t["speedup_vs_diffusers"] is None  # no compiled diffusers on the CPU
    assert [t["budget"] for t in docs["diffusers-bf16"]["trajectories"]] == [None]
    report = build_report(tmp_path).markdown
    assert "× diffusers" in report and "first call s" in report
    assert "diffusers-fp16" in report and 'not run: torch.compile(mode="reduce-overhead")' in report
