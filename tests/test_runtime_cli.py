"""`flexidit-trt run`: the three outputs, the record, atomic output, and one line per bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from runtime_helpers import tiny_model

from flexidit_trt.cli import main
from flexidit_trt.engines.backend import RunError, RunOptionError
from flexidit_trt.runtime import Pipeline, native, pipeline_from_model
from flexidit_trt.runtime import outputs as outputs_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args: str):
    return CliRunner().invoke(main, ["run", *args], catch_exceptions=False)


def test_default_run_writes_three_outputs(tmp_path):
    out = tmp_path / "out"
    result = invoke("--steps", "20", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["record.json", "samples.npy", "samples.png"]
    assert "default model" in result.output and "random weights" not in result.output
    assert "backend: torch" in result.output
    samples = np.load(out / "samples.npy")
    assert samples.dtype == np.float32 and samples.shape == (10, 1, 32, 32)  # one image per class
    rec = json.loads((out / "record.json").read_text())
    assert not rec["random_weights"] and rec["weights"].endswith("default.safetensors")
    assert "default.safetensors" in rec["png"]["title"] and rec["png"]["shows"].startswith("images")
    assert rec["options"]["labels"] == list(range(10)) and rec["options"]["cli"]["steps"] == 20
    assert len(rec["plan"]["patch_per_step"]) == 20 and rec["backend"]["why"]
    png = Image.open(out / "samples.png")
    assert png.size[0] > 10 * 32 and png.mode == "RGB"  # one row of ten, scaled up, title above
    assert not list(tmp_path.glob(".staging-*"))


def test_json_prints_the_record(tmp_path):
    result = invoke(
        "--steps", "5", "--num-images", "2", "--class-labels", "4", "--out", str(tmp_path / "o"), "--json"
    )
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)
    assert rec["options"]["labels"] == [4, 4] and rec["options"]["num_images"] == 2


def test_failure_mid_run_leaves_no_folder(tmp_path, monkeypatch):
    def broken(stage, *args, **kwargs):
        (stage / "samples.npy").write_bytes(b"half")
        raise RuntimeError("disk went away")

    monkeypatch.setattr("flexidit_trt.runtime.run.write_outputs", broken)
    with pytest.raises(RuntimeError, match="disk went away"):
        invoke("--steps", "3", "--num-images", "1", "--out", str(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging leftover


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--class-labels", "10"], 2, "class label 10 is outside dit_fmnist's classes 0..9"),
        (["--class-labels", "-1"], 2, "class labels are integers >= 0"),
        (["--budget", "0"], 2, "budget must be a fraction"),
        (["--budget", "1.5"], 2, "budget must be a fraction"),
        (["--budget", "0.1"], 2, "below the lowest reachable budget"),
        (["--num-images", "0"], 2, "--num-images"),
        (["--steps", "0"], 2, "--steps"),
        (["--steps", "many"], 2, "'many' is not a valid integer"),
        (["--backend", "ort", "--model", "dit_s"], 1, "flexidit-trt build --model dit_s"),
    ],
)
def test_bad_inputs(tmp_path, args, code, message):
    out = tmp_path / "out"
    result = invoke("--steps", "3", *args, "--out", str(out), "--workdir", str(tmp_path))
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not out.exists()


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("--steps", "3", "--out", str(blocker / "out"))
    assert result.exit_code == 1 and "cannot write to --out" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    result = invoke("--steps", "3", "--out", str(tmp_path / "full"))
    assert result.exit_code == 1 and "already exists and is not an empty folder" in result.output
    assert (tmp_path / "full" / "keep").read_text() == "x"


def test_batch_no_engine_covers():
    """Engines with a batch limit (a stand-in for TensorRT profiles): a batch beyond it is refused by name."""
    model = tiny_model()
    pipe = pipeline_from_model(model, device="cpu")
    for backend in pipe.backends.values():
        backend.max_batch = 4  # serves engine batches 1..4: CFG at 2 images per batch
    pipe.generate([1, 2], budget=0.5, steps=3)
    with pytest.raises(RunOptionError, match="batch size 3 needs the p[24] torch engine at batch 6"):
        pipe.generate([1, 2, 3], budget=0.5, steps=3)


def test_device_out_of_memory_says_how_much(monkeypatch):
    """The arena allocation failing on a GPU (simulated here: no GPU) names the bytes asked for."""

    class NoStream:
        handle = 0

        def __init__(self, device):
            pass

    def no_memory(nbytes, device):
        raise native.CudaError(f"cudaMalloc({nbytes}) on {device} failed: out of memory")

    monkeypatch.setattr("flexidit_trt.engines.cuda.Stream", NoStream)
    monkeypatch.setattr(native, "Arena", no_memory)
    cpu = pipeline_from_model(
        tiny_model(), device="cpu"
    )  # its engines, under a pipeline that thinks it is on a GPU
    pipe = Pipeline(cpu.spec, cpu.backends, device="cuda:0", selection=cpu.selection, precision=cpu.precision)
    with pytest.raises(
        RunError, match=r"cuda:0 out of memory: the run's buffers need \d+\.\d MiB \(batch 8 images"
    ):
        pipe.generate(list(range(8)), budget=0.5, steps=3)


def test_latent_png_says_it_shows_latents(tmp_path, monkeypatch):
    from flexidit_trt.runtime.run import RunOptions, run

    monkeypatch.setattr(
        "flexidit_trt.runtime.run.open_pipeline",
        lambda options: pipeline_from_model(tiny_model(), device="cpu"),
    )
    summary = run(RunOptions(steps=3, num_images=2, out=tmp_path / "o"))
    rec = json.loads((tmp_path / "o" / "record.json").read_text())
    assert rec["png"]["shows"].startswith("latents, not images (no --vae given)")
    assert any("latents, not images" in line for line in summary.lines)


def test_out_folder_atomic_rename(tmp_path):
    with pytest.raises(ValueError), outputs_module.staged_output(tmp_path / "o") as stage:
        (stage / "a").write_text("x")
        raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []
    with outputs_module.staged_output(tmp_path / "o") as stage:
        (stage / "a").write_text("x")
    assert (tmp_path / "o" / "a").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_checkpoint_runs_on_torch_and_is_recorded(tmp_path):
    from flexidit_trt.model import save_checkpoint

    path = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(seed=3), path)
    out = tmp_path / "out"
    result = invoke(
        "--checkpoint",
        str(path),
        "--steps",
        "4",
        "--num-images",
        "2",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    rec = json.loads((out / "record.json").read_text())
    assert not rec["random_weights"] and str(path) in rec["weights"]
    assert rec["model"]["checkpoint_sha256"] == kernels_free_sha(path)
    assert rec["backend"]["name"] == "torch" and np.load(out / "samples.npy").shape == (2, 4, 8, 8)


def kernels_free_sha(path):
    from flexidit_trt.artifacts import sha256_path

    return sha256_path(path)


def test_missing_default_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "flexidit_trt.default_model.DEFAULT_WEIGHTS", tmp_path / "gone" / "default.safetensors"
    )
    result = CliRunner().invoke(main, ["run", "--steps", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
    assert "embedded default model" in result.output and "missing" in result.output
    assert not (tmp_path / "out").exists()


def test_corrupt_default_weights_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "default.safetensors"
    empty.write_bytes(b"")
    monkeypatch.setattr("flexidit_trt.default_model.DEFAULT_WEIGHTS", empty)
    result = CliRunner().invoke(main, ["run", "--steps", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
    assert "embedded default model is unreadable" in result.output and "empty" in result.output
    assert not (tmp_path / "out").exists()


def fp32_drift(depth: int, longest_reduction: int, *, steps: int, cfg_scale: float) -> float:
    """How far (relative to the samples' magnitude) two fp32 runs may drift when their matmuls reduce in
    another order (a batched modulation pass picks other kernels, AVX-512/AMX ones on some CPUs): each
    forward rounds through 4·depth reductions of up to `longest_reduction` terms (eps·√K each, independent:
    √(4·depth) of them), guidance scales the difference of two outputs by 1 + 2·cfg, and every step adds
    its own. Measured on an AVX-512/AMX Xeon for the default model: 3.9e-5; this gives 8.0e-4."""
    eps = float(np.finfo(np.float32).eps)
    per_forward = eps * math.sqrt(longest_reduction) * math.sqrt(4 * depth)
    return per_forward * (1 + 2 * cfg_scale) * steps


@pytest.mark.parametrize("source", ["default", "checkpoint"])
def test_precompute_modulation_reaches_the_torch_engines_and_keeps_the_samples(tmp_path, source):
    """`run --precompute-modulation` on the embedded default model and on a workdir's torch backend: every
    engine computes its modulation ahead, the samples stay those of the ordinary engines (fp32 on the CPU)."""
    from flexidit_trt.model import save_checkpoint

    args = ["--steps", "6", "--num-images", "3", "--seed", "4"]
    if source == "checkpoint":
        path = tmp_path / "tiny.safetensors"
        save_checkpoint(tiny_model(seed=3), path)
        args += ["--checkpoint", str(path), "--workdir", str(tmp_path)]
    runs = {}
    for flag in ([], ["--precompute-modulation"]):
        out = tmp_path / f"out{len(runs)}"
        result = invoke(*args, *flag, "--out", str(out))
        assert result.exit_code == 0, result.output
        rec = json.loads((out / "record.json").read_text())
        runs[bool(flag)] = (np.load(out / "samples.npy"), rec)
    (plain, plain_rec), (premod, premod_rec) = runs[False], runs[True]
    assert [e["precomputed_modulation"] for e in premod_rec["backend"]["engines"]] == [True, True]
    assert not any(e["precomputed_modulation"] for e in plain_rec["backend"]["engines"])
    assert premod_rec["options"]["cli"]["precompute_modulation"] is True
    config = plain_rec["model"]["config"]
    atol = fp32_drift(
        config["depth"], int(config["hidden_size"] * config["mlp_ratio"]), steps=6, cfg_scale=4.0
    )
    np.testing.assert_allclose(premod, plain, rtol=0, atol=atol * float(np.abs(plain).max()))
