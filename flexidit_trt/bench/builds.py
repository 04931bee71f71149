"""What `flexidit-trt bench` builds itself when its workdir lacks it: the ONNX graphs the ort backend runs,
exported by `build_artifacts` (graphs only) at the bench's precision, from the weights the bench runs.
The time it took is the backend's build cost, kept in its results file beside the first-call times.

Only a missing export is built: graphs of other settings are `flexidit-trt build`'s (the bench says why
it cannot use them and does not replace them), and the compiled engines (TensorRT plans, AOTInductor
packages) take minutes each and stay `build`'s too.
"""

from __future__ import annotations

import time

from ..artifacts import MANIFEST_NAME, export_dir
from .session import Session


def build_missing(backend: str, session: Session, model_name: str, weights: str) -> dict | None:
    """Export `backend`'s graphs under the bench's workdir when it has none; what was built, in how many
    seconds (the `build` field of the results file), or None when nothing was (another backend, or an
    export already there). `weights`: the bench's own, in words (a difference is said)."""
    opts = session.options
    folder = export_dir(opts.workdir, model_name)
    if backend != "ort" or (folder / MANIFEST_NAME).is_file():
        return None
    from ..build import build_artifacts

    session.say(
        f"{backend}: no exported graphs under {folder}: exporting them now ({session.precision}, patch "
        f"sizes {', '.join(map(str, opts.patch_sizes))})"
    )
    start = time.perf_counter()
    report = build_artifacts(
        model_name,
        checkpoint=opts.checkpoint,
        patch_sizes=opts.patch_sizes,
        precision=session.precision,
        image_size=opts.image_size,
        overrides=dict(opts.overrides),
        workdir=opts.workdir,
        engines=(),  # the graphs alone: ONNX Runtime runs them as they are
        progress=False,
        say=session.say,
    )
    seconds = time.perf_counter() - start
    session.say(f"{backend}: exported {len(report.graphs)} graph(s) under {folder} in {seconds:.1f} s")
    if report.weights != weights:  # `build` takes dit_fmnist's embedded weights; the bench seeds its own
        session.say(f"{backend}: note: the graphs hold {report.weights}; the other backends run {weights}")
    return {
        "what": "ONNX graphs (export and validation)",
        "folder": str(folder),
        "precision": session.precision,
        "weights": report.weights,
        "seconds": seconds,
        "graphs": [
            {
                "patch_size": g.patch_size,
                "file": g.path.name,
                "rebuilt": g.rebuilt,
                "reason": g.reason,
                "export_seconds": g.entry.get("export_seconds"),
            }
            for g in report.graphs
        ],
    }
