"""The batching core, without Ray: requests that share a schedule run as one sampling call, each with its
own noise stream, so every request gets the samples `run` gives it alone; the answers are split back.

    outcomes = run_batch(pipe, [GenerateRequest(...), ...])   # one Outcome per request, in order
    batcher = DrainBatcher(partial(run_batch, pipe), max_requests=16, wait_s=0.02)
    outcome = await batcher.submit(request)                    # in the replica's event loop

DrainBatcher gathers a batch when the pipeline is free, not while it is busy: everything that arrived
during a sampling call (up to max_requests) runs in the next one. Ray Serve's @serve.batch closes the next
batch while the current one runs (its wait starts at the first waiting request), which on a GPU gave
batches of 1-2 requests under any load (benchmarks/NOTES.md, 2026-12-03).

A failure of one call (the engine, the device) fails that call's requests with 500 and a message; the
others, and the pipeline, go on."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import Callable
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


class DrainBatcher:
    """One worker per replica: it takes the first waiting request, waits up to wait_s for more unless
    max_requests already wait, runs them as one batch in a thread (the event loop keeps accepting), and
    answers each request's future. `run` must return one Outcome per request, in order."""

    def __init__(
        self, run: Callable[[list[GenerateRequest]], list[Outcome]], max_requests: int, wait_s: float
    ) -> None:
        self.run, self.max_requests, self.wait_s = run, max_requests, wait_s
        self.calls = self.requests = self.largest = 0  # batches run, requests in them, the largest batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, request: GenerateRequest) -> Outcome:
        if self._queue is None:  # made in the replica's running loop, on first use
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, done))
        return await done

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            try:
                deadline = loop.time() + self.wait_s
                while len(batch) < self.max_requests:
                    if self._queue.empty():
                        left = deadline - loop.time()
                        if left <= 0:
                            break
                        try:
                            batch.append(await asyncio.wait_for(self._queue.get(), left))
                        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                            break
                    else:
                        batch.append(self._queue.get_nowait())
                live = [(r, f) for r, f in batch if not f.done()]  # a caller that gave up is not sampled
                if not live:
                    continue
                self.calls += 1
                self.requests += len(live)
                self.largest = max(self.largest, len(live))
                outcomes = await asyncio.to_thread(self.run, [r for r, _ in live])
                if len(outcomes) != len(live):
                    raise RuntimeError(f"the batch answered {len(outcomes)} of {len(live)} requests")
                for (_, f), outcome in zip(live, outcomes, strict=True):
                    if not f.done():
                        f.set_result(outcome)
            except BaseException as err:  # noqa: BLE001 - whatever happened, no request of it is left waiting
                for _, f in batch:
                    if not f.done():
                        f.set_exception(
                            err if isinstance(err, Exception) else RuntimeError("the replica stopped")
                        )
                if not isinstance(err, Exception):
                    raise  # cancelled (the replica stops): end the worker


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
