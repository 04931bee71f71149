"""`flexidit-trt bench` (measure every backend, one results file each) and `flexidit-trt bench report`
(merge every results file into REPORT.md and plots)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import FiniteFloat, main, path_option, sizes_option
from .eval import parse_budgets

DEFAULT_RESULTS = Path("benchmarks/results")


def parse_backends(ctx, param, value: str) -> tuple[str, ...]:
    """click callback: "torch,ort" → ("torch", "ort"), each one of the bench's backends."""
    from ..bench.backends import BACKEND_GROUPS, BACKENDS

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    allowed = (*BACKENDS, *BACKEND_GROUPS)
    if not names or any(n not in allowed for n in names):
        raise click.BadParameter(f"expected some of {', '.join(allowed)} (comma-separated), got {value!r}")
    return names


def parse_overrides(ctx, param, values: tuple[str, ...]) -> dict:
    """click callback: ("depth=2", "hidden_size=64") → {"depth": 2, "hidden_size": 64}."""
    import json

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise click.BadParameter(f"expected KEY=VALUE (a config field, e.g. depth=2), got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            raise click.BadParameter(
                f"{item!r}: the value must be a number, true/false or a JSON list"
            ) from None
    return out


@main.group(invoke_without_command=True)
@click.option(
    "--model", "model", default="dit_xl", show_default=True, help="dit_s, dit_b, dit_l, dit_xl, dit_fmnist"
)
@click.option(
    "--backends",
    callback=parse_backends,
    default="torch-eager,torch,torch-premod,torch-fused,torch-flash,ort,trt,aoti",
    show_default=True,
    help="run in this order (each file is written as its backend finishes); torch: torch.compile, "
    "torch-premod: the same with the adaLN modulation of every step computed ahead per chunk, "
    "torch-fused: torch-premod with each MLP's fc1 + GELU as one GEMM (a cuBLASLt epilogue; CUDA only), "
    "torch-flash: torch-fused with flash attention first in engines of ≤ 64 tokens (CUDA only), "
    "torch-tuned: torch-flash with those engines compiled by inductor's max-autotune (minutes more; "
    "measured slower on an H200, so only when named), "
    "torch-fp8: torch-flash with the block GEMMs in FP8 in calls of >= 16,384 rows (bf16/fp16; only when named), "
    "torch-eager: eager kernels (all in CUDA graphs on a GPU); "
    "diffusers / diffusers-compiled: diffusers' DiTPipeline on the same weights, eager / transformer under "
    'torch.compile(mode="reduce-overhead"), each at fp16 and bf16 (or name one: diffusers-compiled-bf16; '
    "needs the bench extra; measured first, every trajectory's speedup_vs_diffusers is against the faster "
    "compiled one); unavailable ones are recorded with the reason",
)
@sizes_option("--batch-sizes", "1,8", "images per batch")
@click.option(
    "--budgets",
    callback=parse_budgets,
    default="1.0,0.5",
    show_default=True,
    help="1.0 (the static model) always runs",
)
@click.option("--steps", type=click.IntRange(min=1), default=250, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default=None,
    help="[default: bf16 on a GPU, fp32 on the CPU]",
)
@click.option("--sampler", type=click.Choice(["ddpm", "ddim", "flow"]), default="ddpm", show_default=True)
@click.option(
    "--guidance", type=click.Choice(["cfg", "weak-to-strong", "none"]), default="cfg", show_default=True
)
@click.option("--cfg-scale", type=FiniteFloat(), default=4.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:N  [default: the first GPU, else cpu]")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="where `flexidit-trt build` put the engines (trt, aoti, ort); ort's graphs are exported here when "
    "missing",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RESULTS, show_default=True
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="[default: seeded random weights, as `build` uses]",
)
@click.option("--image-size", type=int, default=None, help="pixels  [default: 256, or the checkpoint's]")
@click.option(
    "--override",
    "overrides",
    multiple=True,
    callback=parse_overrides,
    help="config field for random weights, e.g. --override depth=2 (repeatable)",
)
@click.option(
    "--reference/--no-reference", default=True, show_default=True, help="time the reference DiT loop too"
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="timed trajectories each"
)
@click.option(
    "--forward-runs", type=click.IntRange(min=20), default=30, show_default=True, help="timed forwards each"
)
@click.option(
    "--warmup", type=click.IntRange(min=1), default=5, show_default=True, help="untimed forwards first"
)
@click.option(
    "--profile/--no-profile",
    default=False,
    show_default=True,
    help="also run each engine's forward at each batch size under torch.profiler, eagerly (no CUDA graph, "
    "so the kernels are visible): kernels per forward, device busy vs wall, time by kernel category, top "
    "kernels and the limit; stored under 'profiles' (the torch backends and aoti)",
)
@click.pass_context
def bench(ctx: click.Context, forward_runs: int, warmup: int, **options) -> None:
    """Latency of each backend per patch size, batch and budget, against the floor and the reference loop.
    Writes <out>/<gpu>/<date>-<backend>.json; `flexidit-trt bench report` merges them."""
    if ctx.invoked_subcommand is not None:
        given = [p.name for p in ctx.command.params if ctx.get_parameter_source(p.name).name == "COMMANDLINE"]
        if given:
            raise click.UsageError(
                f"options {', '.join(given)} belong to the measurement, not to `bench report`"
            )
        return
    from ..bench import BenchOptions, run_bench
    from ..bench.measure import TimingOptions
    from ..bench.report import markdown

    opts = BenchOptions(**options, timing=TimingOptions(runs=forward_runs, warmup=warmup))
    result = run_bench(opts)
    click.echo(markdown(result.docs))
    for path in result.paths:
        click.echo(f"wrote {path}")
    if result.failed:
        names = ", ".join(d["backend"] for d in result.failed)
        raise click.ClickException(f"backend(s) failed: {names} (their results files say why)")


@bench.command("report")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_RESULTS,
    show_default=True,
    help="the folder `bench` wrote into",
)
@path_option("--out", "[default: --results]", file_okay=False)
def report(results: Path, out: Path | None) -> None:
    """Merge every results file into one markdown report (REPORT.md) and PNG plots, with each profiled
    backend's trajectories projected onto other GPUs (labelled projected; also in REPORT.json)."""
    from ..bench.report import build_report

    try:
        made = build_report(results, out)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    click.echo(made.markdown)
    click.echo(f"wrote {made.markdown_path}, {made.json_path}" + "".join(f", {p}" for p in made.plots))
