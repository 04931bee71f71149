"""A real `flexidit-trt serve` (Ray Serve, the default model, CPU) on 127.0.0.1, driven over HTTP by the
functions of benchmarks/serve_cpu.py; bounded: 10 small requests, every call with a timeout, the server
stopped by SIGTERM at the end and checked to leave no Ray process behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from runtime_helpers import rel_error

pytest.importorskip("ray.serve", reason="the serve extra: pip install -e '.[serve]'")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve_cpu  # noqa: E402

from flexidit_trt.serve.batching import decode_npy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    srv = serve_cpu.start(log, "--max-batch", "4", "--batch-wait-ms", "200", "--max-queue", "4")
    try:
        serve_cpu.wait_healthy(srv, 240)
        yield srv
    finally:
        if srv.proc.poll() is None:
            serve_cpu.stop(srv)


def body(labels, budget, seed, **extra):
    return {"labels": labels, "budget": budget, "sampler": "ddim", "steps": STEPS, "seed": seed, **extra}


def test_concurrent_mixed_budgets_batch_by_schedule(server):
    status, _, health = serve_cpu.call(server, "GET", "/healthz")
    assert status == 200 and health["ready"]
    bodies = [body([i % 10], (1.0, 0.5)[i % 2], i) for i in range(8)]
    answers = serve_cpu.fire(server, bodies, concurrency=4)
    for b, (status, _, answer, _) in zip(bodies, answers, strict=True):
        assert status == 200, answer
        assert len(answer["images"]) == 1 and serve_cpu.is_png(answer["images"][0])
        rec = answer["record"]
        assert rec["achieved_fraction"] <= b["budget"] and rec["options"]["budget"] == b["budget"]
        assert rec["labels"] == b["labels"] and rec["compute_ms"] > 0 and rec["queue_ms"] >= 0
        assert rec["replica"]["pid"] > 0 and rec["replica"]["gpus"] == []  # one CPU replica
        assert set(rec["plan"]["patch_per_step"]) == ({2} if b["budget"] == 1.0 else {2, 4})
    # 4 in flight, 200 ms to gather: some calls ran more than one request.
    assert max(a[2]["record"]["batch"]["requests"] for a in answers) >= 2


def test_samples_equal_the_pipelines_for_the_same_seed(server):
    from flexidit_trt.default_model import default_model
    from flexidit_trt.runtime import pipeline_from_model

    bodies = [
        body([3, 1], 0.5, 21, sampler="ddpm", format="npy"),
        body([7], 0.5, 22, sampler="ddpm", format="npy"),
    ]
    answers = serve_cpu.fire(server, bodies, concurrency=2)
    assert [a[0] for a in answers] == [200, 200], answers
    model, _ = default_model()
    with pipeline_from_model(model, device="cpu") as pipe:
        for b, (_, _, answer, _) in zip(bodies, answers, strict=True):
            alone = pipe.generate(
                b["labels"], budget=0.5, steps=STEPS, sampler="ddpm", seed=b["seed"]
            ).samples
            # Batched with the other request or not, only the forwards' float rounding may differ.
            assert rel_error(decode_npy(answer["npy"]), alone) < 1e-5


@pytest.mark.parametrize("name", sorted(serve_cpu.BAD_REQUESTS))
def test_bad_requests_get_4xx_naming_the_field(server, name):
    status, _, answer = serve_cpu.call(server, "POST", "/generate", serve_cpu.BAD_REQUESTS[name])
    assert 400 <= status < 500, answer
    field = answer["error"].split(":")[0]
    assert field in {"body", "labels", "budget", "steps"} and "\n" not in answer["error"]


def test_unknown_path_is_404(server):
    status, _, answer = serve_cpu.call(server, "GET", "/generate")
    assert status == 404 and answer["error"].startswith("path: ")


def test_a_full_queue_answers_503_with_retry_after(server):
    """One replica takes 2 x 4 requests at once and queues 4 more: of 20 at once, some get 503."""
    answers = serve_cpu.fire(server, [body([1], 0.5, i, steps=4) for i in range(20)], concurrency=20)
    statuses = sorted(a[0] for a in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 12, statuses
    for status, headers, answer, _ in answers:
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and answer["error"].startswith("queue: ")


def test_a_killed_replica_is_restarted_and_no_request_hangs(server):
    """SIGKILL the replica while requests run: each answers 200 or a one-line 5xx (none hangs: the
    client's timeout is 90 s), then Ray's new replica turns /healthz 200 again and serves."""
    import threading

    bodies = [body([i], 1.0, i, steps=100) for i in range(4)]  # seconds of work: the kill lands in it
    killer = threading.Timer(1.0, serve_cpu.kill_replica, args=(server,))
    killer.start()
    answers = serve_cpu.fire(server, bodies, concurrency=4, timeout=90)
    killer.join()
    statuses = [a[0] for a in answers]
    assert all(s == 200 or (500 <= s < 600 and "\n" not in a["error"]) for s, _, a, _ in answers), answers
    assert any(s >= 500 for s in statuses), statuses  # the kill did hit work in flight
    serve_cpu.wait_healthy(server, 120)
    status, _, answer = serve_cpu.call(server, "POST", "/generate", json.dumps(body([5], 0.5, 5)).encode())
    assert status == 200, answer


def test_sigterm_stops_it_and_leaves_nothing(server):
    took, left = serve_cpu.stop(server)
    assert server.proc.returncode == 0, server.log.read_text()[-2000:]
    assert took < 60 and not left, (took, left)
    assert "stopped" in server.log.read_text()
    assert serve_cpu.call(server, "GET", "/healthz", timeout=5)[0] == 0  # nothing listens any more
