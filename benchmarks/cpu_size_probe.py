"""What a bigger default model would cost `flexidit-trt run --budget 0.5` on this CPU, by ratio.

For each candidate (depth, width, heads) of dit_fmnist with patch sizes (2, 4): a random-weight flexible
model, its static patch-2 and patch-4 engines as the torch backend builds them on the CPU
(`FlexiDiT.static(p)`, fp32, eager), one forward at `run`'s batch (10 images × CFG = 20) timed in rounds that
interleave the candidates (the CPU is shared: only ratios within one process are meaningful). The budget-0.5
plan of each candidate (the planner, from its own MACs) gives the loop's predicted time
n4 × t4 + n2 × t2, and its ratio to the current default's; `run`'s seconds for a candidate are predicted as
that ratio × the default's measured sampling time (--default-seconds, 33 s on this machine when idle).

    python3 benchmarks/cpu_size_probe.py [--rounds 7] [--sizes 6x160x4,8x192x4,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flexidit_trt.diffusion import plan  # noqa: E402
from flexidit_trt.model import FlexiDiT, get_config  # noqa: E402

DEFAULT = (6, 160, 4)
SIZES = "6x160x4,8x160x4,10x160x4,12x160x4,6x192x4,8x192x4,8x176x4,6x224x4"


def engines(depth: int, width: int, heads: int):
    cfg = get_config("dit_fmnist", depth=depth, hidden_size=width, num_heads=heads, lora_rank=8)
    torch.manual_seed(0)
    model = FlexiDiT(cfg).eval()
    return model, {p: model.static(p) for p in cfg.patch_sizes}


@torch.inference_mode()
def time_forward(module, batch: int, reps: int = 3, clock=time.perf_counter) -> float:
    x = torch.randn(batch, 1, 32, 32)
    t = torch.full((batch,), 500, dtype=torch.long)
    y = torch.arange(batch) % 11  # 10 classes + the null class
    best = []
    for _ in range(reps):
        t0 = clock()
        module(x, t, y)
        best.append(clock() - t0)
    return min(best)  # the least disturbed of a few back-to-back forwards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=SIZES, help="depth x width x heads, comma-separated")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=20, help="run's batch: 10 images × CFG")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--default-seconds", type=float, default=33.0, help="the default's run, sampling only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time (robust to other load at --threads 1; at more threads "
                    "it counts spin-waits)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if DEFAULT not in sizes:
        sizes.insert(0, DEFAULT)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, batch {args.batch}",
          flush=True)  # fmt: skip
    built = {s: engines(*s) for s in sizes}
    for _, eng in built.values():  # warm-up
        for m in eng.values():
            time_forward(m, args.batch, reps=1)
    samples = {s: {2: [], 4: []} for s in sizes}
    for r in range(args.rounds):
        for s in sizes if r % 2 == 0 else reversed(sizes):
            for p, m in built[s][1].items():
                samples[s][p].append(time_forward(m, args.batch, clock=clock))
    rows = []
    for s in sizes:
        model, _ = built[s]
        macs = {p: model.macs(p) for p in (2, 4)}
        schedule = plan(args.budget, args.steps, macs, "cfg").patch_per_step
        n4, n2 = schedule.count(4), schedule.count(2)
        t2, t4 = (statistics.median(samples[s][p]) for p in (2, 4))
        rows.append(dict(depth=s[0], width=s[1], heads=s[2], params_m=model.num_parameters() / 1e6,
                         gmacs_p2=macs[2] / 1e9, n4=n4, n2=n2, t2_ms=1e3 * t2, t4_ms=1e3 * t4,
                         loop_s=n4 * t4 + n2 * t2))  # fmt: skip
    ref = next(r for r in rows if (r["depth"], r["width"], r["heads"]) == DEFAULT)
    print(
        "| depth | width | heads | params M | GMAC p2 | plan b0.5 | p2 ms | p4 ms | p2 ratio | loop ratio | run s (pred.) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["p2_ratio"] = r["t2_ms"] / ref["t2_ms"]
        r["loop_ratio"] = r["loop_s"] / ref["loop_s"]
        r["run_s_pred"] = r["loop_ratio"] * args.default_seconds
        print(f"| {r['depth']} | {r['width']} | {r['heads']} | {r['params_m']:.2f} | {r['gmacs_p2']:.3f} | "
              f"p4×{r['n4']} → p2×{r['n2']} | {r['t2_ms']:.1f} | {r['t4_ms']:.1f} | {r['p2_ratio']:.2f} | "
              f"{r['loop_ratio']:.2f} | {r['run_s_pred']:.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
