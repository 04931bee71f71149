"""`flexidit-trt serve`: an HTTP service on Ray Serve, one pipeline per replica (one replica per GPU),
requests batched by schedule with a noise stream each. A consumer of the runtime's public API.

Ray is imported only by app.py and server.py (the `serve` extra); options.py and batching.py need none."""

from .batching import Outcome, run_batch
from .options import GenerateRequest, ModelFacts, RequestError, ServeOptions, parse_request

__all__ = [
    "GenerateRequest",
    "ModelFacts",
    "Outcome",
    "RequestError",
    "ServeOptions",
    "parse_request",
    "run_batch",
]
