"""`flexidit-trt serve`: an HTTP service on Ray Serve (the `serve` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import checkpoint_option, main, precision_option, workdir_option


@main.command()
@click.option(
    "--model", default=None, help="a model built with `flexidit-trt build`  [default: the embedded default]"
)
@checkpoint_option("weights to serve (engines built from other weights are refused)")
@workdir_option()
@click.option(
    "--backend", type=click.Choice(["auto", "trt", "aoti", "torch", "ort"]), default="auto", show_default=True
)
@precision_option(["bf16", "fp16", "fp32"], None, help="[default: bf16 on a GPU, fp32 on the CPU]")
@click.option(
    "--device", default=None, help="cpu: CPU replicas even where Ray sees GPUs  [default: a GPU each]"
)
@click.option("--compile", is_flag=True, help="torch backend: torch.compile the engines")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--replicas", type=click.IntRange(min=1), default=None, help="[default: the GPUs Ray sees, or 1]"
)
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="requests per batch"
)
@click.option("--batch-wait-ms", type=click.FloatRange(0, 10_000), default=20.0, show_default=True)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="requests waiting per replica",
)
@click.option(
    "--address", default=None, help="join this Ray cluster (e.g. 10.0.0.1:6379)  [default: start one]"
)
def serve(**options) -> None:
    """Serve POST /generate and GET /healthz over HTTP until SIGTERM or Ctrl-C."""
    from ..serve import ServeOptions
    from ..serve.server import serve_until_stopped

    opts = ServeOptions(**{k: (Path(v) if k == "workdir" else v) for k, v in options.items()}).checked()
    serve_until_stopped(opts, say=click.echo)
