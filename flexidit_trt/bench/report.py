"""`flexidit-trt bench report`: every results file merged into one markdown report and PNG plots.

    report = build_report("benchmarks/results")
    report.markdown_path     # benchmarks/results/REPORT.md
    report.json_path         # benchmarks/results/REPORT.json: {"projected": ...} (report_projected.py)
    report.plots             # latency-vs-budget-<machine>.png per machine, speedup-vs-reference.png

The newest file per (machine, backend) is taken (results.latest); the tables run across machines (GPU
SKUs) and backends. A backend that did not run shows its reason in place of numbers. Ratios (speedups)
are the ones each run measured within itself, never across runs. The last section and REPORT.json hold
the trajectories projected onto GPUs not measured (report_projected.py), labelled projected wherever
they appear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_path, write_bytes_atomic, write_json_atomic
from ..plotting import pyplot
from .measure import noisy_note
from .report_projected import REPORT_JSON, check_file, projected_json, projected_markdown
from .results import find_results, latest, read_results
from .tables import DASH, markdown_table

REPORT_NAME = "REPORT.md"
REPORT_KIND = "flexidit-trt/bench-report"  # REPORT.json's
BACKEND_ORDER = (
    "reference",
    "diffusers-compiled-fp16",
    "diffusers-compiled-bf16",
    "diffusers-fp16",
    "diffusers-bf16",
    "trt",
    "aoti",
    "torch-tuned",
    "torch-flash",
    "torch-fused",
    "torch-premod",
    "torch",
    "torch-eager",
    "ort",
)
PROFILE_NOTE = (
    "Eager launches, no CUDA graph, so every kernel is visible: the gap between device busy and wall time is "
    "the launch and host overhead that the graphs of the forwards table remove. Category columns: shares of "
    "the device time; limit: the largest part of the wall time."
)
TOP_IN_REPORT = 5  # of the 15 a results file keeps per profile
KERNEL_NAME_CHARS = 90


@dataclass
class Report:
    markdown: str
    markdown_path: Path
    plots: list[Path]
    files: list[Path]  # every results file read
    json_path: Path | None = None  # REPORT.json: {"projected": the projections and their check}


def build_report(results: str | Path, out: str | Path | None = None) -> Report:
    """Read every results file under `results`, write REPORT.md and the plots into `out` (default: the
    same folder). ManifestError names a file that is not a results file of this schema."""
    results = Path(results)
    files = find_results(results)
    if not files:
        raise FileNotFoundError(f"no results files under {results} (run `flexidit-trt bench` first)")
    docs = latest(read_results(f) for f in files)
    out = Path(out) if out is not None else results
    plots = [*_latency_plots(docs, out), *_speedup_plot(docs, out)]
    intro = [
        "# flexidit-trt bench results",
        "",
        f"Merged by `flexidit-trt bench report` from {len(files)} results file(s) under `{results}`: the newest "
        "run per machine and backend. Every number was measured in its run; ratios are taken within one run.",
        "",
    ]
    figures = [f"![{p.stem}]({p.name})" for p in plots]
    projected = projected_json(sorted(docs, key=_order), check_file(results))
    sections = [
        markdown(docs),
        *projected_markdown(projected),
        *(["## Plots", "", *figures, ""] if figures else []),
    ]
    text = "\n".join([*intro, *sections])
    path = write_bytes_atomic(out / REPORT_NAME, text.encode())
    json_path = write_json_atomic(
        out / REPORT_JSON, {"kind": REPORT_KIND, "schema": 1, "projected": projected}
    )
    return Report(text, path, plots, files, json_path)


def markdown(docs: Sequence[dict]) -> str:
    """The report's tables for these documents (also what `bench` prints at its end)."""
    docs = sorted(docs, key=_order)
    sections = [
        ("Machines", _machines(docs)),
        ("End to end: one trajectory per row", _trajectories(docs)),
        ("Forwards: each engine alone, against its floor", _forwards(docs)),
        ("Device memory: one shared graph pool against one pool per engine", _memory(docs)),
        ("Time budgets: weak steps chosen from the measured step latency", _time_plans(docs)),
        ("Profiles: each engine's forward under torch.profiler (eager, no CUDA graph)", _profiles(docs)),
        (f"Top {TOP_IN_REPORT} kernels of each profile (by device time)", _top_kernels(docs)),
    ]
    out = []
    for title, table in sections:
        if table:
            out += [f"## {title}", "", *table, ""]
    return "\n".join(out)


# -- tables --------------------------------------------------------------------------------------------------
def _machines(docs: Sequence[dict]) -> list[str]:
    seen: dict[str, dict] = {}
    for d in docs:
        seen.setdefault(d["machine"], d)
    rows = []
    for machine, d in seen.items():
        hw, gpu = d["hardware"], d["hardware"].get("gpu")
        gpu = gpu if isinstance(gpu, dict) else {}
        clocks = gpu.get("clocks") if isinstance(gpu.get("clocks"), dict) else {}
        peak, copy = hw.get("matmul_peak", {}), hw.get("copy_bandwidth", {})
        torch = hw.get("torch") if isinstance(hw.get("torch"), dict) else {}
        rows.append(
            [
                machine,
                gpu.get("name", hw["host"].get("processor", DASH) if hw.get("device") == "cpu" else DASH),
                _gib(gpu.get("memory_total_bytes")),
                gpu.get("driver", DASH),
                (hw.get("cuda") or {}).get("runtime", DASH),
                torch.get("version", DASH),
                f"{peak['per_s'] / 1e12:.3g} ({peak['what']})" if peak else DASH,
                f"{copy['per_s'] / 1e9:.3g}" if copy else DASH,
                f"{clocks['sm_mhz']} / {clocks['sm_max_mhz']}" if "sm_max_mhz" in clocks else DASH,
                _setup(d),
            ]
        )
    header = ["machine", "GPU", "memory", "driver", "CUDA", "torch", "matmul TFLOP/s", "copy GB/s",
              "SM MHz (max)", "model, precision, steps"]  # fmt: skip
    return markdown_table(header, rows)


def _rows(docs: Sequence[dict], cells: Callable[[dict], Iterable[Sequence[Any]]]) -> list[list[Any]]:
    """One table row per cell list `cells(doc)` yields, each led by its document's machine and backend."""
    return [[d["machine"], d["backend"], *row] for d in docs for row in cells(d)]


def _trajectories(docs: Sequence[dict]) -> list[str]:
    header = ["machine", "backend", "images", "budget", "weak steps", "wall s (± IQR)", "images/s", "first call s",
              "× static", "× reference", "× diffusers", "diffusers-compiled: backend, first call s",
              "loop over forwards", "peak memory MiB"]  # fmt: skip

    def cells(d: dict) -> Iterator[list[Any]]:
        if d["status"] != "ok":
            yield [f"{d['status']}: {d['reason']}", *[""] * (len(header) - 3)]  # after machine, backend
            return
        for t in d.get("trajectories", []):
            budget = t.get("budget")
            wall = f"{t['wall_s']:.3f} ± {t['wall']['iqr_ms'] / 1e3:.3f}"
            note = noisy_note(t["wall"])
            yield [t["images"], DASH if budget is None else f"{budget:g}", t.get("weak_steps", DASH),
                   wall + (f" ({note})" if note else ""), f"{t['images_per_s']:.2f}",
                   _seconds(t.get("cold_s")), _times(t.get("speedup_vs_static")),
                   _times(t.get("speedup_vs_reference")), _times(t.get("speedup_vs_diffusers")),
                   _peer_cold(t.get("diffusers")), _pct(t.get("loop_overhead_fraction")),
                   _mib(_peak_bytes(t.get("memory")))]  # fmt: skip

    return markdown_table(header, _rows(docs, cells))


def _forwards(docs: Sequence[dict]) -> list[str]:
    def cells(d: dict) -> Iterator[list[Any]]:
        for f in d.get("forwards", []):
            s, floor = f["stats"], f["floor"]
            yield [f["patch_size"], f["batch"], f"{s['median_ms']:.3f}", _pct(s.get("spread")),
                   f"{f['tflops']:.3g}", _pct(f["peak_fraction"]), f"{floor['floor_ms']:.3f} ({floor['bound']})",
                   _times(f["over_floor"])]  # fmt: skip

    header = ["machine", "backend", "patch", "batch", "median ms", "spread (IQR)", "TFLOP/s", "of peak",
              "floor ms", "× floor"]  # fmt: skip
    return markdown_table(header, _rows(docs, cells))


def _memory(docs: Sequence[dict]) -> list[str]:
    def cells(d: dict) -> Iterator[list[Any]]:
        m = d.get("memory")
        if not m:
            return
        if "not_measured" in m:
            yield [DASH, DASH, f"not measured: {m['not_measured']}", "", ""]
            return
        yield [m["images"], f"{m['budget']:g}", _mib(m["shared_pool_bytes"]), _mib(m["pool_per_engine_bytes"]),
               m["how"]]  # fmt: skip

    header = ["machine", "backend", "images", "budget", "shared pool MiB", "pool per engine MiB", "how"]
    return markdown_table(header, _rows(docs, cells))


def _time_plans(docs: Sequence[dict]) -> list[str]:
    def cells(d: dict) -> Iterator[list[Any]]:
        for t in d.get("time_plans", []):
            chosen = (
                f"unreachable: {t['unreachable']}"
                if "unreachable" in t
                else f"{t['weak_steps']}: {_fraction(t, 'measured_fraction', 'predicted_fraction')}"
            )
            macs_time = _fraction(t, "macs_plan_measured_fraction", "macs_plan_predicted_fraction")
            yield [t["images"], _pct(t["fraction"]), chosen, t["macs_plan_weak_steps"], macs_time]

    header = ["machine", "backend", "images", "time asked (of static)", "time planner: weak steps, time",
              "MACs planner: weak steps", "its time (of static)"]  # fmt: skip
    return markdown_table(header, _rows(docs, cells))


def _profiles(docs: Sequence[dict]) -> list[str]:
    from .profile import CATEGORIES, CATEGORY_TITLES

    blank = [""] * (len(CATEGORIES) + 1)

    def cells(d: dict) -> Iterator[list[Any]]:
        profiles = d.get("profiles")
        if isinstance(profiles, dict):
            yield [DASH, DASH, f"not profiled: {profiles['not_profiled']}", *blank]
            return
        for f in profiles or []:
            if "failed" in f:
                yield [f["patch_size"], f["batch"], f"failed: {f['failed']}", *blank]
                continue
            busy = f"{f['busy_us_per_forward']:.0f} / {f['wall_us_per_forward']:.0f} ({_pct(f['busy_fraction'])})"
            yield [f["patch_size"], f["batch"], f"{f['kernels_per_forward']:.0f}", busy,
                   *(_pct(f["by_category"][c]["share"]) for c in CATEGORIES), f["limit"]]  # fmt: skip

    header = ["machine", "backend", "patch", "batch", "kernels / forward", "device busy / wall µs",
              *(CATEGORY_TITLES[c] for c in CATEGORIES), "limit"]  # fmt: skip
    table = markdown_table(header, _rows(docs, cells))
    return [PROFILE_NOTE, "", *table] if table else []


def _top_kernels(docs: Sequence[dict]) -> list[str]:
    def cells(d: dict) -> Iterator[list[Any]]:
        profiles = d.get("profiles")
        for f in profiles if isinstance(profiles, list) else []:
            device_us = f.get("device_us_per_forward", 0.0) * f.get("runs", 0)
            for rank, k in enumerate(f.get("top", [])[:TOP_IN_REPORT], start=1):
                share = _pct(k["total_us"] / device_us if device_us > 0 else None)
                yield [f["patch_size"], f["batch"], rank, _code(k["name"]), k["category"],
                       f"{k['per_forward']:g}", f"{k['mean_us']:.1f}", share]  # fmt: skip

    header = ["machine", "backend", "patch", "batch", "#", "kernel", "category", "calls / forward", "mean µs",
              "of device time"]  # fmt: skip
    return markdown_table(header, _rows(docs, cells))


# -- plots ---------------------------------------------------------------------------------------------------
def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _latency_plots(docs: Sequence[dict], out: Path) -> list[Path]:
    """Per machine: wall time against budget, one line per backend and batch; the reference dashed."""
    plt = pyplot("bench")
    paths = []
    for machine in sorted({d["machine"] for d in docs}):
        mine = [d for d in docs if d["machine"] == machine and d["status"] == "ok"]
        images = sorted({t["images"] for d in mine for t in d.get("trajectories", [])})
        if not images:
            continue
        fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 4), squeeze=False)
        for ax, n in zip(axes[0], images, strict=True):
            for d in mine:
                runs = sorted(
                    (t for t in d["trajectories"] if t["images"] == n), key=lambda t: t.get("budget") or 0
                )
                if not runs:
                    continue
                if d["backend"] == "reference":
                    ax.axhline(runs[0]["wall_s"], color="black", linestyle="--", label="reference loop")
                elif runs[0].get("budget") is None:  # a diffusers pipeline: the static model only
                    ax.axhline(runs[0]["wall_s"], linestyle=":", label=d["backend"])
                else:
                    ax.plot(
                        [t["budget"] for t in runs],
                        [t["wall_s"] for t in runs],
                        marker="o",
                        label=d["backend"],
                    )
            ax.set(
                title=f"{machine}: {n} image(s)", xlabel="budget (fraction of static MACs)", ylabel="wall s"
            )
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"latency-vs-budget-{machine}.png"))
        plt.close(fig)
    return paths


def _speedup_plot(docs: Sequence[dict], out: Path) -> list[Path]:
    """Per machine: speedup over the reference loop against budget, one line per backend and batch."""
    plt = pyplot("bench")
    machines = sorted(
        {d["machine"] for d in docs for t in d.get("trajectories", []) if t.get("speedup_vs_reference")}
    )
    if not machines:
        return []
    fig, axes = plt.subplots(1, len(machines), figsize=(5 * len(machines), 4), squeeze=False)
    for ax, machine in zip(axes[0], machines, strict=True):
        for d in docs:
            if d["machine"] != machine or d["backend"] == "reference":
                continue
            for n in sorted({t["images"] for t in d.get("trajectories", [])}):
                runs = sorted((t for t in d["trajectories"] if t["images"] == n and t.get("speedup_vs_reference")
                               and t.get("budget") is not None),
                              key=lambda t: t["budget"])  # fmt: skip
                if runs:
                    ax.plot([t["budget"] for t in runs], [t["speedup_vs_reference"] for t in runs], marker="o",
                            label=f"{d['backend']}, {n} image(s)")  # fmt: skip
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set(
            title=machine,
            xlabel="budget (fraction of static MACs)",
            ylabel="× faster than the reference loop",
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = _save(fig, out / "speedup-vs-reference.png")
    plt.close(fig)
    return [path]


# -- formatting ----------------------------------------------------------------------------------------------
def _order(d: dict) -> tuple:
    rank = BACKEND_ORDER.index(d["backend"]) if d["backend"] in BACKEND_ORDER else len(BACKEND_ORDER)
    return (d["machine"], rank, d["backend"])


def _setup(d: dict) -> str:
    model, opts = d.get("model") or {}, d["options"]
    precision = model.get("precision", opts.get("precision") or DASH)
    return f"{opts.get('model', DASH)}, {precision}, {opts.get('steps')} steps"


def _peak_bytes(memory: Any) -> int | None:
    if not isinstance(memory, dict):
        return None
    return memory.get("peak_device_bytes") or memory.get("host_peak_rss_bytes")


def _code(name: str) -> str:
    """A kernel name as a table cell: shortened (templates run to kilobytes), in a code span, pipes escaped."""
    if len(name) > KERNEL_NAME_CHARS:
        name = name[: KERNEL_NAME_CHARS - 1] + "…"
    return "`" + name.replace("`", "'").replace("|", "\\|") + "`"


def _fraction(entry: dict, measured: str, predicted: str) -> str:
    return f"{_pct(entry[measured])} (predicted {_pct(entry[predicted])})"


def _seconds(x: float | None) -> str:
    return DASH if x is None else f"{x:.1f}"


def _peer_cold(peer: dict | None) -> str:
    """The diffusers-compiled run a speedup is taken against, and its first call (compile included)."""
    return DASH if not peer else f"{peer['backend']}, {peer['cold_s']:.1f}"


def _times(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}×"


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def _mib(n: int | None) -> str:
    return DASH if n is None else f"{n / 2**20:.0f}"


def _gib(n: int | None) -> str:
    return DASH if n is None else f"{n / 2**30:.0f} GiB"
