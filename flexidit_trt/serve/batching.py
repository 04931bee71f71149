"""The batching core, without Ray: requests that share a schedule run as one sampling call, each with its
own noise stream, so every request gets the samples `run` gives it alone; the answers are split back.

    outcomes = run_batch(pipe, [GenerateRequest(...), ...])   # one Outcome per request, in order

A failure of one call (the engine, the device) fails that call's requests with 500 and a message; the
others, and the pipeline, go on."""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..engines.backend import RunOptionError
from ..runtime import Pipeline
from ..runtime.options import NoiseStream
from ..runtime.outputs import latents_as_images, to_images
from ..runtime.record import to_plain
from .options import GenerateRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """One request's answer: an HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


def run_batch(pipe: Pipeline, requests: list[GenerateRequest]) -> list[Outcome]:
    """Answer requests gathered together: one sampling call per schedule, each call of at most the
    pipeline's max batch images; the outcomes in the requests' order."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    for group in plan_calls(requests, pipe.max_batch):
        for index, outcome in zip(group, run_call(pipe, [requests[i] for i in group]), strict=True):
            outcomes[index] = outcome
    return outcomes  # type: ignore[return-value]


def plan_calls(requests: list[GenerateRequest], max_images: int) -> list[list[int]]:
    """Indices of the requests each sampling call runs: same schedule key, in arrival order, a call
    closed when the next request would take it past max_images (a larger request runs alone and the
    pipeline splits it)."""
    calls: list[list[int]] = []
    open_call: dict[tuple, tuple[list[int], int]] = {}
    for i, r in enumerate(requests):
        key = r.schedule_key
        members, images = open_call.get(key, ([], 0))
        if members and images + len(r.labels) > max_images:
            members, images = [], 0
        if not members:
            calls.append(members)
        members.append(i)
        open_call[key] = (members, images + len(r.labels))
    return calls


def run_call(pipe: Pipeline, requests: list[GenerateRequest]) -> list[Outcome]:
    """One sampling call for requests of one schedule."""
    start = time.time()
    labels = [label for r in requests for label in r.labels]
    noise = [NoiseStream(r.sampling.seed, len(r.labels)) for r in requests]
    try:
        result = pipe.sample(labels, requests[0].sampling, noise=noise)
    except RunOptionError as err:  # a schedule this pipeline cannot run (the ingress checks the rest)
        return [Outcome(422, {"error": f"request: {err}"})] * len(requests)
    except Exception as err:  # noqa: BLE001 - the replica must keep serving whatever the engine raised
        log.exception("a sampling call of %d request(s) failed", len(requests))
        line = str(err).splitlines()[0] if str(err) else type(err).__name__
        return [Outcome(500, {"error": f"engine: the sampling call failed: {line}"})] * len(requests)
    compute_ms = 1e3 * (time.time() - start)
    record = result.run_record
    batch = {"requests": len(requests), "images": len(labels)}
    outcomes, first = [], 0
    for r in requests:
        samples = result.samples[first : first + len(r.labels)]
        body = {
            "images": [png_base64(image) for image in _images(samples, pipe.spec.is_latent)],
            "record": {
                "model": pipe.spec.name,
                "backend": record.backend.name,
                "device": record.backend.device,
                "labels": list(r.labels),
                "options": {name: getattr(r.sampling, name) for name in r.sampling.__dataclass_fields__},
                "achieved_fraction": record.plan.achieved_fraction,
                "schedule": record.plan.summary,
                "plan": to_plain(record.plan),
                "batch": {**batch, "first_image": first},
                "queue_ms": 1e3 * (start - r.received) if r.received else None,
                "compute_ms": compute_ms,
            },
        }
        if r.format == "npy":
            body["npy"] = npy_base64(samples)
        outcomes.append(Outcome(200, body))
        first += len(r.labels)
    return outcomes


def _images(samples: np.ndarray, is_latent: bool) -> np.ndarray:
    return latents_as_images(samples) if is_latent else to_images(samples)


def png_base64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def npy_base64(samples: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(samples, dtype=np.float32))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_npy(text: str) -> np.ndarray:
    """The samples of a `"format": "npy"` answer."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)
