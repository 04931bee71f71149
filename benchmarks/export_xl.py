"""Export DiT-XL/2 (seeded random weights) to ONNX at fp16 and bf16, with and without the fp32 residual
stream, validate each graph with ONNX Runtime's CPU provider against PyTorch, and report export time,
graph size and errors as a table (stdout, export_xl.md) and JSON (export_xl.json) under --out.

    python3 benchmarks/export_xl.py --out $OUT                               # the GPU machine (CPU work)
    python3 benchmarks/export_xl.py --out /tmp/x --model dit_s --depth 2 --image-size 64   # a tiny run

Columns: `ort rel` is max |ONNX Runtime - PyTorch| / max |PyTorch| with PyTorch in the same precision
(the export's error; bf16 runs emulated on ORT's CPU provider, see export/validate.py); `vs fp32` is
the same measure for PyTorch at that precision against PyTorch in fp32 (the precision's own loss; with
these random N(0, 0.02²) weights rounding only: they have none of a trained DiT's activation outliers,
so fp16 overflow cannot show). Graphs are written to a temporary folder and deleted after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    import flexidit_trt  # noqa: F401
except ImportError:  # run from a checkout without installing (the GPU machine needs no build for this)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnx
    import onnxruntime
    import torch

    from flexidit_trt.export import TOLERANCES, export_onnx, graph_module, validate_onnx
    from flexidit_trt.export.onnx_export import example_inputs
    from flexidit_trt.export.source import VAE_FACTOR
    from flexidit_trt.model import FlexiDiT

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"input_size": args.image_size // VAE_FACTOR, "patch_sizes": tuple(args.patch_sizes)}
    if args.depth is not None:
        overrides["depth"] = args.depth
    t0 = time.perf_counter()
    model = FlexiDiT.from_config(args.model, init="random", seed=0, **overrides)
    init_s = time.perf_counter() - t0
    cfg = model.config
    log(
        f"{cfg.name}: depth {cfg.depth}, hidden {cfg.hidden_size}, latent {cfg.input_size}, "
        f"patch sizes {list(cfg.patch_sizes)}; random init {init_s:.1f} s; {os.cpu_count()} CPUs"
    )

    variants = [(prec, res) for prec in args.precisions for res in args.residual]
    rows = []
    for p in args.patch_sizes:
        reference = graph_module(model, p, "fp32")  # built once: ~11 s for DiT-XL
        inputs = example_inputs(reference.config, args.batch, seed=1)
        with torch.no_grad():
            ref32 = reference(*inputs).numpy()
        del reference
        for prec, res in variants:
            rows.append(
                run_variant(
                    model, p, prec, res, inputs, ref32, args, export_onnx, graph_module, validate_onnx
                )
            )
            log(format_row(rows[-1]))

    total = time.perf_counter() - t0
    result = {
        "model": cfg.name,
        "config": json.loads(cfg.to_json()),
        "batch": args.batch,
        "opset": args.opset,
        "tolerances_rel": TOLERANCES,
        "rows": rows,
        "init_seconds": round(init_s, 2),
        "total_seconds": round(total, 2),
        "environment": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(),
            "machine": platform.machine(),
        },
    }
    table = markdown_table(rows)
    (out_dir / "export_xl.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "export_xl.md").write_text(
        f"{cfg.name} (random weights), batch {args.batch}, opset {args.opset}, {os.cpu_count()} CPUs, "
        f"total {total:.0f} s\n\n{table}\n"
    )
    print(table)
    print(f"total {total:.1f} s; wrote {out_dir / 'export_xl.json'} and {out_dir / 'export_xl.md'}")
    return 0 if all(r["passed"] for r in rows) else 1


def run_variant(model, p, prec, res, inputs, ref32, args, export_onnx, graph_module, validate_onnx) -> dict:
    import numpy as np
    import torch

    row = {"patch_size": p, "precision": prec, "fp32_residual": res}
    module = graph_module(model, p, prec, res, args.opset)
    with torch.no_grad():
        low = module(*inputs).numpy()
    row["torch_vs_fp32_rel"] = float(np.max(np.abs(low - ref32)) / max(float(np.max(np.abs(ref32))), 1e-30))
    tmp = Path(tempfile.mkdtemp(prefix="export_xl-", dir=args.tmp))
    reports = {}

    def check(staged, mod):
        reports["v"] = validate_onnx(
            staged, mod, precision=prec, batches=(args.batch,), raise_on_failure=False
        )

    try:
        graph = export_onnx(
            model,
            p,
            tmp / f"p{p}.onnx",
            precision=prec,
            fp32_residual=res,
            opset=args.opset,
            module=module,
            check=check,
        )
        report = reports["v"]
        row.update(
            export_seconds=round(graph.seconds, 2),
            graph_bytes=graph.nbytes,
            external_data=graph.data_path is not None,
            validate_seconds=round(report.seconds, 2),
            route=report.route,
            provider=report.provider,
            max_abs_error=report.max_abs_error,
            max_rel_error=report.max_rel_error,
            tolerance_rel=report.tolerance,
            ops_ok=report.ops.ok,
            op_problems=report.ops.problems,
            passed=report.passed,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return row


def markdown_table(rows: list[dict]) -> str:
    head = "| patch | precision | fp32 residual | export s | graph MB | validate s | ort max abs | ort rel | tol | ops | pass | vs fp32 rel |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['patch_size']} | {r['precision']} | {'yes' if r['fp32_residual'] else 'no'} | {r['export_seconds']:.1f} "
            f"| {r['graph_bytes'] / 1e6:.0f}{' (ext)' if r['external_data'] else ''} | {r['validate_seconds']:.1f} "
            f"| {r['max_abs_error']:.2e} | {r['max_rel_error']:.2e} | {r['tolerance_rel']:g} "
            f"| {'ok' if r['ops_ok'] else 'FAIL'} | {'yes' if r['passed'] else 'NO'} | {r['torch_vs_fp32_rel']:.2e} |"
        )
    return "\n".join(lines)


def format_row(r: dict) -> str:
    return (
        f"p{r['patch_size']} {r['precision']}{' +fp32 residual' if r['fp32_residual'] else ''}: export "
        f"{r['export_seconds']:.1f} s, {r['graph_bytes'] / 1e6:.0f} MB, validate {r['validate_seconds']:.1f} s, "
        f"ORT rel {r['max_rel_error']:.2e} ({'pass' if r['passed'] else 'FAIL'}), vs fp32 {r['torch_vs_fp32_rel']:.2e}"
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for export_xl.json and export_xl.md")
    parser.add_argument("--model", default="dit_xl")
    parser.add_argument("--depth", type=int, default=None, help="override the depth (tiny runs)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--patch-sizes", type=_ints, default=(2,), help="comma-separated (default 2)")
    parser.add_argument("--precisions", type=lambda s: tuple(s.split(",")), default=("fp16", "bf16"))
    parser.add_argument(
        "--residual",
        choices=("off", "on", "both"),
        default="both",
        help="fp32 residual variants (default both)",
    )
    parser.add_argument("--batch", type=int, default=2, help="validation batch (a guided pair)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tmp", default=None, help="folder for the temporary graphs (default: the system's)")
    args = parser.parse_args(argv)
    args.residual = {"off": (False,), "on": (True,), "both": (False, True)}[args.residual]
    return args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


if __name__ == "__main__":
    sys.exit(main())
