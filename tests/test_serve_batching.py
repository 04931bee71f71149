"""The server's batching core and request checks, without Ray (CPU): requests batched by schedule each
get the samples they get alone; bad requests are refused with the field named; an engine failure fails
its call only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import rel_error, tiny_model

from flexidit_trt.runtime import SamplingOptions, pipeline_from_model
from flexidit_trt.runtime.options import NoiseStream
from flexidit_trt.serve import GenerateRequest, ModelFacts, RequestError, parse_request, run_batch
from flexidit_trt.serve.batching import decode_npy, plan_calls

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    with pipeline_from_model(tiny_model(), device="cpu") as p:
        yield p


@pytest.fixture(scope="module")
def facts(pipe):
    return ModelFacts(pipe.spec.name, pipe.spec.num_classes, dict(pipe.spec.macs_by_patch))


def request(labels, seed, budget=0.5, fmt="npy"):
    opts = SamplingOptions(budget=budget, steps=20, sampler="ddpm", seed=seed).checked()
    return GenerateRequest(tuple(labels), opts, fmt)


def test_noise_streams_give_each_request_its_own_run(pipe):
    """Two seeds in one call: each part equals its own call (DDPM: fresh noise every step)."""
    opts = SamplingOptions(budget=0.5, steps=20, seed=0).checked()
    both = pipe.sample([1, 2, 3], opts, noise=[NoiseStream(11, 2), NoiseStream(12, 1)], batch_size=2).samples
    a = pipe.generate([1, 2], budget=0.5, steps=20, seed=11).samples
    b = pipe.generate([3], budget=0.5, steps=20, seed=12).samples
    # Same noise per image; only the forwards' float rounding differs with the batch shape (as batching).
    assert rel_error(both[:2], a) < 1e-5 and rel_error(both[2:], b) < 1e-5
    # A stream split across the call's batches: its second image starts the next batch at image 1.
    split = pipe.sample([3, 1, 2], opts, noise=[NoiseStream(12, 1), NoiseStream(11, 2)], batch_size=2).samples
    assert rel_error(split[:1], b) < 1e-5 and rel_error(split[1:], a) < 1e-5
    swapped = pipe.generate([3], budget=0.5, steps=20, seed=11).samples
    assert rel_error(swapped, b) > 1e-2  # the seed matters, so the equality above is not vacuous


def test_batch_by_schedule_equals_each_request_alone(pipe):
    reqs = [request([1, 2], 5), request([3], 6, budget=1.0), request([4], 7), request([5, 6], 5)]
    outs = run_batch(pipe, reqs)
    assert [o.status for o in outs] == [200] * 4
    records = [o.body["record"] for o in outs]
    # Budget 0.5 requests (0, 2, 3) ran as one call of 5 images; budget 1.0 alone.
    assert [(r["batch"]["requests"], r["batch"]["images"], r["batch"]["first_image"]) for r in records] == [
        (3, 5, 0),
        (1, 1, 0),
        (3, 5, 2),
        (3, 5, 3),
    ]
    assert records[1]["achieved_fraction"] == 1.0 and 0.45 < records[0]["achieved_fraction"] <= 0.5
    for r, o in zip(reqs, outs, strict=True):
        assert len(o.body["images"]) == len(r.labels)
        alone = pipe.generate(
            list(r.labels), budget=r.sampling.budget, steps=20, seed=r.sampling.seed
        ).samples
        assert rel_error(decode_npy(o.body["npy"]), alone) < 1e-5


def test_calls_split_at_max_images():
    reqs = [request([1] * 3, 0), request([1] * 3, 1), request([1], 2, budget=1.0), request([1] * 2, 3)]
    assert plan_calls(reqs, 6) == [[0, 1], [2], [3]]
    assert plan_calls(reqs, 8) == [[0, 1, 3], [2]]


class FailingPipe:
    """A pipeline whose engine fails on label 9 (a device error, say)."""

    def __init__(self, pipe):
        self.pipe, self.spec, self.max_batch = pipe, pipe.spec, pipe.max_batch

    def sample(self, labels, options, **kw):
        if 9 in labels:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
        return self.pipe.sample(labels, options, **kw)


def test_engine_failure_fails_its_call_only(pipe):
    failing = FailingPipe(pipe)
    outs = run_batch(failing, [request([9], 0), request([1], 0, budget=1.0)])
    assert outs[0].status == 500 and "illegal memory access" in outs[0].body["error"]
    assert "\n" not in outs[0].body["error"] and outs[1].status == 200
    assert run_batch(failing, [request([2], 1)])[0].status == 200  # and it keeps serving


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"labels": []}', 400, "labels"),
        (b'{"labels": [1, "a"]}', 400, "labels"),
        (b'{"labels": 3}', 400, "labels"),
        (b'{"labels": [10]}', 422, "labels"),
        (b'{"labels": [1], "budget": 1.5}', 422, "budget"),
        (b'{"labels": [1], "budget": 0}', 422, "budget"),
        (b'{"labels": [1], "budget": 0.01}', 422, "budget"),
        (b'{"labels": [1], "budget": "half"}', 400, "budget"),
        (b'{"labels": [1], "budget": 0.5, "time_budget": 2}', 422, "budget"),
        (b'{"labels": [1], "time_budget": -1}', 422, "time_budget"),
        (b'{"labels": [1], "steps": 2.5}', 400, "steps"),
        (b'{"labels": [1], "steps": 0}', 422, "steps"),
        (b'{"labels": [1], "sampler": "euler"}', 422, "sampler"),
        (b'{"labels": [1], "guidance": "max"}', 422, "guidance"),
        (b'{"labels": [1], "seed": -1}', 422, "seed"),
        (b'{"labels": [1], "seed": true}', 400, "seed"),
        (b'{"labels": [1], "format": "jpg"}', 400, "format"),
        (b'{"labels": [1], "colour": 1}', 400, "colour"),
    ],
)
def test_bad_requests_name_their_field(facts, body, status, field):
    with pytest.raises(RequestError) as err:
        parse_request(body, facts)
    assert err.value.status == status and str(err.value).startswith(f"{field}: ")
    assert "\n" not in str(err.value)


def test_good_request_takes_run_defaults(facts):
    req = parse_request(json.dumps({"labels": [1, 2], "seed": 3}).encode(), facts)
    assert req.labels == (1, 2) and req.sampling == SamplingOptions(seed=3).checked() and req.format == "png"
    assert req.schedule_key == parse_request(b'{"labels": [4], "seed": 9}', facts).schedule_key


def test_pngs_decode_to_the_samples(pipe):
    import base64
    import io

    from PIL import Image

    out = run_batch(pipe, [request([1, 2], 0)])[0]
    pngs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in out.body["images"]]
    assert [p.shape for p in pngs] == [(8, 8, 3)] * 2


def test_one_replica_per_gpu_or_one_on_the_cpu():
    from flexidit_trt.serve import ServeOptions
    from flexidit_trt.serve.options import ServeOptionError
    from flexidit_trt.serve.server import replica_count

    assert replica_count(ServeOptions(), 0) == (1, 0)
    assert replica_count(ServeOptions(), 4) == (4, 1)
    assert replica_count(ServeOptions(replicas=2), 4) == (2, 1)
    assert replica_count(ServeOptions(device="cpu", replicas=2), 4) == (2, 0)
    with pytest.raises(ServeOptionError, match="--replicas 3 needs one GPU each"):
        replica_count(ServeOptions(replicas=3), 2)
    with pytest.raises(ServeOptionError, match="--max-batch"):
        ServeOptions(max_batch=0).checked()


# -- the replica's batcher: a batch is gathered when the pipeline frees ------------------------------------
def _slow_run(seconds: float, fail_on: int | None = None):
    """A stand-in for run_batch that takes `seconds` per call and answers each request with its seed."""
    import time

    from flexidit_trt.serve.batching import Outcome

    def run(requests):
        time.sleep(seconds)
        if fail_on is not None and any(r.sampling.seed == fail_on for r in requests):
            raise RuntimeError(f"engine failed on seed {fail_on}")
        return [Outcome(200, {"seed": r.sampling.seed}) for r in requests]

    return run


def test_drain_batcher_runs_what_arrived_during_a_call_as_the_next_batch():
    """1 request starts a 0.3 s call; 7 more arrive during it (over 0.1 s, each well after the 20 ms wait
    window of the first): they run together next, then at most max_requests at once."""
    import asyncio

    from flexidit_trt.serve.batching import DrainBatcher

    async def scenario():
        batcher = DrainBatcher(_slow_run(0.3), max_requests=4, wait_s=0.02)
        first = asyncio.ensure_future(batcher.submit(request([1], 0)))
        await asyncio.sleep(0.05)
        rest = []
        for seed in range(1, 8):
            rest.append(asyncio.ensure_future(batcher.submit(request([1], seed))))
            await asyncio.sleep(0.015)
        outs = await asyncio.gather(first, *rest)
        return (batcher.calls, batcher.requests, batcher.largest), [o.body["seed"] for o in outs]

    counts, seeds = asyncio.run(scenario())
    assert seeds == list(range(8))  # each caller gets its own answer
    assert counts == (3, 8, 4)  # batches of 1, 4, 3: not 1 + seven batches of 1


def test_drain_batcher_fails_only_the_failing_batch():
    import asyncio

    from flexidit_trt.serve.batching import DrainBatcher

    async def scenario():
        batcher = DrainBatcher(_slow_run(0.05, fail_on=1), max_requests=8, wait_s=0.01)
        bad = await asyncio.gather(batcher.submit(request([1], 1)), return_exceptions=True)
        good = await batcher.submit(request([1], 2))
        return bad[0], good

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, RuntimeError) and "seed 1" in str(bad)
    assert good.status == 200 and good.body["seed"] == 2  # the worker keeps serving


def test_drain_batcher_answers_every_request_when_the_batch_answers_too_few():
    """A run that returns fewer outcomes than requests fails them all (none left waiting forever)."""
    import asyncio

    from flexidit_trt.serve.batching import DrainBatcher, Outcome

    async def scenario():
        batcher = DrainBatcher(lambda reqs: [Outcome(200, {})], max_requests=8, wait_s=0.05)
        return await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(request([1], s)) for s in range(3)), return_exceptions=True), 5
        )

    answers = asyncio.run(scenario())
    assert all(isinstance(a, RuntimeError) and "answered 1 of 3" in str(a) for a in answers)
