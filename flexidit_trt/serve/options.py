"""What the server is asked: its own options (`ServeOptions`, checked once where `serve` starts) and one
`POST /generate` body (`parse_request`, checked once where it enters the ingress).

A bad request is a `RequestError`: one line that starts with the field it names, answered with a 4xx."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

from ..diffusion import plan
from ..errors import UsageError
from ..runtime import SamplingOptions
from ..runtime.run import RunOptions

MAX_LABELS = 64  # images one request may ask for: the engines' default max batch
FORMATS = ("png", "npy")
PIPELINE_FIELDS = ("model", "checkpoint", "workdir", "backend", "precision", "device", "compile")
SAMPLING_FIELDS = ("budget", "time_budget", "steps", "sampler", "guidance", "cfg_scale", "seed")


class ServeOptionError(UsageError):
    """A `serve` option no server can run with."""


class RequestError(UsageError):
    """A request the caller must change; `status` is the HTTP status it gets (400: malformed, 422: a
    well-formed value out of range)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeOptions:
    """model/checkpoint/workdir/backend/precision/device/compile: as `run` takes them (one pipeline per
    replica). replicas None: the GPUs Ray sees, or 1 without any; max_batch: requests one batch may
    gather (their images are split into batches of at most the pipeline's max batch); max_queue:
    requests waiting per replica before 503; address: an existing Ray cluster to join."""

    model: str | None = None
    checkpoint: Path | None = None
    workdir: Path = Path(".")
    backend: str = "auto"
    precision: str | None = None
    device: str | None = None
    compile: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int | None = None
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    max_queue: int = 32
    address: str | None = None

    def checked(self) -> ServeOptions:
        for name in ("max_batch", "max_queue"):
            if _not_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ServeOptionError(
                    f"--{name.replace('_', '-')} must be a positive int, got {getattr(self, name)!r}"
                )
        if self.replicas is not None and (_not_int(self.replicas) or self.replicas < 1):
            raise ServeOptionError(f"--replicas must be a positive int, got {self.replicas!r}")
        if _not_int(self.port) or not 0 < self.port < 65536:
            raise ServeOptionError(f"--port must be in 1..65535, got {self.port!r}")
        if not isinstance(self.batch_wait_ms, Real) or not 0 <= self.batch_wait_ms <= 10_000:
            raise ServeOptionError(f"--batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms!r}")
        return self

    def run_options(self) -> RunOptions:
        """The options a replica opens its pipeline with, as `run` would."""
        return RunOptions(**{name: getattr(self, name) for name in PIPELINE_FIELDS})


@dataclass(frozen=True)
class ModelFacts:
    """What the ingress checks a request against, as the replicas' pipeline reports it."""

    name: str
    num_classes: int
    macs_by_patch: dict[int, float]


@dataclass(frozen=True)
class GenerateRequest:
    labels: tuple[int, ...]
    sampling: SamplingOptions  # checked
    format: str = "png"
    received: float = field(default=0.0, compare=False)  # time.time() at the ingress

    @property
    def schedule_key(self) -> tuple:
        """Requests with equal keys run the same schedule, so they can share a batch (the seed is per
        request: each has its own noise stream)."""
        s = self.sampling
        return (s.budget, s.time_budget, s.steps, s.sampler, s.guidance, s.cfg_scale)


def parse_request(body: bytes, facts: ModelFacts, received: float = 0.0) -> GenerateRequest:
    """A `POST /generate` body checked against the model; RequestError naming the first bad field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"body: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise RequestError(f"body: a JSON object expected, got {type(data).__name__}")
    unknown = sorted(set(data) - {"labels", "format", *SAMPLING_FIELDS})
    if unknown:
        raise RequestError(
            f"{unknown[0]}: unknown field; allowed: labels, format, {', '.join(SAMPLING_FIELDS)}"
        )
    labels = _labels(data.get("labels"), facts.num_classes)
    fmt = data.get("format", "png")
    if fmt not in FORMATS:
        raise RequestError(f"format: one of {', '.join(FORMATS)}, got {fmt!r}")
    defaults = SamplingOptions()
    values = {name: data.get(name, getattr(defaults, name)) for name in SAMPLING_FIELDS}
    _types(values)
    try:
        sampling = SamplingOptions(**values).checked()
        budget = 1.0 if sampling.budget is None else sampling.budget
        plan(budget, len(sampling.make_sampler()), facts.macs_by_patch, sampling.guidance)
    except (UsageError, ValueError) as err:
        raise RequestError(f"{_field_of(str(err))}: {err}", status=422) from None
    return GenerateRequest(labels, sampling, fmt, received)


def _labels(value: object, num_classes: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise RequestError(f"labels: a list of class labels expected, got {json.dumps(value)}")
    if not value:
        raise RequestError("labels: empty; give at least one class label")
    if len(value) > MAX_LABELS:
        raise RequestError(f"labels: at most {MAX_LABELS} per request, got {len(value)}", status=422)
    for v in value:
        if _not_int(v):
            raise RequestError(f"labels: class labels are integers, got {json.dumps(v)}")
        if not 0 <= v < num_classes:
            raise RequestError(
                f"labels: unknown label {v}; the model's classes are 0..{num_classes - 1}", 422
            )
    return tuple(int(v) for v in value)


def _types(values: dict) -> None:
    """JSON types first, so the range checks below see the types they expect."""
    want = {
        "budget": (Real, True),
        "time_budget": (Real, True),
        "steps": (Integral, False),
        "sampler": (str, False),
        "guidance": (str, False),
        "cfg_scale": (Real, False),
        "seed": (Integral, False),
    }
    for name, (kind, nullable) in want.items():
        v = values[name]
        if (v is None and nullable) or (isinstance(v, kind) and not isinstance(v, bool)):
            continue
        word = {Real: "a number", Integral: "an integer", str: "a string"}[kind]
        raise RequestError(f"{name}: {word} expected, got {json.dumps(v)}")


def _field_of(message: str) -> str:
    """The field a sampling option's message is about (the runtime's messages name it in words)."""
    for name, words in (
        ("budget", ("not both",)),
        ("time_budget", ("time budget",)),
        ("budget", ("budget",)),  # before guidance: a budget's message names the guidance it assumed
        ("seed", ("seed",)),
        ("guidance", ("guidance", "null class")),
        ("sampler", ("sampler",)),
        ("steps", ("step",)),
    ):
        if any(w in message for w in words):
            return name
    return "body"


def _not_int(v: object) -> bool:
    return isinstance(v, bool) or not isinstance(v, Integral)
