"""`flexidit-trt serve` as one library call: start (or join) Ray, run the application, wait for SIGTERM or
Ctrl-C, drain, and stop what it started.

    serve_until_stopped(ServeOptions(port=8000).checked(), say=print)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from ..errors import FlexiditError
from .options import ServeOptionError, ServeOptions

log = logging.getLogger(__name__)


def replica_count(options: ServeOptions, cluster_gpus: int) -> tuple[int, int]:
    """(replicas, GPUs per replica): one replica per GPU the cluster has (or --replicas of them), one CPU
    replica where there is none or --device cpu is asked for."""
    on_cpu = cluster_gpus == 0 or (options.device or "").startswith("cpu")
    if on_cpu:
        return options.replicas or 1, 0
    if options.replicas is not None and options.replicas > cluster_gpus:
        raise ServeOptionError(
            f"--replicas {options.replicas} needs one GPU each; the Ray cluster has {cluster_gpus}"
        )
    return options.replicas or cluster_gpus, 1


def serve_until_stopped(
    options: ServeOptions,
    say: Callable[[str], None] = lambda _line: None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until SIGTERM / SIGINT (or `stop` is set); then drain in-flight requests, delete the
    application and shut down Serve and the Ray instance if this call started them."""
    try:
        import ray
        from ray import serve

        from .app import APP, build_app
    except ImportError as err:
        raise FlexiditError(f"serve needs Ray Serve ({err}): pip install 'flexidit-trt[serve]'") from None

    stop = stop or threading.Event()
    started_ray = options.address is None
    ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        replicas, gpus = replica_count(options, int(ray.cluster_resources().get("GPU", 0)))
        where = "started locally" if started_ray else f"joined {options.address}"
        say(f"ray: {where}; {replicas} replica(s) on {'GPUs, one each' if gpus else 'the CPU'}")
        serve.start(http_options={"host": options.host, "port": options.port})
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            serve.run(build_app(options, replicas, gpus), name=APP, route_prefix="/")
            say(f"serving on http://{options.host}:{options.port} (GET /healthz, POST /generate)")
            stop.wait()
            say("stopping: draining in-flight requests")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if started_ray:
                serve.shutdown()
            else:
                serve.delete(APP)
    finally:
        if started_ray:
            ray.shutdown()
    say("stopped")
