"""The export root through build_artifacts: manifests, reuse, what a change rebuilds, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from flexidit_trt.artifacts import BuildError, OptionError, sha256_file
from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import TrtStatus
from flexidit_trt.export.source import ModelSource
from flexidit_trt.model import FlexiDiT, load_checkpoint, save_checkpoint

NO_TRT = TrtStatus(False, "TensorRT not under test here")  # engines are tested in test_engines*.py
TINY = {"depth": 2}


@pytest.fixture(scope="module")
def flexible_checkpoint(tiny_checkpoint):
    return tiny_checkpoint(lora_rank=4, seed=1)


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


def test_random_weights_rerun_builds_no_model(tmp_path, monkeypatch):
    """Seeded random weights are fixed by config and seed: a no-op rerun neither builds the model nor
    prepares a static one (for the default dit_xl that took ~36 s); another seed or config re-exports."""
    kw = dict(model="dit_s", overrides=TINY, image_size=64, patch_sizes=(2, 4), precision="fp16")
    build(tmp_path, **kw)
    before, m1 = state(tmp_path), manifest(tmp_path)
    import flexidit_trt.export.graphs as graphs

    calls = []
    real_from_config, real_graph_module = FlexiDiT.from_config, graphs.graph_module
    monkeypatch.setattr(
        FlexiDiT, "from_config", lambda *a, **k: calls.append("model") or real_from_config(*a, **k)
    )
    monkeypatch.setattr(
        graphs, "graph_module", lambda *a, **k: calls.append("static") or real_graph_module(*a, **k)
    )
    report = build(tmp_path, **kw)
    assert [(g.rebuilt, g.reason) for g in report.graphs] == [(False, "same weights")] * 2
    assert calls == [] and state(tmp_path) == before and manifest(tmp_path)["graphs"] == m1["graphs"]
    report = build(tmp_path, **{**kw, "patch_sizes": (4,)}, seed=1)
    assert [(g.rebuilt, g.reason) for g in report.graphs] == [(True, "weights changed")]
    assert calls[0] == "model" and manifest(tmp_path)["graphs"]["4"]["checkpoint"]["seed"] == 1


def test_model_names_are_canonical(tmp_path, flexible_checkpoint):
    report = build(tmp_path, model="DiT-S/2", overrides=TINY, image_size=64, patch_sizes=(2,))
    assert report.model == "dit_s" and (tmp_path / "export/dit_s/p2.onnx").exists()
    assert not (tmp_path / "export/DiT-S").exists() and manifest(tmp_path)["model"] == "dit_s"
    assert ModelSource("DiT-S/2", (2,), checkpoint=flexible_checkpoint).name == "dit_s"
    # A checkpoint's config is compared by the canonical name too.
    report = build(tmp_path / "ckpt", checkpoint=flexible_checkpoint, model="DiT-S/2")
    assert report.model == "dit_s" and [g.rebuilt for g in report.graphs] == [True, True]
    assert (tmp_path / "ckpt/export/dit_s/manifest.json").exists()
    report = build(tmp_path / "ckpt", checkpoint=flexible_checkpoint, model="dit-s")
    assert [g.reason for g in report.graphs] == ["same checkpoint"] * 2
    with pytest.raises(BuildError, match="unknown model config 'DiT-Q/2'"):
        build(tmp_path / "ckpt", checkpoint=flexible_checkpoint, model="DiT-Q/2")


def test_rerun_without_model_does_not_load_a_flexible_checkpoint(tmp_path, flexible_checkpoint, monkeypatch):
    """The CLI's default (no --model): the config comes from the .safetensors metadata, so a no-op
    rerun reads no weights; the patch sizes and image size are still checked before anything is written."""
    build(tmp_path, checkpoint=flexible_checkpoint)
    before = state(tmp_path)
    loads = []
    real_load = ModelSource.load
    monkeypatch.setattr(ModelSource, "load", lambda self: loads.append(self) or real_load(self))
    report = build(tmp_path, checkpoint=flexible_checkpoint)
    assert report.model == "dit_s" and loads == [] and state(tmp_path) == before
    assert [(g.rebuilt, g.reason) for g in report.graphs] == [(False, "same checkpoint")] * 2
    with pytest.raises(BuildError, match=r"has patch sizes \[2, 4\]; 8 requested"):
        build(tmp_path / "other", checkpoint=flexible_checkpoint, patch_sizes=(8,))
    with pytest.raises(BuildError, match="for 64 px images"):
        build(tmp_path / "other", checkpoint=flexible_checkpoint, image_size=128)
    assert loads == [] and not (tmp_path / "other/export/dit_s").exists()


def test_other_checkpoint_layouts_are_loaded_to_read_their_config(tmp_path):
    """Only our flexible .safetensors carries its config in the header; an official .pt (base weights,
    shapes only) is loaded to infer it."""
    from flexidit_trt.export.source import peek_checkpoint_config

    model = FlexiDiT.from_config("dit_s", init="random", input_size=8, depth=2, patch_sizes=(2,), seed=4)
    official = tmp_path / "official.pt"
    torch.save({k: v for k, v in model.state_dict().items()}, official)
    base_only = tmp_path / "base.safetensors"
    save_checkpoint(model, base_only)  # no weak sizes: load_checkpoint derives them, so it must load
    assert peek_checkpoint_config(official) is None and peek_checkpoint_config(base_only) is None
    source = ModelSource(None, (2, 4), checkpoint=official)
    source.resolve()
    assert source.name == "custom" and source.image_size == 64 and source._model is not None  # depth 2


def test_changed_checkpoint_or_precision_rebuilds(tmp_path, flexible_checkpoint, monkeypatch):
    build(tmp_path, checkpoint=flexible_checkpoint)
    first = state(tmp_path)
    # Same weights in another file with other bytes (different metadata): the file hash differs, so the
    # weights are loaded, and the content hash of the static weights still matches.
    same = tmp_path / "resaved.safetensors"
    save_checkpoint(load_checkpoint(flexible_checkpoint), same, metadata={"note": "x"})
    assert sha256_file(same) != sha256_file(flexible_checkpoint)
    report = build(tmp_path, checkpoint=same)
    assert all(not g.rebuilt for g in report.graphs) and state(tmp_path) == first
    assert [g.reason for g in report.graphs] == ["same weights"] * 2
    assert manifest(tmp_path)["graphs"]["2"]["checkpoint"]["sha256"] == sha256_file(same)
    # Changed weights: both graphs re-export and the manifest records the new checkpoint.
    model = FlexiDiT.from_config("dit_s", init="random", input_size=8, depth=2, lora_rank=4, seed=2)
    changed = tmp_path / "changed.safetensors"
    save_checkpoint(model, changed)
    import flexidit_trt.export.graphs as graphs

    hashed = []
    real_intact = graphs._files_intact
    monkeypatch.setattr(
        graphs, "_files_intact", lambda folder, e: hashed.append(e["file"]) or real_intact(folder, e)
    )
    report = build(tmp_path, checkpoint=changed)
    assert [(g.rebuilt, g.reason) for g in report.graphs] == [(True, "weights changed")] * 2
    assert hashed == ["p2.onnx", "p4.onnx"]  # the old graph's files are hashed once each, not twice
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
    with pytest.raises(OptionError, match=message):  # bad usage: the CLI exits 2
        build(tmp_path / "wd", **kwargs)
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("size", [0, -64])
def test_image_size_zero_or_negative_is_refused(size):
    """0 px used to mean the default (256 px) for random weights; now it is an error like -64."""
    with pytest.raises(OptionError, match=f"image size {size} is not a positive multiple of 8"):
        ModelSource("dit_s", (2,), image_size=size)


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
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "p2.onnx", "p4.onnx"]


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
        "manifest.json",
        "p2.onnx",
    ]


def test_reused_graphs_are_rechecked_only_when_the_operator_table_changed(
    tmp_path, flexible_checkpoint, monkeypatch
):
    from flexidit_trt.export import load_op_table

    build(tmp_path, checkpoint=flexible_checkpoint)
    table = load_op_table().version
    assert {g["ops_table"] for g in manifest(tmp_path)["graphs"].values()} == {table}
    import flexidit_trt.export.graphs as graphs

    checked = []
    real = graphs.validate_onnx
    monkeypatch.setattr(
        graphs,
        "validate_onnx",
        lambda path, module, **kw: checked.append(path.name) or real(path, module, **kw),
    )
    build(tmp_path, checkpoint=flexible_checkpoint)
    assert checked == []  # same bytes, same table: no checker, shape inference or operator check
    # Entries checked against another table, or before the table was recorded, are checked once more.
    m = manifest(tmp_path)
    m["graphs"]["4"]["ops_table"] = "10.14/0123456789abcdef"
    del m["graphs"]["2"]["ops_table"]
    (tmp_path / "export/dit_s/manifest.json").write_text(json.dumps(m))
    report = build(tmp_path, checkpoint=flexible_checkpoint)
    assert checked == ["p2.onnx", "p4.onnx"] and [g.rebuilt for g in report.graphs] == [False, False]
    assert {g["ops_table"] for g in manifest(tmp_path)["graphs"].values()} == {table}
    assert manifest(tmp_path)["graphs"]["2"]["validation"]["ops"]["problems"] == []
    build(tmp_path, checkpoint=flexible_checkpoint)
    assert len(checked) == 2


def test_revalidating_a_bf16_graph_leaves_nothing_behind(tmp_path, flexible_checkpoint):
    build(tmp_path, checkpoint=flexible_checkpoint, precision="bf16", patch_sizes=(2,))
    report = build(
        tmp_path, checkpoint=flexible_checkpoint, precision="bf16", patch_sizes=(2,), revalidate=True
    )
    assert not report.graphs[0].rebuilt and report.graphs[0].validation["route"].startswith("bf16 emulated")
    assert sorted(p.name for p in (tmp_path / "export/dit_s").iterdir()) == [
        "manifest.json",
        "p2.onnx",
    ]


def test_fp32_residual_is_normalised_for_fp32_graphs(tmp_path, flexible_checkpoint):
    report = build(
        tmp_path, checkpoint=flexible_checkpoint, precision="fp32", fp32_residual=True, patch_sizes=(4,)
    )
    entry = report.graphs[0].entry
    assert (entry["settings"]["fp32_residual"], entry["fp32_residual"]) == (False, False)
    again = build(tmp_path, checkpoint=flexible_checkpoint, precision="fp32", patch_sizes=(4,))
    assert again.graphs[0].reason == "same checkpoint"  # the flag changes nothing in an fp32 graph


def test_export_reports_structured_progress(tmp_path, flexible_checkpoint):
    from flexidit_trt.artifacts import Step
    from flexidit_trt.export import export_graphs

    events: list[Step] = []
    source = ModelSource(None, (2, 4), checkpoint=flexible_checkpoint)
    export_graphs(source, tmp_path, precision="fp32", progress=events.append)
    assert all(isinstance(e, Step) for e in events)
    assert [(e.patch_size, e.stage) for e in events] == [
        (None, "resolve"),
        (2, "prepare"),
        (2, "export"),
        (2, "validate"),
        (4, "prepare"),
        (4, "export"),
        (4, "validate"),
    ]
    events.clear()
    export_graphs(
        ModelSource(None, (2, 4), checkpoint=flexible_checkpoint),
        tmp_path,
        precision="fp32",
        progress=events.append,
    )
    assert [(e.patch_size, e.stage) for e in events] == [(None, "resolve"), (2, "reuse"), (4, "reuse")]


# -- review findings (issue 10) -------------------------------------------------------------------------------
def test_rebuild_with_other_settings_leaves_no_mixed_graphs(tmp_path):
    """A graph of a patch size this build does not ask for stays only if it was made with this build's
    settings and weights; otherwise its entry and files go, and the report says so."""
    kw = dict(model="dit_s", overrides=TINY, image_size=64)
    build(tmp_path, patch_sizes=(2, 8), precision="fp16", **kw)
    report = build(tmp_path, patch_sizes=(2,), precision="fp32", **kw)
    m = manifest(tmp_path)
    assert sorted(m["graphs"]) == ["2"] and m["graphs"]["2"]["precision"] == "fp32"
    assert sorted(state(tmp_path)) == ["p2.onnx"]
    assert [r.patch_size for r in report.removed] == [8]
    assert "precision fp16->fp32" in report.removed[0].reason
    assert report.removed[0].files == ["p8.onnx"]


def test_graphs_of_the_same_build_settings_are_kept(tmp_path, flexible_checkpoint):
    build(tmp_path, checkpoint=flexible_checkpoint, precision="fp32")
    report = build(tmp_path, checkpoint=flexible_checkpoint, precision="fp32", patch_sizes=(2,))
    assert report.removed == [] and sorted(manifest(tmp_path)["graphs"]) == ["2", "4"]


def test_interrupted_rebuild_with_other_settings_is_not_mixed(tmp_path, flexible_checkpoint, monkeypatch):
    """The first graph committed with the new settings drops the entries of the old ones: an interrupt
    before the second leaves one consistent graph, not an fp32 p2 beside an fp16 p4."""
    build(tmp_path, checkpoint=flexible_checkpoint)
    import flexidit_trt.export.graphs as graphs

    real, calls = graphs.validate_onnx, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(graphs, "validate_onnx", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, checkpoint=flexible_checkpoint, precision="fp32")
    m = manifest(tmp_path)
    assert sorted(m["graphs"]) == ["2"] and m["graphs"]["2"]["precision"] == "fp32"
    # p4's old file waited for its turn (an unchanged graph would have been reused); no entry names it,
    # so it counts as absent, and the next build's cleanup removes it before exporting p4 again.
    monkeypatch.setattr(graphs, "validate_onnx", real)
    report = build(tmp_path, checkpoint=flexible_checkpoint, precision="fp32")
    assert [(g.patch_size, g.rebuilt, g.reason) for g in report.graphs] == [
        (2, False, "same checkpoint"),
        (4, True, "new"),
    ]
    assert {g["precision"] for g in manifest(tmp_path)["graphs"].values()} == {"fp32"}


def test_lock_file_is_gone_after_a_build_and_a_deleted_lock_is_not_shared(
    tmp_path, flexible_checkpoint, monkeypatch
):
    """No `.lock` stays after a build; a build that locked a file its predecessor deleted meanwhile takes
    the file now at the path, so two builds never hold locks on two files of one name."""
    from flexidit_trt.artifacts import BuildError, folder_lock

    build(tmp_path, checkpoint=flexible_checkpoint, patch_sizes=(2,))
    assert not (tmp_path / "export/dit_s/.lock").exists()
    folder = tmp_path / "locked"
    with folder_lock(folder):
        assert (folder / ".lock").exists()
        with pytest.raises(BuildError, match="another build is writing to"), folder_lock(folder):
            pass
    assert not (folder / ".lock").exists()
    # The race: this build opens `.lock`, then the holder before it deletes that file and unlocks; the
    # flock this build then takes is on a deleted file and excludes nobody, so it must take the new one.
    import builtins
    from pathlib import Path

    import flexidit_trt.artifacts as artifacts

    opened = []

    def open_then_deleted(path, *args, **kwargs):
        handle = builtins.open(path, *args, **kwargs)  # noqa: SIM115 - returned open, as open() does
        if not opened:
            Path(path).unlink()
        opened.append(path)
        return handle

    monkeypatch.setattr(artifacts, "open", open_then_deleted, raising=False)
    with folder_lock(folder):
        assert len(opened) == 2 and (folder / ".lock").exists()
        with pytest.raises(BuildError), folder_lock(folder):  # the file at the path is the one held
            pass
    assert not (folder / ".lock").exists()
