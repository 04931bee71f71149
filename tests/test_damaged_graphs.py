"""Damaged or hand-edited exported graphs: `run` refuses each in one line (exit 1, no traceback) naming the
file or the manifest field and the `build` that repairs it; that `build`, typed literally, re-exports the
graph (saying why) instead of reusing it, and `run` works again."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil

import onnx
import pytest
from click.testing import CliRunner

from flexidit_trt.cli import main

RUN = ["run", "--backend", "ort", "--steps", "4", "--num-images", "1"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    result = invoke("build", "--model", "dit_fmnist", "--precision", "fp32", "--workdir", root)
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture()
def workdir(built, tmp_path, monkeypatch):
    shutil.copytree(built, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return tmp_path / "w"


def manifest(workdir) -> dict:
    return json.loads((workdir / "export/dit_fmnist/manifest.json").read_text())


def edit_manifest(workdir, edit) -> None:
    m = manifest(workdir)
    edit(m["graphs"])
    (workdir / "export/dit_fmnist/manifest.json").write_text(json.dumps(m))


def record_hash(workdir) -> None:
    """The hand-edit that makes p2's recorded hash match the damaged file, so the next check is reached."""
    sha = hashlib.sha256((workdir / "export/dit_fmnist/p2.onnx").read_bytes()).hexdigest()
    edit_manifest(workdir, lambda graphs: graphs["2"]["files"].__setitem__("p2.onnx", sha))


def refused(*fragments: str) -> str:
    """Run on the damaged workdir: one line, exit 1, the fragments in it; returns the rebuild command."""
    result = invoke(*RUN, "--out", "refused")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return re.search(r"rebuild it with `(flexidit-trt build[^`]*)`", result.output).group(1)


def repaired_by(command: str, why: str) -> None:
    """The rebuild command, literally: it re-exports p2 (saying why), and run works again."""
    rebuilt = invoke(*shlex.split(command)[1:])
    assert rebuilt.exit_code == 0, rebuilt.output
    p2 = next(line for line in rebuilt.output.splitlines() if line.startswith("p2 "))
    assert "exported in" in p2 and why in p2, p2
    again = invoke(*RUN, "--out", "ok")
    assert again.exit_code == 0, again.output


def test_a_truncated_graph_is_refused_by_its_hash_and_rebuilt(workdir):
    path = workdir / "export/dit_fmnist/p2.onnx"
    path.write_bytes(path.read_bytes()[:100_000])
    command = refused(str(path.relative_to(workdir)), "field files.p2.onnx")
    assert command == "flexidit-trt build --model dit_fmnist --precision fp32"
    repaired_by(command, "files missing or modified")


def test_a_truncated_graph_with_its_hash_edited_is_one_line_from_onnx_runtime(workdir):
    path = workdir / "export/dit_fmnist/p2.onnx"
    path.write_bytes(path.read_bytes()[:100_000])
    record_hash(workdir)
    command = refused("cannot be loaded by ONNX Runtime", "InvalidProtobuf", "export/dit_fmnist/p2.onnx")
    repaired_by(command, "p2.onnx (unreadable as ONNX)")


def test_a_renamed_input_is_refused_by_name_and_rebuilt(workdir):
    path = workdir / "export/dit_fmnist/p2.onnx"
    model = onnx.load(str(path))
    model.graph.input[1].name = "timestep"
    for node in model.graph.node:
        node.input[:] = ["timestep" if name == "t" else name for name in node.input]
    onnx.save(model, str(path))
    refused("field files.p2.onnx")  # the hash catches it first
    record_hash(workdir)
    command = refused("has inputs ['x', 'timestep', 'y']", "export/dit_fmnist/p2.onnx")
    repaired_by(command, "p2.onnx inputs[1].name differs")


def test_a_hand_edited_shape_is_refused_with_the_field_and_not_reused_by_build(workdir):
    edit_manifest(workdir, lambda g: g["2"]["inputs"][0]["shape"].__setitem__(2, 16))
    command = refused("manifest field inputs[0].shape", "recorded ['batch', 1, 16, 32]")
    repaired_by(command, "manifest field inputs[0].shape differs")
    assert manifest(workdir)["graphs"]["2"]["inputs"][0]["shape"] == ["batch", 1, 32, 32]


def test_a_hand_edited_hash_is_refused_with_the_field_and_not_reused_by_build(workdir):
    edit_manifest(workdir, lambda g: g["2"]["files"].__setitem__("p2.onnx", "0" * 64))
    command = refused("field files.p2.onnx", "000000000000... recorded")
    repaired_by(command, "files missing or modified")
