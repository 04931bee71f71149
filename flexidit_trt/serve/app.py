"""The Ray Serve application: an ingress that checks requests and answers HTTP, and the generator
deployment, one replica per GPU (or one on the CPU), each holding one `Pipeline`, its requests gathered
when the pipeline frees (batching.DrainBatcher) and run by schedule (batching.run_batch).

    GET  /healthz   200 once every generator replica has loaded and warmed its pipeline, 503 before
    POST /generate  {"labels": [...], "budget": 0.5, "steps": ..., "seed": ...} -> {"images", "record"}

Back-pressure: each replica takes at most 2 x max_batch requests at once and max_queue wait for it; past
that the ingress answers 503 with Retry-After. Ray restarts a replica whose process dies."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import partial
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .batching import DrainBatcher, Outcome, run_batch
from .options import GenerateRequest, ModelFacts, RequestError, ServeOptions, parse_request

APP = "flexidit"
GENERATOR = "Generator"
RETRY_AFTER_S = 1  # a batch of the default model takes about a second on a GPU
WARMUP_LABELS = [0]
DRAIN_S = 20.0  # how long a stopping replica waits for its in-flight requests
log = logging.getLogger(__name__)


@serve.deployment(name=GENERATOR)
class Generator:
    """One replica: one pipeline on the replica's device, warmed before it takes traffic."""

    def __init__(self, options: ServeOptions) -> None:
        from ..runtime.run import open_pipeline

        self.pipe = open_pipeline(options.run_options())
        # Warm the engines (graphs, kernels, allocations) with a short run before the first request.
        self.pipe.generate(WARMUP_LABELS, steps=2, sampler="ddim", seed=0)
        # Which replica answered, in every record: the GPUs Ray gave it (as the node numbers them) and its host.
        self.replica = {
            "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }
        self.batcher = DrainBatcher(
            partial(run_batch, self.pipe), options.max_batch, options.batch_wait_ms / 1e3
        )
        log.info(
            "replica ready: %s on %s (%s)", self.pipe.spec.name, self.pipe.device, self.pipe.selection.backend
        )

    def facts(self) -> ModelFacts:
        spec = self.pipe.spec
        return ModelFacts(spec.name, spec.num_classes, dict(spec.macs_by_patch))

    async def generate(self, request: GenerateRequest) -> Outcome:
        # Batched with what else waits when the pipeline frees (sampled in a thread: the replica's event
        # loop keeps answering Ray's health checks meanwhile).
        outcome = await self.batcher.submit(request)
        if "record" in outcome.body:
            outcome.body["record"]["replica"] = self.replica
        return outcome

    def __del__(self) -> None:
        pipe = getattr(self, "pipe", None)
        if pipe is not None:
            pipe.close()


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Ingress:
    """HTTP in and out: requests checked here, once, before they queue for a replica."""

    def __init__(self, generator: DeploymentHandle) -> None:
        self.generator = generator
        self.model: ModelFacts | None = None

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/"), request.method
        if path == "/healthz" and method == "GET":
            return await self.healthz()
        if path == "/generate" and method == "POST":
            return await self.generate(request)
        return _error(404, f"path: no {method} {request.url.path}; use GET /healthz or POST /generate")

    async def healthz(self) -> Response:
        ready, detail = await asyncio.to_thread(_generator_ready)
        return JSONResponse({"ready": ready, "replicas": detail}, status_code=200 if ready else 503)

    async def generate(self, request: Request) -> Response:
        received = time.time()
        body = await request.body()
        try:
            if self.model is None:
                self.model = await self.generator.facts.remote()
            job = parse_request(body, self.model, received)
        except RequestError as err:
            return _error(err.status, str(err))
        try:
            outcome: Outcome = await self.generator.generate.remote(job)
        except BackPressureError:
            return _error(
                503, "queue: every replica's queue is full; retry later", {"Retry-After": str(RETRY_AFTER_S)}
            )
        except Exception as err:  # noqa: BLE001 - a replica that died mid-request: say so, never hang
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            return _error(500, f"replica: the request failed: {line}")
        return JSONResponse(outcome.body, status_code=outcome.status)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _generator_ready() -> tuple[bool, dict[str, Any]]:
    """Whether the generator deployment is healthy, every replica running (Serve's own status)."""
    app = serve.status().applications.get(APP)
    if app is None or GENERATOR not in app.deployments:
        return False, {}
    dep = app.deployments[GENERATOR]
    counts = {str(k.value if hasattr(k, "value") else k): v for k, v in dep.replica_states.items()}
    running = counts.get("RUNNING", 0)
    return str(getattr(dep.status, "value", dep.status)) == "HEALTHY" and running == sum(
        counts.values()
    ), counts


def build_app(options: ServeOptions, replicas: int, gpus_per_replica: int) -> Any:
    """The Serve application: the ingress bound to `replicas` generators (num_gpus 1 each on GPUs)."""
    actor = {"num_gpus": 1} if gpus_per_replica else {"num_cpus": 1}
    generator = Generator.options(
        num_replicas=replicas,
        ray_actor_options=actor,
        max_ongoing_requests=2 * options.max_batch,
        max_queued_requests=options.max_queue,
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=DRAIN_S,
    ).bind(options)
    return Ingress.bind(generator)
