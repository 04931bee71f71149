"""ort (exported graphs, ONNX Runtime CPU) against torch through the same pipeline; backend choice;
the ort path without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from runtime_helpers import rel_error

from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import TrtStatus
from flexidit_trt.engines.backend import IOBuffers, RunError
from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.engines.ort_backend import OrtBackend
from flexidit_trt.runtime import pipeline_from_workdir

SMALL = {"depth": 2, "hidden_size": 64, "num_heads": 2}
LABELS = [0, 3, 7]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """fp32 graphs of a small dit_s (2 blocks, hidden 64, 8x8 latents) exported by `build`."""
    root = tmp_path_factory.mktemp("built")
    build_artifacts(
        "dit_s",
        workdir=root,
        overrides=SMALL,
        image_size=64,
        patch_sizes=(2, 4),
        precision="fp32",
        trt=TrtStatus(False, "TensorRT not under test here"),
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def pipes(workdir):
    with (
        pipeline_from_workdir(workdir, "dit_s", backend="ort", device="cpu") as ort,
        pipeline_from_workdir(workdir, "dit_s", backend="torch", device="cpu") as tch,
    ):
        yield ort, tch


@pytest.mark.parametrize("budget", [1.0, 0.5])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("guidance", ["cfg", "weak-to-strong"])
def test_ort_and_torch_give_the_same_samples(pipes, budget, sampler, guidance):
    ort, tch = pipes
    if guidance == "weak-to-strong" and budget == 0.5:
        budget = 0.6  # W2S's own saving: 0.5 is below its lowest reachable budget with these sizes
    kw = dict(budget=budget, steps=30, sampler=sampler, guidance=guidance, seed=11)
    a, b = ort.generate(LABELS, **kw), tch.generate(LABELS, **kw)
    assert a.record["plan"]["patch_per_step"] == b.record["plan"]["patch_per_step"]
    assert rel_error(a.samples, b.samples) <= 1e-4  # measured ~5e-7
    assert a.record["backend"]["name"] == "ort" and b.record["backend"]["name"] == "torch"
    assert a.record["weights"] == "random weights (seed 0)" and a.record["random_weights"]


def test_ort_backend_through_the_interface(workdir):
    """One forward through Backend: graph output equals the static torch module's on the same buffers."""
    from flexidit_trt.model import FlexiDiT

    backend = OrtBackend.load(workdir / "export/dit_s/p4.onnx", 4)
    x = np.random.default_rng(0).standard_normal((4, 4, 8, 8), dtype=np.float32)
    io = IOBuffers(
        x, np.full(4, 500.0, np.float32), np.array([1, 2, 1000, 1000]), np.zeros((4, 8, 8, 8), np.float32)
    )
    backend.bind(io, None, 0)
    backend.prepare([3])
    backend.forward(3)
    model = FlexiDiT.from_config("dit_s", init="random", seed=0, input_size=8, **SMALL)
    with torch.no_grad():
        want = model.static(4)(
            torch.from_numpy(x[:3]), torch.from_numpy(io.t[:3]), torch.from_numpy(io.y[:3])
        )
    assert rel_error(io.out[:3], want.numpy()) < 1e-5
    assert not io.out[3].any()  # rows past the batch untouched
    assert backend.activation_bytes(8) == 0 and backend.out_dtype == "float32"
    assert backend.describe()["cuda_graphs"] is False  # the CPU provider has no CUDA graphs


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_engine_options_pass_cuda_graphs_to_the_ort_backend(workdir, monkeypatch, cuda_graphs):
    """EngineOptions.cuda_graphs reaches every OrtBackend.load (what it does there: test_ort_cuda_graphs.py)."""
    seen = []
    load = OrtBackend.load

    def recording_load(*args, **kwargs):
        seen.append(kwargs.get("cuda_graphs"))
        return load(*args, **kwargs)

    monkeypatch.setattr(OrtBackend, "load", staticmethod(recording_load))
    engine = EngineOptions(cuda_graphs=cuda_graphs)
    with pipeline_from_workdir(workdir, "dit_s", backend="ort", device="cpu", engine=engine) as pipe:
        assert not any(e.cuda_graphs for e in pipe.backends.values())  # CPU: none either way
    assert seen == [cuda_graphs, cuda_graphs]  # one per patch size


def test_auto_on_cpu_is_torch_and_says_why(workdir):
    with pipeline_from_workdir(workdir, "dit_s") as pipe:
        assert pipe.selection.backend == "torch"
        assert "torch is installed" in pipe.selection.reason


def test_missing_graphs_give_the_build_command(tmp_path):
    with pytest.raises(
        RunError, match=r"^no exported graphs for dit_s under .*: run `flexidit-trt build --model dit_s`$"
    ):
        pipeline_from_workdir(tmp_path, "dit_s", backend="ort")


def test_graphs_of_another_checkpoint_are_refused(workdir, tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the weights the graphs were built from")
    with pytest.raises(RunError, match="checkpoint sha256 differs"):
        pipeline_from_workdir(workdir, "dit_s", backend="ort", checkpoint=str(other))


def test_graphs_of_another_precision_are_refused(workdir):
    with pytest.raises(RunError, match="precision differs.*--precision bf16"):
        pipeline_from_workdir(workdir, "dit_s", backend="ort", engine=EngineOptions(precision="bf16"))


NO_TORCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # `import torch` raises ImportError from here on
    from flexidit_trt.runtime import pipeline_from_workdir
    pipe = pipeline_from_workdir(sys.argv[1], "dit_s", device="cpu")
    result = pipe.generate([0, 3, 7], budget=0.5, steps=30, seed=11)
    import numpy as np
    np.save(sys.argv[2], result.samples)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "tensorrt") and sys.modules[m])
    print(json.dumps({"backend": result.record["backend"], "loaded": loaded}))
    """
)


def test_ort_path_runs_without_torch(workdir, pipes, tmp_path):
    """auto without torch picks ort; nothing imports torch on the way; same samples as with torch."""
    out = tmp_path / "samples.npy"
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(workdir), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["loaded"] == []
    assert info["backend"]["name"] == "ort" and "torch: not installed" in info["backend"]["why"]
    want = pipes[1].generate(LABELS, budget=0.5, steps=30, seed=11).samples
    assert rel_error(np.load(out), want) <= 1e-4


def test_run_command_without_torch(workdir, tmp_path):
    """`flexidit-trt run --model dit_s` on built graphs, torch unimportable: ort, all three outputs."""
    code = "import sys; sys.modules['torch'] = None; from flexidit_trt.cli import main; main()"
    out = tmp_path / "out"
    args = ["run", "--model", "dit_s", "--workdir", str(workdir), "--steps", "5", "--num-images", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend: ort" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["record.json", "samples.npy", "samples.png"]


def test_aoti_refuses_the_cpu(workdir):
    with pytest.raises(RunError, match="the aoti backend runs CUDA packages"):
        pipeline_from_workdir(workdir, "dit_s", backend="aoti", device="cpu")


def test_trt_refuses_the_cpu(workdir):
    with pytest.raises(RunError, match="the trt backend needs a CUDA GPU"):
        pipeline_from_workdir(workdir, "dit_s", backend="trt", device="cpu")
