"""Real TensorRT builds: run only where tensorrt, polygraphy and a CUDA GPU are present (never on our
machines; see engines/README.md for which paths that leaves unexecuted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import trt_status

STATUS = trt_status()
pytestmark = [
    pytest.mark.trt,
    pytest.mark.gpu,
    pytest.mark.skipif(
        not STATUS.available, reason=f"TensorRT engines cannot be built here: {STATUS.reason}"
    ),
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_engine_builds_and_matches_pytorch(tmp_path, precision):
    from polygraphy.backend.common import bytes_from_path
    from polygraphy.backend.trt import TrtRunner, engine_from_bytes

    from flexidit_trt.export import graph_module
    from flexidit_trt.export.onnx_export import example_inputs
    from flexidit_trt.model import FlexiDiT

    def build():  # the same inputs twice: the second run must reuse both engines
        return build_artifacts(
            "dit_s",
            overrides={"depth": 2},
            image_size=64,
            patch_sizes=(2, 4),
            batch_sizes=(1, 2),
            precision=precision,
            workdir=tmp_path,
            require_trt=True,
            progress=False,
            opt_level=2,
        )

    report = build()
    assert report.engines.skipped is None and [r.rebuilt for r in report.engines.records] == [True, True]
    manifest = json.loads((report.engines.folder / "manifest.json").read_text())
    assert manifest["tensorrt"] == STATUS.version
    model = FlexiDiT.from_config("dit_s", init="random", input_size=8, depth=2, patch_sizes=(2, 4))
    for record in report.engines.records:
        entry = manifest["engines"][str(record.patch_size)]
        assert [(p["min"], p["max"]) for p in entry["profiles"]] == [(1, 1), (2, 2), (3, 4)]
        assert all(p["device_memory_bytes"] > 0 for p in entry["profiles"])
        module = graph_module(model, record.patch_size, precision)
        engine = engine_from_bytes(bytes_from_path(str(record.path)))
        for index, batch in enumerate((1, 2, 4)):
            x, t, y = example_inputs(module.config, batch, seed=batch)
            with torch.no_grad():
                ref = module(x, t, y).numpy()
            with TrtRunner(engine, optimization_profile=index) as runner:
                out = runner.infer({"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})["out"]
            rel = float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))
            assert rel <= 3e-2, (record.patch_size, batch, rel)

    again = build()
    assert [r.rebuilt for r in again.engines.records] == [False, False]
