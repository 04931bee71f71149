"""Artifact plumbing (flexidit_trt/artifacts.py) and the build's progress bar: atomic writes without
touching the process umask, orphan cleanup, manifests, and progress counted from structured events."""

from __future__ import annotations

import os
import stat

import pytest

from flexidit_trt import artifacts
from flexidit_trt.artifacts import (
    Step,
    atomic_path,
    fsync_replace,
    new_manifest,
    remove_orphans,
    write_bytes_atomic,
)
from flexidit_trt.build import _Progress
from flexidit_trt.export.validate import bf16_emulation_path


def test_atomic_write_gets_the_usual_mode_without_touching_the_umask(tmp_path, monkeypatch):
    mask = os.umask(0o022)
    os.umask(mask)
    assert mask == artifacts._UMASK  # read once, at import

    def forbidden(_mask):
        raise AssertionError("atomic_path must not change the process umask")

    monkeypatch.setattr(os, "umask", forbidden)
    path = write_bytes_atomic(tmp_path / "sub" / "a.bin", b"data")
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    with atomic_path(tmp_path / "c.bin") as tmp:  # a writer that replaces the temporary file
        tmp.unlink()
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == 0o666 & ~mask
    (tmp_path / "c.bin").unlink()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no b.bin, no temporary file


def test_fsync_replace_moves_the_file(tmp_path):
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    fsync_replace(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"new" and not (tmp_path / "src").exists()


def test_orphan_cleanup_takes_a_left_bf16_emulation_copy(tmp_path):
    leftover = bf16_emulation_path(tmp_path / "p2.onnx")
    assert leftover.parent == tmp_path and leftover.name.startswith(".p2.onnx.")
    leftover.write_bytes(b"emulated copy of an interrupted --revalidate")
    (tmp_path / "p2.onnx").write_bytes(b"graph")
    assert remove_orphans(tmp_path) == [leftover.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.onnx"]


def test_new_manifest():
    m = new_manifest("k", 3, "dit_s", "graphs", tensorrt="10.15.1")
    assert (m["kind"], m["schema"], m["model"], m["graphs"], m["tensorrt"]) == (
        "k",
        3,
        "dit_s",
        {},
        "10.15.1",
    )
    assert m["updated"].endswith("+00:00")


def test_progress_counts_patch_sizes_from_events_not_text():
    bar = _Progress(total=4, enabled=True)
    try:
        bar(Step(None, "resolve", "p: a message that looks like a step"))
        bar(Step(2, "prepare", "preparing"))
        bar(Step(2, "export", "exporting p2.onnx (new)"))
        bar(Step(2, "validate", "validating"))
        assert bar.bar.n == 0
        bar(Step(4, "reuse", "reusing p4.onnx"))
        assert bar.bar.n == 1
        bar(Step(None, "note", "pX: not a patch"))
        assert bar.bar.n == 1 and bar.bar.desc == "pX: not a patch"
        bar.finish_phase()
        assert bar.bar.n == 2
        bar(Step(2, "build", "building p2.plan"))
        bar(Step(4, "build", "building p4.plan"))
        bar.finish_phase()
        assert bar.bar.n == 4 and str(Step(4, "build", "x")) == "p4: x"
    finally:
        bar.close()
