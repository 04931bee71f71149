"""Writing an evaluation: results.json, results.md (one row per run), a plot of quality against
compute, with several CFG scales a plot of the guidance sweep, and one sample grid per (series, scale,
budget). Every file is written atomically.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..artifacts import write_bytes_atomic, write_json_atomic
from ..plotting import pyplot
from .results import EvalReport, RunResult

PLOT_NAME = "quality_vs_compute.png"
SWEEP_PLOT_NAME = "guidance_sweep.png"


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> list[Path]:
    """All files of `report` into `out_dir`; returns their paths."""
    out = Path(out_dir)
    written = [
        write_json_atomic(out / "results.json", report_dict(report)),
        write_bytes_atomic(out / "results.md", markdown(report).encode()),
    ]
    written += [write_bytes_atomic(out / name, png) for name, png in plot_files(report.runs).items()]
    several = len(cfg_scales(report.runs)) > 1
    for (series, scale, budget, seed), (images, labels) in sorted(report.grids.items()):
        guidance = f"_cfg{scale:g}" if several else ""
        name = f"samples_{_slug(series)}{guidance}_b{budget:.2f}_s{seed}.png"
        written.append(write_bytes_atomic(out / name, grid_png(images, labels)))
    return written


def plot_files(runs: list[RunResult]) -> dict[str, bytes]:
    """The plots of `runs` by file name: quality against compute, and the guidance sweep when the runs
    have more than one CFG scale."""
    if not runs:
        return {}
    plots = {PLOT_NAME: plot_png(runs)}
    if len(cfg_scales(runs)) > 1:
        plots[SWEEP_PLOT_NAME] = sweep_png(runs)
    return plots


def cfg_scales(runs: list[RunResult]) -> list[float]:
    return sorted({r.cfg_scale for r in runs})


def report_dict(report: EvalReport) -> dict:
    return {
        "complete": report.complete,
        "meta": report.meta,
        "runs": [
            {
                **asdict(r),
                "fid_vs_full": relative_to_full(report.runs, r, "fid"),
                "classifier_fd_vs_full": relative_to_full(report.runs, r, "classifier_fd"),
            }
            for r in report.runs
        ],
        "seed_repeats": seed_repeats(report.runs),
    }


def full_run(
    runs: list[RunResult], run: RunResult, series: str | None = None, same_seed_only: bool = False
) -> RunResult | None:
    """The budget-1.0 run that `run` is set against: of its series (or `series`) and CFG scale; for a
    lower budget the one of its own seed where there is one (the same starting noise and labels, so the
    pair shares most of its sampling noise), else the first seed (same_seed_only: else None); for a
    budget-1.0 run the first seed (the seed spread). None without such a run."""
    full = [
        r for r in runs if (r.series, r.cfg_scale, r.budget) == (series or run.series, run.cfg_scale, 1.0)
    ]
    paired = [r for r in full if r.seed == run.seed and run.budget != 1.0]
    if paired:
        return paired[0]
    if same_seed_only or not full:
        return None
    return min(full, key=lambda r: r.seed)


def relative_to_full(
    runs: list[RunResult],
    run: RunResult,
    metric: str = "fid",
    series: str | None = None,
    same_seed_only: bool = False,
) -> float | None:
    """run's `metric` / that of its full_run (`series`, `same_seed_only` as there) - 1, or None without one."""
    full = full_run(runs, run, series, same_seed_only)
    base = None if full is None else getattr(full, metric)
    return getattr(run, metric) / base - 1.0 if base else None


def seed_repeats(runs: list[RunResult]) -> dict[str, dict]:
    """Per series and CFG scale with budget 1.0 under several seeds: both distances by seed and the
    spread of each (max - min)."""
    out = {}
    several = len(cfg_scales(runs)) > 1
    for series, scale in dict.fromkeys((r.series, r.cfg_scale) for r in runs):
        full = [r for r in runs if (r.series, r.cfg_scale, r.budget) == (series, scale, 1.0)]
        if len({r.seed for r in full}) < 2:
            continue
        rep: dict = {}
        for metric, prefix in (("fid", ""), ("classifier_fd", "classifier_fd_")):
            values = {r.seed: getattr(r, metric) for r in full}
            spread = max(values.values()) - min(values.values())
            mean = sum(values.values()) / len(values)
            rep[f"{metric}_by_seed"] = values
            rep[f"{prefix}spread"] = spread
            rep[f"{prefix}relative_spread"] = spread / mean if mean else None
        out[_curve_label(series, scale, several)] = rep
    return out


def _curve_label(series: str, scale: float, several_scales: bool) -> str:
    return f"{series}, CFG {scale:g}" if several_scales else series


def markdown(report: EvalReport) -> str:
    meta = report.meta
    options = meta.get("options", {})
    lines = [
        "# Sample quality against compute",
        "",
        f"{options.get('num_samples', '?')} samples per run, {options.get('steps', '?')} {options.get('sampler', '')} "
        f"steps; reference: {meta.get('reference', {}).get('count', '?')} Fashion-MNIST test images; "
        f"{meta.get('world_size', 1)} × {meta.get('device', '?')}. Classifier FD: the Fréchet distance on the "
        "penultimate features of the project's Fashion-MNIST classifier; vs 1.0: against budget 1.0 at the "
        "same CFG scale and seed (a budget-1.0 row, or a seed without a budget-1.0 run: the first seed).",
        "",
        "| series | CFG | budget | compute | plan | FID | vs 1.0 | classifier FD | vs 1.0 | KID ×10³ | precision "
        "| recall | class acc. | img/s/GPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.runs:
        rel = {m: _percent(relative_to_full(report.runs, r, m)) for m in ("fid", "classifier_fd")}
        seed = f" (seed {r.seed})" if r.seed != options.get("seed", r.seed) else ""
        lines.append(
            f"| {r.series}{seed} | {r.cfg_scale:g} | {r.budget:g} | {r.achieved_fraction:.3f} | "
            f"{_short_plan(r.plan)} | {r.fid:.2f} | {rel['fid']} | {r.classifier_fd:.2f} | "
            f"{rel['classifier_fd']} | {1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f} | {r.precision:.3f} | "
            f"{r.recall:.3f} | {100 * r.class_accuracy:.1f}% | {r.images_per_second:.1f} |"
        )
    for label, rep in seed_repeats(report.runs).items():
        parts = []
        for metric, name, prefix in (
            ("fid", "FID", ""),
            ("classifier_fd", "classifier FD", "classifier_fd_"),
        ):
            values = ", ".join(f"{v:.2f} (seed {s})" for s, v in rep[f"{metric}_by_seed"].items())
            spread = _percent(rep[f"{prefix}relative_spread"], ".1f")
            parts.append(f"{name} {values}, difference {rep[f'{prefix}spread']:.2f} ({spread} of their mean)")
        lines += [
            "",
            f"Seed repeat, {label} at budget 1.0: {'; '.join(parts)} — gaps below these are within "
            "sampling noise.",
        ]
    if not report.complete:
        lines += ["", "**Incomplete:** stopped at the deadline; rerun with the same resume folder to finish."]
    return "\n".join(lines) + "\n"


def _percent(fraction: float | None, fmt: str = "+.1f") -> str:
    return "" if fraction is None else f"{100 * fraction:{fmt}}%"


def _short_plan(plan: str) -> str:
    # "250 steps: p4×166 → p2×84, cfg, 49.8% of static (…)" → "p4×166 → p2×84"
    return plan.split(": ", 1)[-1].split(", ", 1)[0]


def plot_png(runs: list[RunResult]) -> bytes:
    """FID, classifier FD, KID, precision/recall and class accuracy against the achieved compute fraction,
    one line per series (and CFG scale, when several)."""
    plt = pyplot("eval")
    panels = [  # title, value, log axis when the values span more than 10x
        ("FID ↓", lambda r: r.fid, True),
        ("classifier FD ↓", lambda r: r.classifier_fd, True),
        ("KID ×10³ ↓", lambda r: 1e3 * r.kid, True),
        ("precision / recall ↑", None, False),
        ("class accuracy ↑", lambda r: 100 * r.class_accuracy, False),
    ]
    several = len(cfg_scales(runs)) > 1
    curves = list(dict.fromkeys((r.series, r.cfg_scale) for r in runs))
    crowded = len(curves) > 4
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), constrained_layout=True)
    for ax, (title, value, log_ok) in zip(axes, panels, strict=True):
        for i, (series, scale) in enumerate(curves):
            mine = [r for r in runs if (r.series, r.cfg_scale) == (series, scale)]
            first = _first_seed(mine)
            color, label = f"C{i % 10}", _curve_label(series, scale, several)
            if value is None:
                ax.plot(*_xy(first, lambda r: r.precision), "o-", color=color, label=f"{label} precision")
                ax.plot(*_xy(first, lambda r: r.recall), "s--", color=color, label=f"{label} recall")
            else:
                ax.plot(*_xy(first, value), "o-", color=color, label=label)
                repeats = [r for r in mine if r not in first]
                if repeats:
                    ax.plot(*_xy(repeats, value), "x", color=color, label=f"{label}, other seeds")
        if log_ok and wide_range([value(r) for r in runs]):
            ax.set_yscale("log")  # a diverged series (projection only: FID ~400) would flatten the rest
            title += " (log scale)"
        if crowded and value is None:
            title = "precision (o, solid) / recall (s, dashed) ↑"
        ax.set_title(title)
        ax.set_xlabel("compute (fraction of the static model)")
        ax.grid(alpha=0.3)
        if not crowded or ax is axes[0]:  # many curves: one legend of their colours
            ax.legend(fontsize=7)
    return _savefig(fig)


def sweep_png(runs: list[RunResult]) -> bytes:
    """The guidance sweep: FID and classifier FD against class agreement, one curve per (series, budget)
    through the CFG scales (first seed), each point labelled with its scale; every series on the same
    axes (weak-to-strong dashed beside CFG), a colour per budget."""
    plt = pyplot("eval")
    budgets = sorted({r.budget for r in runs}, reverse=True)
    series_names = list(dict.fromkeys(r.series for r in runs))
    styles = ["o-", "s--", "^:", "D-."]
    panels = [("FID ↓", lambda r: r.fid), ("classifier FD ↓", lambda r: r.classifier_fd)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.6), constrained_layout=True)
    for ax, (title, value) in zip(axes, panels, strict=True):
        for j, series in enumerate(series_names):
            for i, budget in enumerate(budgets):
                points = _first_seed_by_scale([r for r in runs if (r.series, r.budget) == (series, budget)])
                if not points:
                    continue
                xs, ys = [100 * r.class_accuracy for r in points], [value(r) for r in points]
                ax.plot(
                    xs, ys, styles[j % len(styles)], color=f"C{i % 10}", label=f"{series}, budget {budget:g}"
                )
                for r, x, y in zip(points, xs, ys, strict=True):
                    ax.annotate(
                        f"{r.cfg_scale:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                    )
        if wide_range([value(r) for r in runs]):
            ax.set_yscale("log")
            title += " (log scale)"
        ax.set_title(f"{title} against class agreement, labels: CFG scale")
        ax.set_xlabel("class agreement (%) ↑")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _savefig(fig)


def _savefig(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    pyplot("eval").close(fig)
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


def _first_seed_by_scale(runs: list[RunResult]) -> list[RunResult]:
    """One run per CFG scale (its first seed), in scale order."""
    best: dict[float, RunResult] = {}
    for r in runs:
        if r.cfg_scale not in best or r.seed < best[r.cfg_scale].seed:
            best[r.cfg_scale] = r
    return [best[c] for c in sorted(best)]


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
        rel = relative_to_full(report.runs, r, "fid")
        lines.append(
            f"{r.series:>16} cfg {r.cfg_scale:<4g} budget {r.budget:<5g} seed {r.seed:<3d} compute "
            f"{r.achieved_fraction:.3f}  FID {r.fid:8.3f}{'' if rel is None else f' ({100 * rel:+.1f}%)'}  "
            f"classifier FD {r.classifier_fd:8.3f}  KID {1e3 * r.kid:.2f}e-3  P {r.precision:.3f} "
            f"R {r.recall:.3f}  acc {100 * r.class_accuracy:.1f}%"
        )
    return lines
