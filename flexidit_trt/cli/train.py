"""`flexidit-trt train`, `flexidit-trt flexify` and `flexidit-trt train-classifier`.

Each option is named as the field of the library's options object it sets (TrainOptions, FlexifyOptions,
ClassifierOptions), so a command is: parse, build the options, call, print.

Exit codes: 2 for bad usage (options out of range, a run folder that needs --resume, patch sizes the
checkpoint cannot take: click.UsageError from the library's TrainError), 1 for a failure of the work
(missing or damaged Fashion-MNIST files, an unreadable checkpoint: click.ClickException).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from .common import FiniteFloat, main, path_option, sizes_option
from .eval import parse_budgets

DIR = click.Path(file_okay=False, path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)


@contextmanager
def _errors():
    """A missing file the library did not name in its own error: one line, exit 1 (the library's
    errors are mapped for every command in `common`)."""
    try:
        yield
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None


def _options(kwargs: dict) -> dict:
    """click's parameters → options-object fields (--quiet is the inverse of `progress`)."""
    kwargs = dict(kwargs)
    kwargs["progress"] = not kwargs.pop("quiet")
    return kwargs


def _common(fn):
    """Options every training command shares (applied bottom-up, so listed in reverse)."""
    fn = click.option("--quiet", is_flag=True, help="no progress bar")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
    fn = click.option("--device", default=None, help="cpu, cuda, cuda:N  [default: cuda if available]")(fn)
    return click.option(
        "--data",
        type=DIR,
        default=None,
        help="folder with the four Fashion-MNIST IDX .gz files  [default: shared/data/fashion-mnist "
        "beside the checkout, then /usr/share/datasets/fashion-mnist]",
    )(fn)


@main.command()
@click.option("--out", type=DIR, required=True, help="run folder: state.pt, base.safetensors, losses.json")
@click.option("--config", default="dit_fmnist", show_default=True, help="named model config")
@click.option("--depth", type=int, default=None, help="override the config's depth")
@click.option("--hidden-size", type=int, default=None, help="override the config's width")
@click.option("--num-heads", type=int, default=None, help="override the config's head count")
@click.option("--steps", type=int, default=20_000, show_default=True, help="total optimizer steps")
@click.option("--minutes", type=FiniteFloat(), default=None, help="stop after this much training time too")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=FiniteFloat(), default=3e-4, show_default=True)
@click.option(
    "--lr-decay",
    type=click.Choice(["none", "cosine"]),
    default="none",
    show_default=True,
    help="cosine: after the warm-up the lr falls to 0 at --steps",
)
@path_option(
    "--init",
    "start the model and its EMA from these base weights (a new optimizer; not with --resume)",
    exists=True,
    dir_okay=False,
)
@click.option("--ema-decay", type=FiniteFloat(), default=0.999, show_default=True)
@click.option("--subset", type=int, default=None, help="train on the first N images only")
@click.option("--checkpoint-every", type=int, default=1000, show_default=True, help="steps between them")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast on the GPU")
@click.option("--compile", is_flag=True, help="torch.compile the model")
@click.option("--resume", is_flag=True, help="continue the run in --out")
@_common
def train(**kwargs) -> None:
    """Train the base class-conditional DiT on Fashion-MNIST (resumable, EMA, periodic checkpoints)."""
    from ..training.train import TrainOptions
    from ..training.train import train as run

    with _errors():
        result = run(TrainOptions(**_options(kwargs)))
    last = result.losses[-1] if result.losses else None
    loss = f", loss {last['loss']:.4f} (mse {last['mse']:.4f}, vb {last['vb']:.4f})" if last else ""
    click.echo(f"{result.step} steps in {result.seconds:.0f} s (stopped by {result.stopped_by}){loss}")
    click.echo(f"EMA weights: {result.checkpoint}")


@main.command()
@click.option(
    "--checkpoint", type=click.Path(exists=True, path_type=Path), required=True, help="the base model"
)
@path_option(
    "--init",
    "go on from this flexible checkpoint of the same base (same sizes and rank; a new optimizer)",
    exists=True,
    dir_okay=False,
)
@sizes_option("--patch-sizes", "2,4", "base + weak sizes")
@click.option(
    "--lora-rank",
    type=int,
    default=None,
    help="0: embeddings only  [default: --init's rank, else 64, which made the embedded default]",
)
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option(
    "--minutes", type=FiniteFloat(), default=None, help="stop after this much distillation time too"
)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=FiniteFloat(), default=2e-3, show_default=True, help="peak; cosine decay to 0")
@click.option(
    "--timesteps",
    type=click.Choice(["weak", "all"]),
    default="weak",
    show_default=True,
    help="t where the planner runs the weak size (at --budgets), or all t",
)
@click.option(
    "--budgets",
    default="0.3,0.75",
    show_default=True,
    callback=parse_budgets,
    help="LO,HI: the planner budgets whose weak steps --timesteps weak distils",
)
@click.option(
    "--var-weight",
    type=FiniteFloat(),
    default=1.0,
    show_default=True,
    help="0..1: weight of the learned-variance half of the output in the loss (the weak steps' sampler hardly reads it)",
)
@click.option("--self-distill", is_flag=True, help="inputs from the base model's own samples (no dataset)")
@click.option("--out", type=FILE, default=None, help="[default: CHECKPOINT's name + .flex.safetensors]")
@click.option("--half", is_flag=True, help="store fp16 weights")
@click.option("--subset", type=int, default=None, help="distil on the first N training images only")
@click.option(
    "--eval-images", type=int, default=1000, show_default=True, help="held-out images for the error"
)
@_common
def flexify(**kwargs) -> None:
    """Distil the weak patch sizes of a base checkpoint into a flexible one (base weights frozen)."""
    from ..training.flexify import FlexifyOptions
    from ..training.flexify import flexify as run

    checkpoint = kwargs["checkpoint"]
    if kwargs["out"] is None:
        kwargs["out"] = checkpoint.with_name(f"{checkpoint.stem}.flex.safetensors")
    with _errors():
        result = run(FlexifyOptions(**_options(kwargs)))
    click.echo(f"{result.steps} distillation steps in {result.seconds:.0f} s")
    start = "--init" if kwargs["init"] is not None else "projection"
    for key, after in result.eval_after.items():
        before = result.eval_before[key]
        lo, hi = result.t_ranges[int(key[1:])]
        click.echo(
            f"{key}: held-out distillation MSE at t in [{lo}, {hi}]: {before['weak']:.5f} ({start}) → "
            f"{after['weak']:.5f}; at all t: {before['all']:.5f} → {after['all']:.5f}"
        )
        if "weak_eps" in after:
            click.echo(
                f"{key}: its noise-prediction half at t in [{lo}, {hi}]: {before['weak_eps']:.5f} → "
                f"{after['weak_eps']:.5f}"
            )
    click.echo(f"flexible checkpoint: {result.checkpoint}")


@main.command("train-classifier")
@click.option("--out", type=FILE, required=True, help=".safetensors file")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--width", type=int, default=32, show_default=True)
@_common
def train_classifier(**kwargs) -> None:
    """Train the Fashion-MNIST classifier behind eval's class-consistency score."""
    from ..training.classifier import ClassifierOptions
    from ..training.classifier import train_classifier as run

    with _errors():
        result = run(ClassifierOptions(**_options(kwargs)))
    click.echo(
        f"test accuracy {100 * result.test_accuracy:.2f}% on {result.test_images} images ({result.seconds:.0f} s)"
    )
    click.echo(f"weights: {result.path}")
