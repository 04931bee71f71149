"""Throughput and latency of `flexidit-trt serve` under an open-loop request stream, against one request at a
time, on one server started here (127.0.0.1).

    python benchmarks/serve_bench.py OUT --rates 1,2,4,8 --duration 30 -- --model dit_xl --backend torch
    python benchmarks/serve_bench.py OUT --rates 2,4 --duration 10 --steps 20 --sampler ddim   # CPU, default model

Phases, all against the same server: warm-up (an open-loop stream at the highest rate, its answers dropped, so
the engines have met the batch sizes the stream makes), one at a time (the next request sent when the last
answered), then one open-loop stream per rate: Poisson arrivals for --duration seconds, each request sent at
its arrival time whatever is still in flight, every answer waited for. A rate's throughput is the images of the
200 answers over the span from its first request to its last answer; its latency is the client's, per request
(queue + compute + HTTP). 503 answers (a full queue) and other failures are counted, never retried.

Writes OUT/serve_bench.json (every request: status, latency, the batch it ran in, the replica that ran it),
OUT/serve_bench.md (the table, printed last) and OUT/serve.log (the server's output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_cpu  # noqa: E402


def request_body(i: int, args: argparse.Namespace) -> dict:
    labels = [(i * args.labels + j) % args.classes for j in range(args.labels)]
    body = {"labels": labels, "budget": args.budget, "seed": i}
    if args.steps is not None:
        body["steps"] = args.steps
    if args.sampler is not None:
        body["sampler"] = args.sampler
    return body


def one_result(status: int, answer: dict, seconds: float, sent: float) -> dict:
    rec = answer.get("record", {})
    return {
        "status": status,
        "latency_s": seconds,
        "sent_s": sent,
        "images": len(answer.get("images", [])) if status == 200 else 0,
        "batch": rec.get("batch"),
        "replica": rec.get("replica"),
        "queue_ms": rec.get("queue_ms"),
        "compute_ms": rec.get("compute_ms"),
        "error": answer.get("error") if status != 200 else None,
    }


def one_at_a_time(server: serve_cpu.Server, args: argparse.Namespace, first: int) -> list[dict]:
    results, t0 = [], time.perf_counter()
    for i in range(args.sequential):
        sent = time.perf_counter() - t0
        status, _, answer = serve_cpu.call(
            server, "POST", "/generate", json.dumps(request_body(first + i, args)).encode(), args.timeout
        )
        results.append(one_result(status, answer, time.perf_counter() - t0 - sent, sent))
    return results


def open_loop(
    server: serve_cpu.Server, args: argparse.Namespace, rate: float, duration: float, first: int
) -> list[dict]:
    """Poisson arrivals at `rate` per second for `duration` seconds (seeded by the rate): each request sent at
    its time from its own thread; returns once every request has answered (or timed out)."""
    rng = np.random.default_rng(int(rate * 1000) + first)
    times, t = [], rng.exponential(1 / rate)
    while t < duration:
        times.append(t)
        t += rng.exponential(1 / rate)
    results: list[dict | None] = [None] * len(times)
    t0 = time.perf_counter()

    def send(k: int) -> None:
        delay = times[k] - (time.perf_counter() - t0)
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter() - t0
        body = json.dumps(request_body(first + k, args)).encode()
        status, _, answer = serve_cpu.call(server, "POST", "/generate", body, args.timeout)
        results[k] = one_result(status, answer, time.perf_counter() - t0 - sent, sent)

    with ThreadPoolExecutor(max(1, len(times))) as pool:
        list(pool.map(send, range(len(times))))
    return [r for r in results if r is not None]


def summary(name: str, offered: float | None, results: list[dict]) -> dict:
    ok = [r for r in results if r["status"] == 200]
    span = max((r["sent_s"] + r["latency_s"] for r in results), default=0.0) - min(
        (r["sent_s"] for r in results), default=0.0
    )
    lat = np.array([r["latency_s"] for r in ok]) if ok else np.array([np.nan])
    batches = [r["batch"]["requests"] for r in ok if r["batch"]]
    replicas = Counter(
        f"{r['replica']['node']} pid {r['replica']['pid']} gpus {','.join(r['replica']['gpus']) or '-'}"
        for r in ok
        if r.get("replica")
    )
    return {
        "phase": name,
        "offered_rps": offered,
        "requests": len(results),
        "ok": len(ok),
        "rejected_503": sum(r["status"] == 503 for r in results),
        "failed": sum(r["status"] not in (200, 503) for r in results),
        "images": sum(r["images"] for r in ok),
        "span_s": span,
        "images_per_s": sum(r["images"] for r in ok) / span if span > 0 else 0.0,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "requests_per_batch_mean": float(np.mean(batches)) if batches else None,
        "requests_per_batch_max": max(batches) if batches else None,
        "by_replica": dict(replicas),
    }


def table(rows: list[dict], base: float) -> str:
    lines = [
        "| phase | offered req/s | requests | 200 | 503 | other | images/s | vs one at a time | p50 s | p99 s | requests/batch (mean, max) | answered by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = "—" if r["offered_rps"] is None else f"{r['offered_rps']:g}"
        batch = (
            "—"
            if r["requests_per_batch_mean"] is None
            else f"{r['requests_per_batch_mean']:.1f}, {r['requests_per_batch_max']}"
        )
        by = "; ".join(f"{k}: {v}" for k, v in sorted(r["by_replica"].items()))
        lines.append(
            f"| {r['phase']} | {rate} | {r['requests']} | {r['ok']} | {r['rejected_503']} | {r['failed']} | "
            f"{r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}× | {r['latency_p50_s']:.2f} | "
            f"{r['latency_p99_s']:.2f} | {batch} | {by} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rates", default="1,2,4,8", help="requests per second, comma-separated")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate")
    ap.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of arrivals at the highest rate, dropped"
    )
    ap.add_argument("--sequential", type=int, default=16, help="requests sent one at a time")
    ap.add_argument("--labels", type=int, default=1, help="images per request")
    ap.add_argument("--classes", type=int, default=1000, help="labels cycle through 0..classes-1")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=None, help="[default: the server's, as run]")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a client waits for one answer")
    ap.add_argument("--ready-limit", type=float, default=480.0, help="seconds to wait for /healthz 200")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:split])
    args.serve_args = argv[split + 1 :]  # passed to flexidit-trt serve
    args.out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]

    server = serve_cpu.start(args.out / "serve.log", *args.serve_args)
    phases: dict[str, list[dict]] = {}
    rows: list[dict] = []
    try:
        ready_s, _ = serve_cpu.wait_healthy(server, args.ready_limit)
        print(f"/healthz 200 after {ready_s:.1f} s", flush=True)
        t = time.perf_counter()
        warm = open_loop(server, args, max(rates), args.warmup, first=10**6)
        print(f"warm-up: {len(warm)} requests in {time.perf_counter() - t:.1f} s", flush=True)
        phases["one at a time"] = one_at_a_time(server, args, first=0)
        rows.append(summary("one at a time", None, phases["one at a time"]))
        print(f"one at a time: {rows[-1]['images_per_s']:.2f} images/s", flush=True)
        for k, rate in enumerate(rates):
            name = f"open loop {rate:g}/s"
            phases[name] = open_loop(server, args, rate, args.duration, first=(k + 1) * 100_000)
            rows.append(summary(name, rate, phases[name]))
            r = rows[-1]
            print(
                f"{name}: {r['ok']}/{r['requests']} ok, {r['images_per_s']:.2f} images/s, p50 {r['latency_p50_s']:.2f} s, "
                f"p99 {r['latency_p99_s']:.2f} s",
                flush=True,
            )
        stopped_s, left = serve_cpu.stop(server)
    finally:
        if server.proc.poll() is None:
            serve_cpu.stop(server)
    base = rows[0]["images_per_s"] or float("nan")
    md = table(rows, base)
    record = {
        "serve_args": args.serve_args,
        "request": {k: v for k, v in request_body(0, args).items() if k not in ("labels", "seed")}
        | {"labels_per_request": args.labels},
        "ready_s": ready_s,
        "stop_s": stopped_s,
        "ray_processes_left": sorted(left),
        "summary": rows,
        "requests": phases,
    }
    (args.out / "serve_bench.json").write_text(json.dumps(record, indent=1))
    (args.out / "serve_bench.md").write_text(md + "\n")
    print(f"SIGTERM: stopped in {stopped_s:.1f} s; Ray processes left: {sorted(left)}")
    print(md)
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
