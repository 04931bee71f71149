"""Writing an evaluation: results.json, results.md (one row per run), a plot of quality against
compute, and one sample grid per (series, budget). Every file is written atomically.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..artifacts import write_bytes_atomic, write_json_atomic
from .results import EvalReport, RunResult

PLOT_NAME = "quality_vs_compute.png"


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> list[Path]:
    """All files of `report` into `out_dir`; returns their paths."""
    out = Path(out_dir)
    written = [
        write_json_atomic(out / "results.json", report_dict(report)),
        write_bytes_atomic(out / "results.md", markdown(report).encode()),
    ]
    if report.runs:
        written.append(write_bytes_atomic(out / PLOT_NAME, plot_png(report.runs)))
    for (series, budget, seed), (images, labels) in sorted(report.grids.items()):
        name = f"samples_{_slug(series)}_b{budget:.2f}_s{seed}.png"
        written.append(write_bytes_atomic(out / name, grid_png(images, labels)))
    return written


def report_dict(report: EvalReport) -> dict:
    return {
        "complete": report.complete,
        "meta": report.meta,
        "runs": [{**asdict(r), "fid_vs_full": relative_fid(report.runs, r)} for r in report.runs],
        "seed_repeats": seed_repeats(report.runs),
    }


def relative_fid(runs: list[RunResult], run: RunResult) -> float | None:
    """run.fid / the same series' budget-1.0 FID (its first seed) - 1, or None without such a run."""
    full = [r for r in runs if r.series == run.series and r.budget == 1.0]
    if not full:
        return None
    base = min(full, key=lambda r: r.seed).fid
    return run.fid / base - 1.0


def seed_repeats(runs: list[RunResult]) -> dict[str, dict]:
    """Per series with budget 1.0 under several seeds: the FIDs and their spread (max - min)."""
    out = {}
    for series in dict.fromkeys(r.series for r in runs):
        fids = {r.seed: r.fid for r in runs if r.series == series and r.budget == 1.0}
        if len(fids) > 1:
            spread = max(fids.values()) - min(fids.values())
            mean = sum(fids.values()) / len(fids)
            out[series] = {"fid_by_seed": fids, "spread": spread, "relative_spread": spread / mean}
    return out


def markdown(report: EvalReport) -> str:
    meta = report.meta
    options = meta.get("options", {})
    lines = [
        "# Sample quality against compute",
        "",
        f"{options.get('num_samples', '?')} samples per run, {options.get('steps', '?')} {options.get('sampler', '')} "
        f"steps; reference: {meta.get('reference', {}).get('count', '?')} Fashion-MNIST test images; "
        f"{meta.get('world_size', 1)} × {meta.get('device', '?')}.",
        "",
        "| series | budget | compute | plan | FID | vs 1.0 | KID ×10³ | precision | recall | class acc. | img/s/GPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.runs:
        rel = relative_fid(report.runs, r)
        seed = f" (seed {r.seed})" if r.seed != options.get("seed", r.seed) else ""
        lines.append(
            f"| {r.series}{seed} | {r.budget:g} | {r.achieved_fraction:.3f} | {_short_plan(r.plan)} | {r.fid:.2f} | "
            f"{'' if rel is None else f'{100 * rel:+.1f}%'} | {1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f} | "
            f"{r.precision:.3f} | {r.recall:.3f} | {100 * r.class_accuracy:.1f}% | {r.images_per_second:.1f} |"
        )
    for series, rep in seed_repeats(report.runs).items():
        fids = ", ".join(f"{f:.2f} (seed {s})" for s, f in rep["fid_by_seed"].items())
        lines += [
            "",
            f"Seed repeat, {series} at budget 1.0: FID {fids}; difference {rep['spread']:.2f} "
            f"({100 * rep['relative_spread']:.1f}% of their mean) — gaps below this are within sampling noise.",
        ]
    if not report.complete:
        lines += ["", "**Incomplete:** stopped at the deadline; rerun with the same resume folder to finish."]
    return "\n".join(lines) + "\n"


def _short_plan(plan: str) -> str:
    # "250 steps: p4×166 → p2×84, cfg, 49.8% of static (…)" → "p4×166 → p2×84"
    return plan.split(": ", 1)[-1].split(", ", 1)[0]


def plot_png(runs: list[RunResult]) -> bytes:
    """FID, KID, precision/recall and class accuracy against the achieved compute fraction, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [  # title, value, log axis when the values span more than 10x
        ("FID ↓", lambda r: r.fid, True),
        ("KID ×10³ ↓", lambda r: 1e3 * r.kid, True),
        ("precision / recall ↑", None, False),
        ("class accuracy ↑", lambda r: 100 * r.class_accuracy, False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), constrained_layout=True)
    for ax, (title, value, log_ok) in zip(axes, panels, strict=True):
        for i, series in enumerate(dict.fromkeys(r.series for r in runs)):
            first = _first_seed(r for r in runs if r.series == series)
            color = f"C{i}"
            if value is None:
                ax.plot(*_xy(first, lambda r: r.precision), "o-", color=color, label=f"{series} precision")
                ax.plot(*_xy(first, lambda r: r.recall), "s--", color=color, label=f"{series} recall")
            else:
                ax.plot(*_xy(first, value), "o-", color=color, label=series)
                repeats = [r for r in runs if r.series == series and r not in first]
                if repeats:
                    ax.plot(*_xy(repeats, value), "x", color=color, label=f"{series}, other seeds")
        if log_ok and wide_range([value(r) for r in runs]):
            ax.set_yscale("log")  # a diverged series (projection only: FID ~400) would flatten the rest
            title += " (log scale)"
        ax.set_title(title)
        ax.set_xlabel("compute (fraction of the static model)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def wide_range(values: list[float], ratio: float = 10.0) -> bool:
    """Whether positive values span more than `ratio` (then a panel reads better on a log axis)."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) > ratio * min(positive)


def _first_seed(runs) -> list[RunResult]:
    best: dict[float, RunResult] = {}
    for r in runs:
        if r.budget not in best or r.seed < best[r.budget].seed:
            best[r.budget] = r
    return sorted(best.values(), key=lambda r: r.achieved_fraction)


def _xy(runs: list[RunResult], value) -> tuple[list[float], list[float]]:
    return [r.achieved_fraction for r in runs], [value(r) for r in runs]


def grid_png(images: np.ndarray, labels: np.ndarray, scale: int = 3) -> bytes:
    """uint8 [N, H, W] images as a PNG: one row per class (in label order), 2 px gaps, upscaled."""
    return _png(_grid(images, labels, scale))


def sheet_png(rows: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]], scale: int = 2) -> bytes:
    """Rows of grids (e.g. a row per series, a grid per budget): each row under its title, each grid
    under its own."""
    from PIL import Image, ImageDraw

    laid = [
        (name, [(title, _grid(images, labels, scale)) for title, images, labels in row]) for name, row in rows
    ]
    line, gap = 13, 8
    widths = [sum(g.width for _, g in row) + gap * (len(row) - 1) for _, row in laid]
    heights = [2 * line + max(g.height for _, g in row) for _, row in laid]
    sheet = Image.new("L", (max(widths), sum(heights) + gap * (len(laid) - 1)), 255)
    draw, y = ImageDraw.Draw(sheet), 0
    for (name, row), height in zip(laid, heights, strict=True):
        draw.text((2, y + 1), name, fill=0)
        x = 0
        for title, grid in row:
            draw.text((x + 2, y + line + 1), title, fill=0)
            sheet.paste(grid, (x, y + 2 * line))
            x += grid.width + gap
        y += height + gap
    return _png(sheet)


def _grid(images: np.ndarray, labels: np.ndarray, scale: int):
    from PIL import Image

    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
    classes = sorted(set(int(k) for k in labels))
    rows = [[img for img, k in zip(images, labels, strict=True) if k == c] for c in classes]
    cols = max(len(r) for r in rows)
    h, w, gap = images.shape[1], images.shape[2], 2
    canvas = np.full((len(rows) * (h + gap) + gap, cols * (w + gap) + gap), 128, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            canvas[y : y + h, x : x + w] = img
    return Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)


def _png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in text).strip("-") or "run"


def fmt_summary(report: EvalReport) -> list[str]:
    """Short lines for a terminal: one per run."""
    lines = []
    for r in report.runs:
        rel = relative_fid(report.runs, r)
        lines.append(
            f"{r.series:>16} budget {r.budget:<5g} seed {r.seed:<3d} compute {r.achieved_fraction:.3f}  "
            f"FID {r.fid:8.3f}{'' if rel is None else f' ({100 * rel:+.1f}%)'}  KID {1e3 * r.kid:.2f}e-3  "
            f"P {r.precision:.3f} R {r.recall:.3f}  acc {100 * r.class_accuracy:.1f}%"
        )
    return lines
