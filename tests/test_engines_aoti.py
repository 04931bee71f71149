"""AOTInductor engines: one real CPU compile that loads and matches eager (slow), and the bookkeeping
around it (manifest, reuse, mismatch messages, compile variants, the build integration, the compile
cache) with labelled stand-ins.

STAND-INS: `stand_in_compiler` writes placeholder bytes instead of compiling (it is not an AOTInductor
package and is never loaded); `fake_cache` replaces torch.compiler's save/load of cache artifacts with
recorders. The real compile is `test_cpu_package_compiles_loads_and_matches_eager`; the real cache
round trip and every CUDA package ran on the GPU machine (benchmarks/NOTES.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

import flexidit_trt.engines.aoti as aoti
from flexidit_trt.artifacts import BuildError
from flexidit_trt.build import build_artifacts, report_lines
from flexidit_trt.engines import GpuInfo, TrtStatus
from flexidit_trt.engines.aoti import (
    AOTI_KIND,
    AotiOptions,
    TorchTarget,
    aoti_dir,
    build_aoti_engines,
    variant_configs,
)
from flexidit_trt.engines.aoti_backend import check_aoti_entry, load_aoti_engine, read_aoti_manifest
from flexidit_trt.engines.backend import RunError
from flexidit_trt.engines.compile_cache import build_compile_cache, load_compile_cache
from flexidit_trt.export.onnx_export import example_inputs, graph_module
from flexidit_trt.export.source import ModelSource

H100 = GpuInfo("NVIDIA H100 80GB HBM3", 9, 0)
GPU_TARGET = TorchTarget("cuda", H100, "2.11.0+cu130")
CPU_TARGET = TorchTarget("cpu", None, torch.__version__)
TINY = {"depth": 1, "hidden_size": 64, "num_heads": 2}


def tiny_source(seed: int = 0) -> ModelSource:
    return ModelSource("dit_s", (2, 4), image_size=64, seed=seed, overrides=dict(TINY))


def stand_in_compiler(calls: list):
    def compile(module, package_path, options, device):
        epilogue = {block.mlp.gelu_epilogue for block in module.net.blocks}
        calls.append(
            {
                "patch": module.config.patch_size,
                "variant": options.variant,
                "device": device,
                "gelu": epilogue,
            }
        )
        package_path.write_bytes(b"stand-in package (not AOTInductor) " + repr(options).encode())

    return compile


# -- the real thing, on the CPU ------------------------------------------------------------------------------
@pytest.mark.slow
def test_cpu_package_compiles_loads_and_matches_eager(tmp_path, monkeypatch):
    """~30 s on 2 cores: export with a dynamic batch, compile (no-pch: the precompiled header alone costs
    ~13 s more on a CPU), load, and compare with eager at batches the example did not have."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    source = tiny_source()
    options = AotiOptions(precision="fp32", batch_min=1, batch_max=8, device="cpu", variant="no-pch")
    start = time.perf_counter()
    result = build_aoti_engines(source, tmp_path, (4,), options, target=CPU_TARGET)
    seconds = time.perf_counter() - start
    (record,) = result.records
    assert record.rebuilt and record.path == aoti_dir(tmp_path, "dit_s", CPU_TARGET) / "p4.pt2"
    assert record.entry["build_seconds"] <= seconds
    run = load_aoti_engine(record.path)
    module = graph_module(source.load(), 4, "fp32")
    for batch in (1, 3, 8):
        x, t, y = example_inputs(module.config, batch, seed=batch)
        with torch.no_grad():
            ref = module(x, t, y)
        out = run(x, t, y)
        out = out[0] if isinstance(out, (list, tuple)) else out
        assert out.shape == ref.shape and out.dtype == torch.float32
        rel = float((out - ref).abs().max() / ref.abs().max())
        assert rel < 1e-5, (batch, rel)  # seen: 1.1e-7 .. 3.6e-7

    calls = []  # a second build with the same weights reuses the package: nothing is compiled
    again = build_aoti_engines(
        source, tmp_path, (4,), options, target=CPU_TARGET, compiler=stand_in_compiler(calls)
    )
    assert calls == [] and not again.records[0].rebuilt and again.records[0].reason == "same weights"


# -- bookkeeping with the stand-in compiler ------------------------------------------------------------------
def test_manifest_records_and_reuse_rules(tmp_path):
    calls = []
    compiler = stand_in_compiler(calls)
    options = AotiOptions(precision="bf16", batch_min=1, batch_max=16, variant="no-pch")
    result = build_aoti_engines(
        tiny_source(), tmp_path, (2, 4), options, target=GPU_TARGET, compiler=compiler
    )
    folder = tmp_path / "engines" / "dit_s" / "nvidia-h100-80gb-hbm3-sm90-torch2.11.0+cu130"
    assert result.folder == folder
    assert [c["patch"] for c in calls] == [2, 4] and {c["device"] for c in calls} == {"cuda"}
    assert all(c["gelu"] == {True} for c in calls)  # bf16 on CUDA: the GELU epilogue by default
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == AOTI_KIND and manifest["schema"] == 1 and manifest["model"] == "dit_s"
    entry = manifest["engines"]["2"]
    assert entry["file"] == "p2.pt2" and entry["bytes"] == (folder / "p2.pt2").stat().st_size
    assert (entry["batch_min"], entry["batch_max"], entry["precision"]) == (1, 16, "bf16")
    assert (
        entry["gpu"] == {"name": H100.name, "compute_capability": "9.0"} and entry["torch"] == "2.11.0+cu130"
    )
    assert entry["checkpoint"] == {"init": "random", "seed": 0, "path": None, "sha256": None}
    static = graph_module(tiny_source().load(), 2, "bf16")
    from flexidit_trt.artifacts import sha256_state_dict

    assert entry["weights_sha256"] == sha256_state_dict(static.state_dict())  # as the export records it
    assert entry["variant"] == "no-pch" and entry["build_seconds"] >= 0 and entry["gelu_epilogue"] is True
    assert entry["macs"] == tiny_source().load().macs(2)
    assert not list(folder.glob(".staging-*")) and not list(folder.glob(".*.tmp"))

    def build(source=None, opts=options, sizes=(2, 4)):
        calls.clear()
        out = build_aoti_engines(
            source or tiny_source(), tmp_path, sizes, opts, target=GPU_TARGET, compiler=compiler
        )
        return [(r.patch_size, r.rebuilt, r.reason) for r in out.records]

    assert build() == [(2, False, "same weights"), (4, False, "same weights")] and calls == []
    (folder / "p4.pt2").write_bytes(b"modified")
    assert build() == [(2, False, "same weights"), (4, True, "package missing or modified")]
    other = AotiOptions(precision="bf16", batch_min=1, batch_max=32, variant="no-pch")
    assert build(opts=other, sizes=(2,)) == [(2, True, "changed batch_max 16->32")]
    assert build(source=tiny_source(seed=1), opts=other, sizes=(2,)) == [(2, True, "weights changed")]
    model = tiny_source(seed=1).load()  # the same weights handed over in memory: only the hash can tell
    assert build(source=model, opts=other, sizes=(2,)) == [(2, False, "same weights")]
    plain = AotiOptions(precision="bf16", batch_min=1, batch_max=32, variant="no-pch", gelu_epilogue=False)
    assert build(source=tiny_source(seed=1), opts=plain, sizes=(2,)) == [
        (2, True, "changed gelu_epilogue True->False")
    ]
    assert calls[0]["gelu"] == {False}  # the compiled module's MLPs carry the setting
    assert AotiOptions(device="cpu", gelu_epilogue=True).resolved().gelu_epilogue is False  # CUDA only


def test_failed_compile_leaves_the_old_package_and_names_it(tmp_path):
    calls = []
    options = AotiOptions(precision="fp32", batch_max=4)
    build_aoti_engines(
        tiny_source(), tmp_path, (2,), options, target=GPU_TARGET, compiler=stand_in_compiler(calls)
    )
    folder = aoti_dir(tmp_path, "dit_s", GPU_TARGET)
    before = (folder / "p2.pt2").read_bytes()

    def broken(module, package_path, options, device):
        package_path.write_bytes(b"half a package")
        raise RuntimeError("g++ exited with status 1")

    with pytest.raises(BuildError, match=r"AOTInductor could not compile p2.pt2: RuntimeError: g\+\+ exited"):
        build_aoti_engines(
            tiny_source(), tmp_path, (2,), options, target=GPU_TARGET, compiler=broken, force=True
        )
    assert (folder / "p2.pt2").read_bytes() == before
    assert not list(folder.glob(".staging-*"))


def test_options_are_checked(monkeypatch):
    with pytest.raises(BuildError, match="unknown AOTInductor variant 'lto'"):
        AotiOptions(variant="lto").resolved()
    with pytest.raises(BuildError, match="1 <= min <= max, got 4..2"):
        AotiOptions(batch_min=4, batch_max=2).resolved()
    with pytest.raises(BuildError, match="unknown precision 'int8'"):
        AotiOptions(precision="int8").resolved()
    monkeypatch.setenv("FLEXIDIT_AOTI_VARIANT", "static-libstdcxx")
    assert AotiOptions().resolved().variant == "static-libstdcxx"
    assert AotiOptions(variant="default").resolved().variant == "default"


def test_entry_checks_name_the_field(tmp_path):
    options = AotiOptions(precision="bf16", batch_min=1, batch_max=16)
    build_aoti_engines(
        tiny_source(), tmp_path, (2, 4), options, target=GPU_TARGET, compiler=stand_in_compiler([])
    )
    manifest = read_aoti_manifest(aoti_dir(tmp_path, "dit_s", GPU_TARGET))
    assert check_aoti_entry(manifest, 4, GPU_TARGET, batch=16)["file"] == "p4.pt2"
    cases = [
        (TorchTarget("cpu", None, "2.11.0+cu130"), {}, "device 'cuda', this run has 'cpu'"),
        (
            TorchTarget("cuda", GpuInfo("NVIDIA A100-SXM4-80GB", 8, 0), "2.11.0+cu130"),
            {},
            "gpu.compute_capability '9.0'",
        ),
        (TorchTarget("cuda", GpuInfo("NVIDIA H100 PCIe", 9, 0), "2.11.0+cu130"), {}, "gpu.name"),
        (TorchTarget("cuda", H100, "2.12.0+cu130"), {}, "torch '2.11.0+cu130', this run has '2.12.0+cu130'"),
        (GPU_TARGET, {"checkpoint_sha256": "ab" * 32}, "checkpoint.sha256 None"),
        (GPU_TARGET, {"weights_sha256": "cd" * 32}, "weights_sha256"),
        (GPU_TARGET, {"batch": 17}, "batch 17 is outside AOTInductor engine p2's range 1..16"),
    ]
    for target, kwargs, message in cases:
        with pytest.raises(RunError) as err:
            check_aoti_entry(manifest, 2, target, **kwargs)
        assert message in str(err.value)
    with pytest.raises(RunError, match="no AOTInductor engine for patch size 8"):
        check_aoti_entry(manifest, 8, GPU_TARGET)
    with pytest.raises(RunError, match="no AOTInductor engines at"):
        read_aoti_manifest(tmp_path / "nothing")


def test_static_libstdcxx_variant_adds_link_flags_to_shared_links_only(tmp_path):
    """The variant's compiler script, run for real around a recording 'compiler'."""
    import torch._inductor.config as inductor_config

    recorder = tmp_path / "cc-recorder"
    log = tmp_path / "argv.log"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    recorder.chmod(0o755)
    # inductor's own patch context: a monkeypatch of its config proxy left cpp.cxx unreadable afterwards
    # for every later compile in the process.
    with (
        inductor_config.patch({"cpp.cxx": (None, str(recorder))}),
        variant_configs("static-libstdcxx") as configs,
    ):
        script = configs["cpp.cxx"][1]
        assert script.endswith("/g++")  # inductor detects gcc by name
        subprocess.run([script, "-c", "wrapper.cpp", "-o", "wrapper.o"], check=True)
        subprocess.run([script, "-shared", "-fPIC", "wrapper.o", "-o", "model.so"], check=True)
    lines = log.read_text().splitlines()
    assert lines[0] == "-c wrapper.cpp -o wrapper.o"
    assert (
        lines[1]
        == "-shared -fPIC wrapper.o -o model.so -static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL"
    )
    assert not Path(script).exists()  # removed after the compile
    with variant_configs("no-pch") as configs:
        assert configs == {"aot_inductor.precompile_headers": False}
    with variant_configs("default") as configs:
        assert configs == {}


def test_build_integration(tmp_path, monkeypatch):
    """`build --aoti`: the packages follow the graphs; without a GPU the line says why."""
    common = dict(
        overrides=dict(TINY),
        image_size=64,
        patch_sizes=(2, 4),
        batch_sizes=(1, 4),
        precision="fp32",
        workdir=tmp_path,
        progress=False,
        trt=TrtStatus(False, "the tensorrt Python package is not installed"),
    )
    report = build_artifacts("dit_s", engines=("trt", "aoti"), **common)
    if not torch.cuda.is_available():
        assert report.aoti.skipped.startswith("no CUDA GPU is visible")
        assert report_lines(report)[-1] == f"aoti engines: skipped ({report.aoti.skipped})"
    calls = []
    monkeypatch.setattr(aoti, "torch_target", lambda device: GPU_TARGET)
    report = build_artifacts("dit_s", engines=("aoti",), aoti_compiler=stand_in_compiler(calls), **common)
    assert (
        [c["patch"] for c in calls] == [2, 4] and report.engines.records == [] and not report.engines.skipped
    )
    entry = report.aoti.records[0].entry
    assert (entry["batch_min"], entry["batch_max"]) == (1, 8)  # twice the largest image batch (guidance)
    line = report_lines(report)[-2]
    assert line.startswith(f"p2  {report.aoti.records[0].path}  AOTInductor fp32 batch 1-8  ")
    assert "compiled in" in line and line.endswith("(new)")
    with pytest.raises(BuildError, match="engines must be some of trt, aoti, compile-cache, got"):
        build_artifacts("dit_s", engines=("onnx",), **common)
    with pytest.raises(BuildError, match="--require-trt needs trt among the engines"):
        build_artifacts("dit_s", engines=("aoti",), require_trt=True, **common)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the line printed without a GPU")
def test_build_cli_aoti_flag(tmp_path):
    from click.testing import CliRunner

    from flexidit_trt.cli import main
    from flexidit_trt.model import FlexiDiT, save_checkpoint

    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(FlexiDiT.from_config("dit_s", init="random", input_size=8, **TINY), checkpoint)
    argv = ["build", "--checkpoint", str(checkpoint), "--precision", "fp32", "--workdir", str(tmp_path)]
    result = CliRunner().invoke(main, [*argv, "--aoti"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "aoti engines: skipped (no CUDA GPU is visible: AOTInductor engines are compiled on the GPU they run on)"
    )
    result = CliRunner().invoke(main, [*argv, "--aoti", "--aoti-variant", "fast"])
    assert (
        result.exit_code == 2
        and "'fast' is not one of 'default', 'no-pch', 'static-libstdcxx'" in result.output
    )


# -- the fallback: the portable torch.compile cache ----------------------------------------------------------
@pytest.fixture()
def fake_cache(monkeypatch):
    """Stand-ins for torch.compiler.save_cache_artifacts / load_cache_artifacts (a real compile on this
    CPU takes about a minute; the CUDA round trip ran on the GPU machine, benchmarks/NOTES.md)."""
    loaded = []

    class Info:
        artifacts = {"inductor": ["k1", "k2"], "aot_autograd": ["k3"]}

    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"stand-in cache blob", Info()))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda blob: loaded.append(blob) or Info())
    return loaded


def test_compile_cache_round_trip(tmp_path, fake_cache):
    folder = aoti_dir(tmp_path, "dit_s", GPU_TARGET)
    warmed = []
    entry = build_compile_cache(
        lambda: warmed.append(True), folder, "dit_s", GPU_TARGET, {"patch_sizes": [2, 4], "batches": [2, 16]}
    )
    assert warmed == [True]
    assert entry["artifacts"] == {"inductor": 2, "aot_autograd": 1} and entry["batches"] == [2, 16]
    assert (folder / "compile_cache.bin").read_bytes() == b"stand-in cache blob"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["compile_cache"]["sha256"] == entry["sha256"] and manifest["engines"] == {}

    assert load_compile_cache(folder, GPU_TARGET)["file"] == "compile_cache.bin"
    assert fake_cache == [b"stand-in cache blob"]
    other = TorchTarget("cuda", H100, "2.12.0+cu130")
    assert load_compile_cache(folder, other) is None  # another torch: compile cold
    assert load_compile_cache(tmp_path / "absent", GPU_TARGET) is None
    (folder / "compile_cache.bin").write_bytes(b"damaged")
    assert load_compile_cache(folder, GPU_TARGET) is None
    assert fake_cache == [b"stand-in cache blob"]
