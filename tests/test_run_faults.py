"""`run` (and bench, train, flexify) under faults: every case one line, its exit code (2: an option value
to change, 1: the work failed), nothing half-written. A full disk, a mount point and a busy rename cannot
be made in CI: shutil.disk_usage, os.path.ismount and os.replace are replaced where they are asked."""

from __future__ import annotations

import errno
import json
import math
import os
import select
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from runtime_helpers import tiny_model

from flexidit_trt.cli import main
from flexidit_trt.engines.backend import RunError, RunOptionError
from flexidit_trt.runtime import outputs as outputs_module
from flexidit_trt.runtime import pipeline_from_model, timing
from flexidit_trt.runtime import run as run_module
from flexidit_trt.runtime.options import SamplingOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line(result) -> str:
    """The error line: click prints usage lines above a usage error, nothing but it for others."""
    assert "Traceback" not in result.output, result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")][-1]


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so a default `samples/` left behind shows."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_run(monkeypatch, model=None):
    """`run` opens a tiny random model on the torch backend (fast), however it is invoked."""
    model = model or tiny_model()
    monkeypatch.setattr(run_module, "open_pipeline", lambda options: pipeline_from_model(model, device="cpu"))


# -- non-finite numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["run", "--cfg-scale", "nan"],
        ["run", "--cfg-scale", "inf"],
        ["run", "--budget", "nan"],
        ["run", "--time-budget", "inf"],
        ["run", "--time-budget", "nan"],
        ["bench", "--cfg-scale", "-inf"],
        ["eval", "--cfg-scale", "nan"],
        ["train", "--out", "r", "--lr", "nan"],
        ["train", "--out", "r", "--minutes", "inf"],
        ["flexify", "--checkpoint", ".", "--lr", "inf"],
    ],
)
def test_non_finite_options_are_refused_where_they_enter(in_tmp, args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "is not a finite number" in one_line(result)
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
def test_library_refuses_a_non_finite_guidance_scale(scale):
    with pytest.raises(RunOptionError, match="guidance scale must be a finite number"):
        SamplingOptions(cfg_scale=scale).checked()


def test_non_finite_samples_are_refused_and_nothing_written(in_tmp, monkeypatch):
    model = tiny_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("blocks.0."):  # in memory: loading a checkpoint would refuse it
                param.fill_(float("nan"))
    tiny_run(monkeypatch, model)
    result = invoke("run", "--steps", "3", "--num-images", "2")
    assert result.exit_code == 1, result.output
    assert "the samples are not finite (" in one_line(result) and "nothing was written" in one_line(result)
    assert list(in_tmp.iterdir()) == []


def test_flexify_refuses_nan_in_any_weight_before_training(tmp_path):
    from flexidit_trt.model import save_checkpoint

    model = tiny_model(lora_rank=4)
    lora = next(name for name, _ in model.named_parameters() if ".lora." in name)
    with torch.no_grad():
        dict(model.named_parameters())[lora].view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(model, path)
    started = time.perf_counter()
    result = invoke("flexify", "--checkpoint", str(path), "--out", str(tmp_path / "f.safetensors"))
    assert result.exit_code == 1, result.output
    assert lora in one_line(result) and "holds NaN" in one_line(result)
    assert time.perf_counter() - started < 30 and not (tmp_path / "f.safetensors").exists()


@pytest.mark.parametrize("per_step", [True, False])
def test_loss_watch_stops_at_the_first_non_finite_loss(per_step):
    from flexidit_trt.training.loop import DivergedError, LossWatch

    watch = LossWatch("training", torch.device("cpu"), per_step=per_step)
    for step, value in enumerate([1.0, 0.5]):
        watch.add(torch.tensor(value), step)
    watch.check()
    with pytest.raises(DivergedError, match="loss at step 3 is (nan|not finite)"):
        for step, value in enumerate([float("nan"), float("inf")], start=2):
            watch.add(torch.tensor(value), step)
        watch.check()  # a device's watch reads at the loop's own sync


def test_diverging_training_stops_with_one_line(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--depth", "1", "--hidden-size", "32", "--num-heads", "2"]
    args += ["--subset", "64", "--batch-size", "8", "--steps", "50", "--lr", "1e30", "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "training stopped: the loss at step" in one_line(result)
    assert not (out / "base.safetensors").exists()


# -- --out: checked before sampling, lost samples said in one line -------------------------------------------------
def test_a_refused_run_leaves_no_samples_folder(in_tmp):
    result = invoke("run", "--steps", "3", "--class-labels", "10")
    assert result.exit_code == 2, result.output
    assert list(in_tmp.iterdir()) == []


def test_full_disk_is_refused_before_sampling(in_tmp, monkeypatch):
    tiny_run(monkeypatch)
    sampled = []
    monkeypatch.setattr(run_module.Pipeline, "sample", lambda *a, **k: sampled.append(1))
    monkeypatch.setattr(outputs_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 4096})())
    result = invoke("run", "--steps", "3", "--num-images", "2")
    assert result.exit_code == 1, result.output
    assert "not enough free space for --out samples/" in one_line(result) and "0.0 MiB free" in one_line(
        result
    )
    assert sampled == [] and list(in_tmp.iterdir()) == []


def test_expected_output_size_bounds_what_is_written(tmp_path, monkeypatch):
    """The free-space check asks for at least what a run writes (and not orders of magnitude more)."""
    tiny_run(monkeypatch)
    asked = []
    real = outputs_module.check_out_dir
    monkeypatch.setattr(
        run_module, "check_out_dir", lambda out, need=0: (asked.append(need), real(out, need))
    )
    result = invoke("run", "--steps", "3", "--num-images", "12", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    written = sum(p.stat().st_size for p in (tmp_path / "o").iterdir())
    width, height = Image.open(tmp_path / "o" / "samples.png").size
    # An upper bound: the PNG counted at its uncompressed size (+ a filter byte a row, deflate's blocks).
    assert written <= max(asked) <= written + width * height * 3 * 1.001 + height + 2**17


def test_mount_point_is_refused_before_sampling(tmp_path, monkeypatch):
    tiny_run(monkeypatch)
    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setattr(outputs_module.os.path, "ismount", lambda path: Path(path) == mount)
    result = invoke("run", "--steps", "3", "--num-images", "2", "--out", str(mount))
    assert result.exit_code == 1, result.output
    assert f"--out {mount} is a mount point" in one_line(result)
    assert list(tmp_path.iterdir()) == [mount] and list(mount.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_refuses_files_is_refused_before_the_model_loads(monkeypatch):
    """/proc passes access() for root and has no free space to report: the probe file names the refusal,
    before any model is loaded."""
    loads = []
    monkeypatch.setattr(run_module, "open_pipeline", lambda options: loads.append(options))
    monkeypatch.setattr(outputs_module.os, "access", lambda path, mode: True)  # as for root, whoever runs it
    result = invoke("run", "--steps", "3", "--out", "/proc/flexidit-out")
    assert result.exit_code == 1, result.output
    assert "cannot write to --out /proc/flexidit-out: /proc refuses new files" in one_line(result)
    assert loads == [] and not Path("/proc/flexidit-out").exists()


@pytest.mark.parametrize(
    ("where", "code", "words"),
    [("write", errno.ENOSPC, "No space left on device"), ("rename", errno.EBUSY, "Device or resource busy")],
)
def test_late_write_failure_is_one_line_and_leaves_nothing(in_tmp, monkeypatch, where, code, words):
    tiny_run(monkeypatch)
    real_replace = os.replace

    def failing_replace(src, dst):
        staged_folder = Path(src).name.startswith(".staging-")
        if (where == "rename") == staged_folder:
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst)

    monkeypatch.setattr(outputs_module.os, "replace", failing_replace)
    monkeypatch.setattr("flexidit_trt.artifacts.os.replace", failing_replace)
    result = invoke("run", "--steps", "3", "--num-images", "2")
    assert result.exit_code == 1, result.output
    line = one_line(result)
    assert "the samples were lost, nothing was written to samples/" in line and words in line
    assert list(in_tmp.iterdir()) == []  # no output, no staging folder, not even samples/


def test_default_out_of_the_same_second_takes_a_suffix(in_tmp):
    now = time.time()
    first = run_module.default_out(now)
    first.mkdir(parents=True)
    (first / "samples.npy").write_bytes(b"x")
    assert run_module.default_out(now) == first.with_name(first.name + "-2")


def test_two_runs_finishing_together_do_not_collide(tmp_path):
    """The other run renames its folder into the name after this one checked it: this one moves on to -2;
    a name the user gave is never changed."""
    out = tmp_path / "20261203-101010"
    staged = outputs_module.staged_output(out, unique=True)
    with staged as stage:
        (stage / "samples.npy").write_bytes(b"mine")
        out.mkdir()
        (out / "samples.npy").write_bytes(b"theirs")
    assert staged.out == tmp_path / "20261203-101010-2"
    assert (staged.out / "samples.npy").read_bytes() == b"mine" and (
        out / "samples.npy"
    ).read_bytes() == b"theirs"
    given = tmp_path / "given"
    with (
        pytest.raises(RunError, match="created by someone else"),
        outputs_module.staged_output(given) as stage,
    ):
        given.mkdir()
        (given / "x").write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261203-101010", "20261203-101010-2", "given"]


def test_two_cli_runs_in_one_second_write_two_folders(in_tmp, monkeypatch):
    tiny_run(monkeypatch)
    monkeypatch.setattr(run_module.time, "localtime", lambda now=None: time.gmtime(0))
    outs = []
    for _ in range(2):
        result = invoke("run", "--steps", "2", "--num-images", "1")
        assert result.exit_code == 0, result.output
        outs.append(result.output.splitlines()[-1])
    assert outs == [
        "wrote samples/19700101-000000/samples.png, samples.npy, record.json",
        "wrote samples/19700101-000000-2/samples.png, samples.npy, record.json",
    ]


# -- sizes, progress, the plan first --------------------------------------------------------------------------------
def test_more_images_than_memory_is_refused_up_front(in_tmp, monkeypatch):
    tiny_run(monkeypatch)
    monkeypatch.setattr(run_module, "available_memory", lambda: 2**30)
    result = invoke("run", "--steps", "250", "--num-images", "100000")
    assert result.exit_code == 2, result.output
    assert "--num-images 100000 needs about" in one_line(result) and "1.0 GiB is available" in one_line(
        result
    )
    assert list(in_tmp.iterdir()) == []


def test_plan_line_comes_before_sampling_and_steps_are_reported_when_piped(tmp_path, monkeypatch):
    tiny_run(monkeypatch)
    result = invoke(
        "run", "--steps", "20", "--num-images", "3", "--batch-size", "2", "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    assert "20 steps x 2 batch(es) of up to 2 images = 40 loop steps" in lines[plan]
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == [f"{4 * k}/40" for k in range(1, 11)]
    assert plan < lines.index(progress[0])
    json_run = invoke("run", "--steps", "5", "--num-images", "2", "--out", str(tmp_path / "j"), "--json")
    assert json.loads(json_run.output)["options"]["num_images"] == 2  # nothing but the record


def test_a_terminal_gets_a_bar_even_one_that_reports_no_size(monkeypatch):
    """A fresh pseudo-terminal reports 0 x 0 (as under `script` or `docker exec -t`), where tqdm left to
    itself draws nothing; piped, a line per tenth; --json, nothing."""
    master, slave = os.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:
        monkeypatch.setattr(timing.sys, "stderr", terminal)
        assert os.get_terminal_size(slave) == (0, 0)
        bar = timing.progress_bar(4, None)
        bar.bar.update(2)
        bar.close()
        terminal.flush()
        drawn = ""
        while "\n" not in drawn and select.select([master], [], [], 5)[0]:  # the pty passes it on async
            drawn += os.read(master, 1 << 16).decode(errors="replace")
    os.close(master)
    assert "| 2/4 [" in drawn  # without a size given, tqdm writes nothing but the closing newline
    monkeypatch.setattr(timing.sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(timing.progress_bar(10, None).bar, timing.StepLines)
    assert timing.progress_bar(10, False).bar is None


def test_compile_time_is_not_in_the_step_latency(monkeypatch):
    """A stand-in torch.compile whose first call per shape takes 0.3 s (the compile): the run's steps
    never pay it, as prepare() makes that call before the timed loop."""
    first_calls = []

    def fake_compile(module, **options):
        def compiled(x, t, y):
            if (id(module), x.shape) not in first_calls:
                first_calls.append((id(module), x.shape))
                time.sleep(0.3)
            return module(x, t, y)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    from flexidit_trt.engines.options import EngineOptions

    pipe = pipeline_from_model(tiny_model(), device="cpu", engine=EngineOptions(compile=True))
    record = pipe.generate([1, 2], budget=0.5, steps=4).record
    assert len(first_calls) == 2  # one shape per patch size (CFG: batch 4), each paid once
    assert max(record["timing"]["per_step_ms"]) < 300


# -- exit codes: an option to change (2) against a failure of the work (1) -----------------------------------------
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "nosuch"], 2, "unknown model config 'nosuch'"),
        (
            ["--model", "dit_s", "--backend", "aoti", "--device", "cpu"],
            2,
            "the aoti backend runs CUDA packages",
        ),
        (["--model", "dit_s", "--backend", "trt", "--device", "cpu"], 2, "the trt backend needs a CUDA GPU"),
        (["--model", "dit_s", "--backend", "ort"], 1, "flexidit-trt build --model dit_s"),
        (["--vae", "."], 2, "--vae: dit_fmnist samples pixels, not latents"),  # the default model
    ],
)
def test_each_error_kind_has_its_exit_code(in_tmp, args, code, message):
    result = invoke("run", "--steps", "3", *args)
    assert result.exit_code == code, result.output
    assert message in one_line(result)
    assert list(in_tmp.iterdir()) == []


# -- bench ------------------------------------------------------------------------------------------------------------
def test_bare_bench_says_what_it_runs_and_its_cost_first():
    from flexidit_trt.bench import cost
    from flexidit_trt.bench.options import BenchOptions
    from flexidit_trt.model import get_config
    from flexidit_trt.model.macs import forward_macs

    options = BenchOptions()  # a bare `bench`: DiT-XL, 250 steps, the reference loop
    config = get_config("dit_xl")
    macs = {p: forward_macs(config, p) for p in config.patch_sizes}
    total = cost.trajectory_macs(options, macs, backends=len(cost.runnable(options, "cpu")))
    reference = 4 * 250 * 2 * forward_macs(config, 2) * (1 + 8)  # 1 + 3 trajectories, CFG, batches 1 and 8
    assert total > reference
    line = cost.estimate(total, 2e11, options, "dit_xl")  # a 2-core AVX-512 CPU's fp32 matmul
    assert line.startswith("cost: ") and " h at the measured matmul peak" in line
    assert line.endswith("fewer with --model dit_fmnist, --steps, --no-reference")
    # Only the levers not pulled yet are suggested.
    small = cost.estimate(total, 2e11, replace(options, reference=False), "dit_fmnist")
    assert small.endswith("fewer with --steps")
    # A checkpoint fixes the model: --model would be refused beside it.
    own = cost.estimate(total, 2e11, replace(options, checkpoint=Path("own.safetensors")), "dit_xl")
    assert own.endswith("fewer with --steps, --no-reference")
    assert "the reference loop too" in cost.outline(options, "dit_xl", "cpu")


def test_bench_no_reference_writes_no_reference_file(tmp_path):
    out = tmp_path / "results"
    args = ["bench", "--model", "dit_s", "--image-size", "32", "--override", "depth=1", "--override"]
    args += ["hidden_size=32", "--override", "num_heads=2", "--backends", "torch-eager", "--batch-sizes", "1"]
    args += ["--budgets", "1.0", "--steps", "2", "--device", "cpu", "--no-reference", "--repeats", "1"]
    args += ["--forward-runs", "20", "--warmup", "1", "--out", str(out)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    files = [p.name for p in out.rglob("*.json")]
    assert files and not any("reference" in name for name in files)
    lines = result.output.splitlines()
    first = [i for i, line in enumerate(lines) if line.startswith(("bench: ", "cost: ", "model: "))]
    assert [lines[i].split(":")[0] for i in first[:3]] == ["bench", "cost", "model"]
    assert np.isfinite(float(lines[first[1]].split("MACs")[0].split()[-1]))


def test_plots_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
    """`bench report` and eval's plots on an install without matplotlib (the first README line's): one line
    naming the extra, no traceback."""
    import builtins

    from flexidit_trt.errors import FlexiditError
    from flexidit_trt.plotting import pyplot

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(FlexiditError, match=r"pip install 'flexidit-trt\[bench\]'"):
        pyplot("bench")
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    result = invoke("bench", "report", "--results", str(results), "--out", str(tmp_path / "report"))
    assert result.exit_code == 1 and "pip install 'flexidit-trt[bench]'" in one_line(result)
    assert not any((tmp_path / "report").rglob("*.png"))


def test_interrupted_bench_leaves_no_empty_folders(tmp_path, monkeypatch):
    """Ctrl-C after the bench made its output folder (here while measuring the machine): exit 130, and the
    folders it created hold nothing, so they are gone; a folder that was there before stays."""
    from flexidit_trt.bench import run as bench_run

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_run._Bench, "_hardware", interrupted)
    out = tmp_path / "new" / "results"
    args = ["bench", "--model", "dit_fmnist", "--steps", "2", "--no-reference", "--device", "cpu"]
    result = invoke(*args, "--out", str(out))
    assert result.exit_code == 130, result.output
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    assert invoke(*args, "--out", str(kept)).exit_code == 130
    assert list(tmp_path.iterdir()) == [kept]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class-labels", "12"], "class label 12 is outside dit_fmnist's classes 0..9"),
        (["--budget", "0.1"], "budget 0.1 is below the lowest reachable budget"),
    ],
)
def test_a_run_refused_with_the_model_loaded_prints_its_error_alone(in_tmp, args, message):
    """Checks that need the model (labels, the reachable budget) come before the model/backend/plan lines."""
    result = invoke("run", *args)
    assert result.exit_code == 2, result.output
    assert message in one_line(result)
    assert not [
        line for line in result.output.splitlines() if line.startswith(("model:", "backend:", "plan:"))
    ]
    assert list(in_tmp.iterdir()) == []
