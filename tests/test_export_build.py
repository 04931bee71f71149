"""The export root through build_artifacts: manifests, reuse, what a change rebuilds, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from flexidit_trt.artifacts import BuildError, sha256_file
from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import TrtStatus
from flexidit_trt.model import FlexiDiT, save_checkpoint

NO_TRT = TrtStatus(False, "TensorRT not under test here")  # engines are tested in test_engines*.py
TINY = {"depth": 2}


@pytest.fixture(scope="module")
def flexible_checkpoint(tmp_path_factory):
    """A flexible dit_s checkpoint (2 blocks, 8x8 latent, patch sizes 2 and 4, LoRA rank 4)."""
    model = FlexiDiT.from_config("dit_s", init="random", input_size=8, depth=2, lora_rank=4, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "dit_s_tiny.safetensors"
    save_checkpoint(model, path)
    return path


def build(workdir, **kw):
    kw.setdefault("trt", NO_TRT)
    kw.setdefault("progress", False)
    return build_artifacts(workdir=workdir, **kw)


def state(workdir, model="dit_s"):
    folder = workdir / "export" / model
    return {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in folder.iterdir() if p.suffix == ".onnx"}


def manifest(workdir, model="dit_s"):
    return json.loads((workdir / "export" / model / "manifest.json").read_text())


def test_manifest_holds_what_the_runtime_needs(tmp_path):
    report = build(
        tmp_path, model="dit_s", overrides=TINY, image_size=64, patch_sizes=(2, 4), precision="fp32"
    )
    assert [g.rebuilt for g in report.graphs] == [True, True]
    assert report.engines.skipped == "TensorRT not under test here"
    assert "seeded random weights" in report.weights
    m = manifest(tmp_path)
    assert (m["kind"], m["schema"], m["model"]) == ("flexidit-trt/onnx-export", 1, "dit_s")
    g = m["graphs"]["4"]
    assert g["file"] == "p4.onnx" and (tmp_path / "export/dit_s/p4.onnx").exists()
    assert g["files"] == {"p4.onnx": sha256_file(tmp_path / "export/dit_s/p4.onnx")}
    assert g["model"] == "dit_s" and g["config"]["depth"] == 2 and g["config"]["patch_sizes"] == [2, 4]
    assert g["checkpoint"] == {"init": "random", "seed": 0, "path": None, "sha256": None}
    assert len(g["weights_sha256"]) == 64
    assert (g["patch_size"], g["tokens"], g["latent_size"], g["image_size"]) == (4, 4, 8, 64)
    assert (g["opset"], g["precision"], g["fp32_residual"]) == (17, "fp32", False)
    assert g["versions"]["torch"] == torch.__version__ and "onnx" in g["versions"]
    assert [i["name"] for i in g["inputs"]] == ["x", "t", "y"] and g["outputs"][0]["dtype"] == "float32"
    v = g["validation"]
    assert v["passed"] and v["max_rel_error"] <= 1e-4 and v["tolerance_rel"] == 1e-4
    assert v["ops"]["problems"] == [] and "TensorRT 10.15" in v["ops"]["table"]
    assert [c["batch"] for c in v["comparisons"]] == [1, 2]


def test_second_build_rebuilds_nothing(tmp_path, flexible_checkpoint):
    build(tmp_path, checkpoint=flexible_checkpoint)
    before, m1 = state(tmp_path), manifest(tmp_path)
    report = build(tmp_path, checkpoint=flexible_checkpoint, model="dit_s")
    assert [(g.rebuilt, g.reason) for g in report.graphs] == [(False, "same checkpoint")] * 2
    assert state(tmp_path) == before
    assert manifest(tmp_path)["graphs"] == m1["graphs"]


def test_random_weights_rebuild_nothing_and_patch_set_adds_only_new(tmp_path):
    kw = dict(model="dit_s", overrides=TINY, image_size=64, precision="fp16")
    build(tmp_path, patch_sizes=(2,), **kw)
    p2 = state(tmp_path)["p2.onnx"]
    report = build(tmp_path, patch_sizes=(2, 4), **kw)
    assert [(g.patch_size, g.rebuilt) for g in report.graphs] == [(2, False), (4, True)]
    assert report.graphs[0].reason == "same weights" and state(tmp_path)["p2.onnx"] == p2
    assert sorted(manifest(tmp_path)["graphs"]) == ["2", "4"]


def test_changed_checkpoint_or_precision_rebuilds(tmp_path, flexible_checkpoint):
    build(tmp_path, checkpoint=flexible_checkpoint)
    first = state(tmp_path)
    # Same weights in another file: the content hash of the static weights still matches.
    same = tmp_path / "copy.safetensors"
    same.write_bytes(flexible_checkpoint.read_bytes() + b"")
    report = build(tmp_path, checkpoint=same)
    assert all(not g.rebuilt for g in report.graphs) and state(tmp_path) == first
    # Changed weights: both graphs re-export and the manifest records the new checkpoint.
    model = FlexiDiT.from_config("dit_s", init="random", input_size=8, depth=2, lora_rank=4, seed=2)
    changed = tmp_path / "changed.safetensors"
    save_checkpoint(model, changed)
    report = build(tmp_path, checkpoint=changed)
    assert [(g.rebuilt, g.reason) for g in report.graphs] == [(True, "weights changed")] * 2
    assert manifest(tmp_path)["graphs"]["2"]["checkpoint"]["sha256"] == sha256_file(changed)
    # Changed precision: rebuilt, and the reason names it.
    report = build(tmp_path, checkpoint=changed, precision="bf16", patch_sizes=(4,))
    assert report.graphs[0].rebuilt and "precision fp16->bf16" in report.graphs[0].reason
    assert manifest(tmp_path)["graphs"]["4"]["precision"] == "bf16"


def test_modified_graph_file_is_rebuilt(tmp_path, flexible_checkpoint):
    build(tmp_path, checkpoint=flexible_checkpoint, patch_sizes=(2,))
    graph = tmp_path / "export/dit_s/p2.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated, as by an interrupted copy
    report = build(tmp_path, checkpoint=flexible_checkpoint, patch_sizes=(2,))
    assert report.graphs[0].rebuilt and report.graphs[0].reason == "files missing or modified"
    assert sha256_file(graph) == manifest(tmp_path)["graphs"]["2"]["files"]["p2.onnx"]


def test_missing_patch_size_in_flexible_checkpoint(tmp_path, flexible_checkpoint):
    with pytest.raises(BuildError, match=r"has patch sizes \[2, 4\]; 8 requested"):
        build(tmp_path, checkpoint=flexible_checkpoint, patch_sizes=(2, 8))
    assert not (tmp_path / "export" / "dit_s" / "p2.onnx").exists()  # checked before anything is written


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(model="dit_q"), "unknown model config 'dit_q'"),
        (dict(model="dit_s", image_size=250), "not a positive multiple of 8"),
        (dict(model="dit_s", image_size=72, patch_sizes=(2, 4)), "not divisible by patch size 4"),
        (dict(model="dit_s", batch_sizes=(1, 0)), "batch sizes must be positive integers"),
        (dict(model="dit_s", precision="int8"), "unknown precision 'int8'"),
        (dict(model="dit_s", opset=25), "opset 25 is not supported"),
    ],
)
def test_bad_inputs_fail_before_writing(tmp_path, kwargs, message):
    with pytest.raises(BuildError, match=message):
        build(tmp_path / "wd", **kwargs)
    assert not (tmp_path / "wd").exists()


def test_checkpoint_of_another_model(tmp_path, flexible_checkpoint):
    with pytest.raises(BuildError, match="holds a dit_s .*not dit_xl"):
        build(tmp_path, checkpoint=flexible_checkpoint, model="dit_xl")
    with pytest.raises(BuildError, match="for 64 px images"):
        build(tmp_path, checkpoint=flexible_checkpoint, image_size=256)


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BuildError, match="cannot write to"):
        build(blocker / "wd", model="dit_s", overrides=TINY, image_size=64)


def test_leftovers_of_an_interrupted_build_are_removed(tmp_path, flexible_checkpoint):
    build(tmp_path, checkpoint=flexible_checkpoint)
    folder = tmp_path / "export/dit_s"
    before = state(tmp_path)
    (folder / ".staging-x1y2").mkdir()
    (folder / ".staging-x1y2" / "p2.onnx").write_bytes(b"half")
    (folder / ".p2.onnx.abc.tmp").write_bytes(b"half")
    (folder / "p2.0123456789ab.onnx.data").write_bytes(b"orphan side file")
    report = build(tmp_path, checkpoint=flexible_checkpoint)
    assert all(not g.rebuilt for g in report.graphs) and state(tmp_path) == before
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "manifest.json", "p2.onnx", "p4.onnx"]


def test_interrupt_during_export_keeps_the_previous_graph(tmp_path, flexible_checkpoint, monkeypatch):
    build(tmp_path, checkpoint=flexible_checkpoint, patch_sizes=(2,))
    before, entry = state(tmp_path), manifest(tmp_path)["graphs"]["2"]
    import flexidit_trt.export.graphs as graphs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphs, "validate_onnx", interrupted)  # stops the bf16 export mid-way
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, checkpoint=flexible_checkpoint, patch_sizes=(2,), precision="bf16")
    assert state(tmp_path) == before and manifest(tmp_path)["graphs"]["2"] == entry
    assert sorted(p.name for p in (tmp_path / "export/dit_s").iterdir()) == [
        ".lock",
        "manifest.json",
        "p2.onnx",
    ]
