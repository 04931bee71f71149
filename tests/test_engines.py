"""Everything around the TensorRT build, tested without TensorRT: profiles, folder naming, the skip and
--require-trt paths, the engine manifest and reuse, and the version fallbacks of the memory query.

Where a build has to happen, `stub_builder` stands in for TensorRT: it returns a placeholder plan and
made-up sizes so the bookkeeping (files, hashes, manifest, reuse) can be checked. It is not a
TensorRT result and never leaves the test's temporary folder; test_engines_trt.py builds real plans
where TensorRT is installed.
"""

from __future__ import annotations

import json
import sys

import pytest

from flexidit_trt.artifacts import BuildError, sha256_file
from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import (
    BatchProfile,
    GpuInfo,
    TrtStatus,
    batch_profiles,
    build_engines,
    engine_batches,
    engine_folder_name,
    trt_status,
)
from flexidit_trt.engines.trt import PlanBuild, device_memory_per_profile

H100 = GpuInfo("NVIDIA H100 80GB HBM3", 9, 0)
FAKE_TRT = TrtStatus(True, "", "10.15.1", H100)  # a probe result, so the stub's plans have a folder


def stub_builder(calls: list):
    def build(onnx_path, profiles, *, in_channels, latent_size, opt_level, timing_cache):
        calls.append({"onnx": onnx_path, "profiles": profiles, "opt_level": opt_level, "cache": timing_cache})
        plan = b"stub plan (not TensorRT) " + onnx_path.name.encode() + bytes([opt_level, len(profiles)])
        return PlanBuild(
            plan=plan,
            timing_cache=(timing_cache or b"") + b"+",
            device_memory=[1000 * pr.max for pr in profiles],
            layers={"Layers": ["stub"]},
            seconds=0.01,
            polygraphy_version="stub",
        )

    return build


# -- profiles ------------------------------------------------------------------------------------------------
def test_engine_batches_double_for_guidance():
    assert engine_batches((1, 2, 4, 8, 16)) == [1, 2, 4, 8, 16, 32]
    assert engine_batches((3, 1)) == [1, 2, 3, 6]
    assert engine_batches((4,), guidance=False) == [4]
    with pytest.raises(ValueError, match="positive integers"):
        engine_batches((2, 0))


def test_range_profiles_cover_every_batch_up_to_the_largest():
    profiles = batch_profiles((1, 2, 4, 8, 16))
    assert [(p.min, p.opt, p.max) for p in profiles] == [
        (1, 1, 1),
        (2, 2, 2),
        (3, 4, 4),
        (5, 8, 8),
        (9, 16, 16),
        (17, 32, 32),
    ]
    assert all(any(p.covers(b) for p in profiles) for b in range(1, 33))
    assert all(p.max <= 2 * p.min for p in profiles)  # narrow: at most a factor of two


def test_exact_profiles_are_static():
    assert batch_profiles((2, 8), mode="exact") == [BatchProfile(b, b, b) for b in (2, 4, 8, 16)]
    assert batch_profiles((2, 8), mode="exact", guidance=False) == [
        BatchProfile(2, 2, 2),
        BatchProfile(8, 8, 8),
    ]
    with pytest.raises(ValueError, match="profile mode"):
        batch_profiles((1,), mode="wide")


# -- naming --------------------------------------------------------------------------------------------------
def test_engine_folder_names_gpu_architecture_and_version():
    assert H100.slug == "nvidia-h100-80gb-hbm3" and H100.sm == "sm90" and H100.compute_capability == "9.0"
    assert engine_folder_name(H100, "10.15.1") == "nvidia-h100-80gb-hbm3-sm90-trt10.15.1"
    assert engine_folder_name(GpuInfo("NVIDIA GeForce RTX 5090", 12, 0), "11.3.0") == (
        "nvidia-geforce-rtx-5090-sm120-trt11.3.0"
    )


# -- the TensorRT probe --------------------------------------------------------------------------------------
def test_status_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    status = trt_status()
    assert not status.available and status.reason == "the tensorrt Python package is not installed"


def test_status_rejects_old_tensorrt_and_missing_polygraphy(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    assert "older than 10.x" in trt_status().reason
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.15.1"))
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    assert trt_status().reason == "polygraphy is not installed (pip install polygraphy)"


# -- the memory query's fallbacks across TensorRT versions ---------------------------------------------------
class _Engine:
    num_optimization_profiles = 2


def test_device_memory_prefers_v2_then_old_then_engine_wide():
    v2 = _Engine()
    v2.get_device_memory_size_for_profile_v2 = lambda i: 100 + i
    assert device_memory_per_profile(v2) == [100, 101]

    def broken(i):
        raise RuntimeError("v2 not usable for this engine")

    old = _Engine()
    old.get_device_memory_size_for_profile_v2 = broken
    old.get_device_memory_size_for_profile = lambda i: 7 * (i + 1)
    assert device_memory_per_profile(old) == [7, 14]
    wide = _Engine()
    wide.device_memory_size_v2 = 55
    assert device_memory_per_profile(wide) == [55, 55]


# -- skip and --require-trt ----------------------------------------------------------------------------------
def test_skip_and_require(tmp_path):
    absent = TrtStatus(False, "the tensorrt Python package is not installed")
    result = build_engines(tmp_path, "dit_s", (2,), (1, 2), status=absent)
    assert result.skipped == "the tensorrt Python package is not installed" and result.records == []
    assert not (tmp_path / "engines").exists()
    with pytest.raises(BuildError, match="--require-trt: cannot build TensorRT engines: the tensorrt"):
        build_engines(tmp_path, "dit_s", (2,), (1, 2), status=absent, require_trt=True)


def export_tiny(workdir, **kw):
    """build_artifacts on a 2-block dit_s at 64 px, patch sizes 2 and 4, fp16, without TensorRT (`kw` overrides)."""
    options = dict(
        overrides={"depth": 2}, image_size=64, patch_sizes=(2, 4), precision="fp16", progress=False
    )
    options.update({"trt": TrtStatus(False, "export only"), **kw})
    return build_artifacts("dit_s", workdir=workdir, **options)


def test_require_trt_fails_before_exporting(tmp_path):
    with pytest.raises(BuildError, match="--require-trt"):
        export_tiny(tmp_path, require_trt=True, trt=TrtStatus(False, "no CUDA GPU is visible"))
    assert not (tmp_path / "export").exists()


# -- bookkeeping with the stub builder -----------------------------------------------------------------------
@pytest.fixture()
def exported(tmp_path):
    export_tiny(tmp_path)
    return tmp_path


def test_engine_manifest_and_reuse(exported):
    calls: list = []
    result = build_engines(exported, "dit_s", (2, 4), (1, 2, 4), status=FAKE_TRT, builder=stub_builder(calls))
    folder = exported / "engines/dit_s/nvidia-h100-80gb-hbm3-sm90-trt10.15.1"
    assert result.folder == folder and [r.rebuilt for r in result.records] == [True, True]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "manifest.json",
        "p2.layers.json",
        "p2.plan",
        "p4.layers.json",
        "p4.plan",
        "timing.cache",
    ]
    assert calls[0]["cache"] is None and calls[1]["cache"] == b"+"  # the cache is shared between builds
    assert (folder / "timing.cache").read_bytes() == b"++"
    m = json.loads((folder / "manifest.json").read_text())
    assert (m["kind"], m["schema"], m["tensorrt"]) == ("flexidit-trt/tensorrt-engines", 1, "10.15.1")
    assert m["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    e = m["engines"]["2"]
    assert e["file"] == "p2.plan" and e["sha256"] == sha256_file(folder / "p2.plan")
    assert e["profiles"] == [
        {"min": 1, "opt": 1, "max": 1, "device_memory_bytes": 1000},
        {"min": 2, "opt": 2, "max": 2, "device_memory_bytes": 2000},
        {"min": 3, "opt": 4, "max": 4, "device_memory_bytes": 4000},
        {"min": 5, "opt": 8, "max": 8, "device_memory_bytes": 8000},
    ]
    assert (e["max_batch"], e["max_device_memory_bytes"], e["builder_optimization_level"]) == (8, 8000, 3)
    export_m = json.loads((exported / "export/dit_s/manifest.json").read_text())
    assert e["onnx"]["files"] == export_m["graphs"]["2"]["files"]
    assert e["checkpoint"] == export_m["graphs"]["2"]["checkpoint"] and e["precision"] == "fp16"
    assert e["tensorrt"] == "10.15.1" and "build_seconds" in e and e["layers"] == "p2.layers.json"

    again = build_engines(exported, "dit_s", (2, 4), (1, 2, 4), status=FAKE_TRT, builder=stub_builder(calls))
    assert [r.rebuilt for r in again.records] == [False, False] and len(calls) == 2

    # Another optimization level or batch set rebuilds (p2 only here); so do changed graphs. (A bf16 p4
    # beside the fp16 p2 is no longer possible: an export manifest holds the graphs of one precision.)
    narrower = build_engines(exported, "dit_s", (2,), (1,), status=FAKE_TRT, builder=stub_builder(calls))
    assert narrower.records[0].rebuilt and "profiles" in narrower.records[0].reason
    export_tiny(exported, precision="bf16")
    changed = build_engines(exported, "dit_s", (2, 4), (1,), status=FAKE_TRT, builder=stub_builder(calls))
    assert [(r.patch_size, r.rebuilt) for r in changed.records] == [(2, True), (4, True)]
    assert all("onnx_files" in r.reason for r in changed.records)


def test_engines_need_exported_graphs(exported):
    with pytest.raises(BuildError, match=r"no exported graph for patch size\(s\) \[8\]"):
        build_engines(exported, "dit_s", (8,), (1,), status=FAKE_TRT, builder=stub_builder([]))
    with pytest.raises(BuildError, match="no export manifest"):
        build_engines(exported, "dit_b", (2,), (1,), status=FAKE_TRT, builder=stub_builder([]))


def test_builder_failure_is_reported_and_leaves_no_plan(exported):
    def failing(onnx_path, profiles, **kw):
        raise RuntimeError("parser: unsupported node")

    with pytest.raises(BuildError, match="TensorRT could not build .*p2.onnx: parser: unsupported node"):
        build_engines(exported, "dit_s", (2,), (1,), status=FAKE_TRT, builder=failing)
    folder = exported / "engines/dit_s/nvidia-h100-80gb-hbm3-sm90-trt10.15.1"
    assert not list(folder.glob("*.plan")) and not (folder / "manifest.json").exists()


def test_bad_engine_options(exported):
    with pytest.raises(BuildError, match="optimization level must be 0-5"):
        build_engines(exported, "dit_s", (2,), (1,), status=FAKE_TRT, opt_level=7)
    with pytest.raises(BuildError, match="profile mode"):
        build_engines(exported, "dit_s", (2,), (1,), status=FAKE_TRT, profile_mode="wide")


def test_reused_plan_records_the_current_checkpoint(tmp_path):
    from flexidit_trt.model import FlexiDiT, save_checkpoint

    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(FlexiDiT.from_config("dit_s", init="random", input_size=8, depth=2), first)
    second.write_bytes(first.read_bytes())
    calls: list = []
    for ckpt in (first, second):
        report = build_artifacts(
            checkpoint=ckpt,
            patch_sizes=(2,),
            batch_sizes=(1,),
            workdir=tmp_path,
            trt=FAKE_TRT,
            plan_builder=stub_builder(calls),
            progress=False,
        )
    assert len(calls) == 1 and not report.engines.records[0].rebuilt
    manifest = json.loads((report.engines.folder / "manifest.json").read_text())
    assert manifest["engines"]["2"]["checkpoint"]["path"] == str(second)
