"""benchmarks/export_xl.py on a tiny config, so the GPU machine's run is known to work before it starts."""

from __future__ import annotations

import json

import export_xl  # benchmarks/ is on sys.path (conftest.py)


def test_tiny_run_writes_table_and_json(tmp_path, capsys, monkeypatch):
    import flexidit_trt.export as export

    built = []
    real_graph_module = export.graph_module
    monkeypatch.setattr(
        export,
        "graph_module",
        lambda model, p, prec="fp32", *a, **k: (
            built.append(prec) or real_graph_module(model, p, prec, *a, **k)
        ),
    )
    code = export_xl.main(
        [
            "--out",
            str(tmp_path),
            "--model",
            "dit_s",
            "--depth",
            "2",
            "--image-size",
            "64",
            "--tmp",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert built == ["fp32", "fp16", "fp16", "bf16", "bf16"]  # the fp32 reference once, then one per row
    result = json.loads((tmp_path / "export_xl.json").read_text())
    rows = result["rows"]
    assert [(r["precision"], r["fp32_residual"]) for r in rows] == [
        ("fp16", False),
        ("fp16", True),
        ("bf16", False),
        ("bf16", True),
    ]
    assert all(r["passed"] and r["graph_bytes"] > 0 and r["export_seconds"] > 0 for r in rows)
    assert rows[2]["route"].startswith("bf16 emulated") and rows[0]["route"] == "native fp16"
    assert result["config"]["depth"] == 2 and result["environment"]["onnxruntime"]
    table = (tmp_path / "export_xl.md").read_text()
    assert table.count("\n| 2 |") == 4 and "| ort rel |" in table
    assert "| patch |" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export_xl.json", "export_xl.md"]  # graphs deleted
