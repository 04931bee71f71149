"""The report's projected part: REPORT.json's `projected` and the markdown section drawn from it.

    projected = projected_json(docs, check_file("benchmarks/results"))
    projected["runs"]      # per results file: its trajectories on each target GPU, or why not (projection.py)
    projected["check"]     # those projections against a run measured on another GPU, or None
    projected_markdown(projected)   # the section's lines: every projected number under a "projected" label

The check reads <results>/runtime/runtime_gpu.json (the runtime run kept there: a run measured on an
H100 SXM) where it exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .projection import (
    MIN_COVERAGE,
    SKUS,
    TARGETS,
    ProjectionError,
    check_projection,
    project_document,
    read_measured,
    sku_table,
)
from .tables import DASH, markdown_table

REPORT_JSON = "REPORT.json"
CHECK_FILE = Path("runtime") / "runtime_gpu.json"
CHECK_HEADLINE = ("aoti", 8, 0.5)  # the row the check was asked for: backend, images, budget
PROJECTED_NOTE = (
    "Projected, not measured. Each step of a trajectory is split by its profile (above; its kernel "
    "categories, by kernel name, cover every recorded kernel) into matrix kernels (GEMM, attention), "
    "memory-bound kernels (the rest) and the remainder of the measured step (step − device busy; a profile "
    f"whose busy time covers less than {MIN_COVERAGE:.0%} of the step is not used); matrix time is scaled by "
    "the ratio of dense bf16 peaks, memory-bound time by the ratio of memory bandwidths, the remainder and "
    "the time outside the steps kept (bench/projection.py). Assumed: the measured GPU's kernel efficiency "
    "and its host's launch costs on every GPU; small kernels (1 image) and data held in L2 scale by neither "
    "ratio."
)
CHECK_NOTE = (
    "Each run measured on the other GPU against the projection of this table's run with the same backend, "
    "images and budget onto that GPU. The two are separate runs of the code of their day: a change in the "
    "engines between them counts as error here. Error = projected / measured − 1."
)


def check_file(results: str | Path) -> Path:
    return Path(results) / CHECK_FILE


def projected_json(docs: Sequence[dict[str, Any]], check_path: Path | None) -> dict[str, Any]:
    """Every document projected onto TARGETS, and the check against `check_path` where that file exists."""
    runs = [project_document(d) for d in docs]
    sources = [SKUS[k] for k in dict.fromkeys(r["source"] for r in runs if "source" in r)]
    check = None
    if check_path is not None and check_path.exists():
        try:
            check = check_projection(runs, read_measured(check_path))
        except ProjectionError as err:
            check = {"against": str(check_path), "not_checked": str(err)}
    return {
        "note": PROJECTED_NOTE,
        "sources": sku_table(sources),
        "targets": sku_table(TARGETS),
        "runs": runs,
        "check": check,
    }


def projected_markdown(projected: dict[str, Any]) -> list[str]:
    """The section's lines: the SKU table, every projected trajectory, what was not projected and why, and
    the check. None when no run was projected."""
    done = [r for r in projected["runs"] if "trajectories" in r]
    if not done:
        return []
    targets = [SKUS[s["key"]] for s in projected["targets"]]
    sku_rows = [
        [s["label"], f"{s['matrix_tflops']:g}", f"{s['bandwidth_tbs']:g}", role]
        for key, role in (("sources", "measured (projected from)"), ("targets", "projected onto"))
        for s in projected[key]
    ]
    header = [
        "machine",
        "backend",
        "images",
        "budget",
        "measured s",
        *(f"{t.label} s (projected)" for t in targets),
    ]
    rows = [[r["machine"], r["backend"], t["images"], _budget(t["budget"]), f"{t['measured_s']:.3f}",
             *(f"{t['projected_s'][s.key]:.3f}" for s in targets)]
            for r in done for t in r["trajectories"]]  # fmt: skip
    skipped = [f"- {r['machine']}, {r['backend']}: not projected: {r['not_projected']}"
               for r in projected["runs"] if "not_projected" in r]  # fmt: skip
    return [
        "## Projected onto other GPUs (projected from the measured profiles, not measured)",
        "",
        PROJECTED_NOTE,
        "",
        *markdown_table(["GPU", "dense bf16 TFLOP/s", "memory TB/s", "role"], sku_rows),
        "",
        *markdown_table(header, rows),
        "",
        *skipped,
        *([""] if skipped else []),
        *_check_markdown(projected["check"]),
    ]


def _check_markdown(check: dict[str, Any] | None) -> list[str]:
    if check is None:
        return []
    title = f"### Check of the projection against a run measured on another GPU (`{check['against']}`)"
    if "not_checked" in check:
        return [title, "", f"Not checked: {check['not_checked']}", ""]
    label = SKUS[check["sku"]].label
    lines = [title, "", CHECK_NOTE, ""]
    head = next(
        (r for r in check["rows"] if (r["backend"], r["images"], r["budget"]) == CHECK_HEADLINE), None
    )
    if head is not None and "projected_s" in head:
        lines += [f"**{label} check**: {head['backend']}, {head['images']} images, budget {_budget(head['budget'])}: "
                  f"{head['projected_s']:.3f} s projected from the {head['from']['machine']} run's "
                  f"{head['from']['measured_s']:.3f} s against {head['measured_s']:.3f} s measured on the {label}: "
                  f"error {_signed(head['error'])}.", ""]  # fmt: skip
    header = ["backend", "images", "budget", "measured on source s", f"{label} s (projected)",
              f"{label} s (measured)", "error", "step error by patch (projected)"]  # fmt: skip
    rows = []
    for r in check["rows"]:
        name = (
            r["backend"] if r["measured_as"] == r["backend"] else f"{r['backend']} ({r['measured_as']} there)"
        )
        first = [name, r["images"], _budget(r["budget"])]
        if "projected_s" not in r:
            rows.append(
                [*first, DASH, f"not projected: {r['not_projected']}", f"{r['measured_s']:.3f}", DASH, DASH]
            )
            continue
        steps = ", ".join(f"p{p} {_signed(e)}" for p, e in sorted(r["step_error"].items()))
        rows.append([*first, f"{r['from']['measured_s']:.3f}", f"{r['projected_s']:.3f}", f"{r['measured_s']:.3f}",
                     _signed(r["error"]), steps])  # fmt: skip
    return [*lines, *markdown_table(header, rows), ""]


def _budget(x: float | None) -> str:
    return DASH if x is None else f"{x:g}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}%"
