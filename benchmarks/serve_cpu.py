"""`flexidit-trt serve` from the outside, on 127.0.0.1: start it, wait for /healthz, send a bounded stream of
requests N at a time, the bad requests, SIGTERM, and check that nothing it started is left running.

    python benchmarks/serve_cpu.py                      # the issue's CPU check: 24 requests, 6 at a time
    python benchmarks/serve_cpu.py --requests 8 --concurrency 4 --json out.json

tests/test_serve_http.py runs the same functions, smaller."""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BAD_REQUESTS = {
    "not JSON": b"{labels: [1]",
    "empty labels": b'{"labels": []}',
    "unknown label": b'{"labels": [1000]}',
    "budget above 1": b'{"labels": [1], "budget": 1.5}',
    "budget 0": b'{"labels": [1], "budget": 0}',
    "labels of the wrong type": b'{"labels": "1,2"}',
    "steps of the wrong type": b'{"labels": [1], "steps": "20"}',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    before: set[int] = field(default_factory=set)  # Ray-looking processes of this Python before it started

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def ray_processes() -> set[int]:
    """Processes of this venv's Ray (raylet, gcs_server, workers, agents): their command line names it."""
    ray_dir = str(Path(sys.prefix).resolve())
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {
        int(line.split(None, 1)[0])
        for line in out.splitlines()
        if ("ray" in line and ray_dir in line) or "ray::" in line
    }


def start(log: Path, *args: str) -> Server:
    port = free_port()
    before = ray_processes()
    cmd = [sys.executable, "-m", "flexidit_trt", "serve", "--host", HOST, "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(proc, port, log, before)


def call(server: Server, method: str, path: str, body: bytes | None = None, timeout: float = 120):
    """(status, headers, JSON body) of one request; (0, {}, {error}) when nothing answered."""
    req = urllib.request.Request(server.url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {"error": text.decode(errors="replace")}
        return err.code, {k.lower(): v for k, v in err.headers.items()}, payload
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return 0, {}, {"error": str(err)}


def wait_healthy(server: Server, limit_s: float) -> tuple[float, list[int]]:
    """Seconds until /healthz answered 200, and the other statuses seen on the way (0: no answer)."""
    t0, seen = time.perf_counter(), []
    while time.perf_counter() - t0 < limit_s:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"serve exited with {server.proc.returncode}: {server.log.read_text()[-2000:]}"
            )
        status, _, _ = call(server, "GET", "/healthz", timeout=5)
        if status == 200:
            return time.perf_counter() - t0, sorted(set(seen))
        seen.append(status)
        time.sleep(1)
    raise TimeoutError(f"/healthz not 200 after {limit_s} s: {server.log.read_text()[-2000:]}")


def fire(server: Server, bodies: list[dict], concurrency: int, timeout: float = 120) -> list[tuple]:
    """Each body POSTed to /generate, `concurrency` in flight; (status, headers, answer, seconds) each."""

    def one(body: dict) -> tuple:
        t0 = time.perf_counter()
        status, headers, answer = call(server, "POST", "/generate", json.dumps(body).encode(), timeout)
        return status, headers, answer, time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, bodies))


def kill_replica(server: Server) -> int:
    """SIGKILL one generator replica's process (Ray should start another); its pid."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    pids = [
        int(line.split(None, 1)[0]) for line in out.splitlines() if "ServeReplica:flexidit:Generator" in line
    ]
    pids = [p for p in pids if p not in server.before]
    if not pids:
        raise RuntimeError("no generator replica process found")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def stop(server: Server, limit_s: float = 60) -> tuple[float, set[int]]:
    """SIGTERM; the seconds it took to exit, and the Ray processes it left behind (none expected)."""
    t0 = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)  # the session it was started in: never other processes
        server.proc.wait()
        raise
    took = time.perf_counter() - t0
    left: set[int] = set()
    for _ in range(20):  # Ray's own processes exit just after the driver: allow them a few seconds
        left = ray_processes() - server.before
        if not left:
            break
        time.sleep(0.5)
    return took, left


def is_png(text: str) -> bool:
    return base64.b64decode(text).startswith(PNG_MAGIC)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--labels", type=int, default=2, help="labels per request")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument("--log", type=Path, default=Path("serve_cpu.log"), help="the server's output")
    ap.add_argument("serve_args", nargs="*", help="passed to flexidit-trt serve (after --)")
    args = ap.parse_args()
    server = start(args.log, *args.serve_args)
    try:
        ready_s, before = wait_healthy(server, 300)
        print(f"/healthz 200 after {ready_s:.1f} s (before: {before})")
        bodies = [
            {
                "labels": [(i + j) % 10 for j in range(args.labels)],
                "budget": (1.0, 0.5)[i % 2],
                "sampler": "ddim",
                "steps": args.steps,
                "seed": i,
            }
            for i in range(args.requests)
        ]
        t0 = time.perf_counter()
        answers = fire(server, bodies, args.concurrency)
        wall = time.perf_counter() - t0
        ok = 0
        for body, (status, _, answer, _) in zip(bodies, answers, strict=True):
            rec = answer.get("record", {})
            good = (
                status == 200
                and len(answer["images"]) == len(body["labels"])
                and all(is_png(p) for p in answer["images"])
                and rec["achieved_fraction"] <= body["budget"]
            )
            ok += good
            if not good:
                print(f"FAILED {body}: {status} {answer.get('error', rec)}")
        lat = sorted(a[3] for a in answers)
        batches = sorted({(a[2]["record"]["batch"]["requests"]) for a in answers if a[0] == 200})
        print(
            f"{ok}/{len(bodies)} answered 200 with a PNG per label and a fraction within budget, in {wall:.1f} s "
            f"({sum(len(b['labels']) for b in bodies) / wall:.2f} images/s); latency p50 {lat[len(lat) // 2]:.2f} s, "
            f"max {lat[-1]:.2f} s; requests per batch seen: {batches}"
        )
        bad = {}
        for name, raw in BAD_REQUESTS.items():
            status, _, answer = call(server, "POST", "/generate", raw)
            bad[name] = (status, answer.get("error"))
            print(f"bad request, {name}: {status} {answer.get('error')}")
        stopped_s, left = stop(server)
        print(
            f"SIGTERM: exited in {stopped_s:.1f} s (code {server.proc.returncode}); Ray processes left: {sorted(left)}"
        )
    finally:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
    result = dict(
        ready_s=ready_s,
        ok=ok,
        requests=len(bodies),
        wall_s=wall,
        latency_s=lat,
        batches=batches,
        bad=bad,
        stop_s=stopped_s,
        left=sorted(left),
        exit_code=server.proc.returncode,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    good = ok == len(bodies) and all(400 <= s < 500 for s, _ in bad.values()) and stopped_s < 60 and not left
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
