"""Each engine's forward alone, at the batches the trajectories ran it at: timed against its floor, and
with `--profile` under torch.profiler (profile.py)."""

from __future__ import annotations

import traceback
from typing import Any

from ..runtime import Pipeline
from .floors import against_floor, forward_floor
from .measure import EventClock, HostClock, time_calls
from .session import Session


def time_forwards(session: Session, pipe: Pipeline, images: int) -> list[dict]:
    """Each engine alone at the batches the trajectories ran it at, against its floor."""
    clock = HostClock() if session.device == "cpu" else EventClock(stream_of(pipe))
    out = []
    for p, backend in pipe.backends.items():
        for batch in session.forward_rows(images):
            if not backend.covers(batch):
                continue
            backend.prepare([batch])
            # (torch-premod: t holds the last trajectory's last step, maybe not this engine's: the
            # lookup then reads another step's rows, which costs the same.)
            stats = time_calls(lambda b=backend, n=batch: b.forward(n), clock, session.options.timing)
            floor = forward_floor(
                session.config, p, batch, session.weight_bytes[p], session.peak, session.bandwidth
            )
            entry = {
                "patch_size": p,
                "batch": batch,
                "images": images,
                "stats": stats.to_dict(),
                "floor": floor.to_dict(),
                **against_floor(floor, stats.median_ms, session.peak),
            }
            out.append(entry)
            session.say(
                f"  p{p} batch {batch}: {stats.median_ms:.3f} ms (IQR {stats.iqr_ms:.3f} ms), "
                f"{entry['over_floor']:.2f}x its {floor.bound} floor {floor.floor_ms:.3f} ms"
            )
    return out


def profile_forwards(session: Session, pipe: Pipeline) -> list[dict] | dict:
    """Each engine's callable at each batch the forwards were timed at, under torch.profiler, eagerly
    (profile.py). A profile that fails is recorded with its error: the timed numbers stay."""
    from ..engines.torch_graphs import TorchGraphBackend
    from .profile import profile_forward

    engines = pipe.backends
    if not all(isinstance(b, TorchGraphBackend) for b in engines.values()):
        return {
            "not_profiled": f"the {pipe.selection.backend} engines are not torch callables; profile them "
            "with Nsight Systems (nsys profile flexidit-trt bench ...)"
        }
    session.release()
    out = []
    for images in session.options.batch_sizes:
        for p, backend in engines.items():
            for batch in session.forward_rows(images):
                if not backend.covers(batch):
                    continue
                entry: dict[str, Any] = {"patch_size": p, "batch": batch, "images": images}
                try:
                    inputs = _forward_inputs(session, pipe, batch)
                    backend.begin_chunk(inputs[1].cpu().numpy(), inputs[2].cpu().numpy())  # torch-premod
                    prof = profile_forward(backend.fn, inputs, device=session.device)
                except Exception as err:
                    session.say(f"  profile p{p} batch {batch}: failed:\n{traceback.format_exc()}")
                    out.append({**entry, "failed": f"{type(err).__name__}: {err}".splitlines()[0]})
                    continue
                out.append({**entry, **prof.to_dict()})
                session.say(
                    f"  profile p{p} batch {batch} (eager, no CUDA graph): {prof.kernels_per_forward:.0f} "
                    f"kernels, device busy {prof.busy_us_per_forward:.0f} of {prof.wall_us_per_forward:.0f} "
                    f"µs per forward; {prof.limit}"
                )
    session.release()
    return out


def _forward_inputs(session: Session, pipe: Pipeline, batch: int) -> tuple[Any, ...]:
    from ..engines.torch_backend import engine_inputs

    return engine_inputs(pipe.spec, batch, session.device, seed=session.options.seed)


def stream_of(pipe: Pipeline) -> Any:
    """The pipeline's one stream (an engines.cuda.Stream, made by its first generate), for the events."""
    stream = pipe.stream
    if stream is None:
        raise RuntimeError("the pipeline has no CUDA stream yet: run a trajectory first")
    return stream
