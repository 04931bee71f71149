"""Why does aoti_load_package crash on the GPU machine? One run, several loads in subprocesses.

    python3 benchmarks/aoti_probe.py OUT_DIR

Compiles a tiny CUDA model with AOTInductor (default options, and without precompiled headers), then
loads each package in fresh subprocesses: plain, with the toolchain's libstdc++ preloaded
(LD_PRELOAD), and with it dlopen'ed RTLD_GLOBAL before torch is imported. Prints which libstdc++ each
process mapped, the package's wrapper.so dependencies, and each load's exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

LOAD = r"""
import ctypes, os, sys, time
pre = os.environ.get("PROBE_DLOPEN")
if pre:
    ctypes.CDLL(pre, mode=ctypes.RTLD_GLOBAL)
import torch
def libs():
    return sorted({l.split()[-1] for l in open("/proc/self/maps") if "libstdc++" in l or "libgcc_s" in l})
print("before load:", libs(), flush=True)
t0 = time.perf_counter()
fn = torch._inductor.aoti_load_package(sys.argv[1])
print(f"loaded in {time.perf_counter() - t0:.2f} s; after load:", libs(), flush=True)
x = torch.randn(4, 64, device="cuda")
out = fn(x)
torch.cuda.synchronize()
ref = torch.load(sys.argv[2])
m = ref["m"].cuda()
err = ((out - m(x)).abs().max() / m(x).abs().max()).item()
print(f"ran: rel err {err:.2e}", flush=True)
if os.environ.get("PROBE_HARD_EXIT"):
    os._exit(0)
"""


def sh(cmd: str) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    import torch

    report: dict = {"torch": torch.__version__, "gxx": sh("g++ --version | head -1")}
    gxx_lib = sh("readlink -f $(g++ -print-file-name=libstdc++.so.6)")
    report["gxx_libstdcxx"] = gxx_lib
    report["ldconfig_libstdcxx"] = sh("ldconfig -p | grep -E 'libstdc\\+\\+|libgcc_s'")
    report["python_maps_after_torch"] = sorted(
        {l.split()[-1] for l in Path("/proc/self/maps").read_text().splitlines() if "libstdc++" in l}
    )
    print(json.dumps(report, indent=1), flush=True)

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 32)).cuda().eval()
    torch.save({"m": m.cpu()}, out / "ref.pt")
    m.cuda()
    x = torch.randn(4, 64, device="cuda")
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
    variants = {
        "default": {},
        "no_pch": {"aot_inductor.precompile_headers": False},
    }
    packages = {}
    for name, opts in variants.items():
        t0 = time.perf_counter()
        try:
            path = torch._inductor.aoti_compile_and_package(
                ep, package_path=str(out / f"{name}.pt2"), inductor_configs=opts
            )
            packages[name] = path
            print(f"compiled {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as err:
            print(f"compile {name} failed: {err!r}"[:2000], flush=True)
    if "default" in packages:
        with zipfile.ZipFile(packages["default"]) as z:
            sos = [n for n in z.namelist() if n.endswith(".so")]
            print("package .so files:", sos, flush=True)
            for n in sos:
                z.extract(n, out / "unz")
                p = out / "unz" / n
                print(f"--- {n}\n" + sh(f"ldd {p}"), flush=True)
                print(sh(f"readelf -d {p} | grep -E 'NEEDED|RPATH|RUNPATH'"), flush=True)
                print(
                    "regex/locale symbols (undefined U / defined T,W):\n"
                    + sh(
                        f"nm -D --defined-only {p} | grep -c -E 'regex|locale'; nm -D -u {p} | grep -E 'locale' | head -5"
                    ),
                    flush=True,
                )
    trials = []
    for name, path in packages.items():
        for label, env in [
            ("plain", {}),
            ("plain_hard_exit", {"PROBE_HARD_EXIT": "1"}),
            ("ld_preload", {"LD_PRELOAD": gxx_lib, "PROBE_HARD_EXIT": "1"}),
            ("dlopen_global", {"PROBE_DLOPEN": gxx_lib, "PROBE_HARD_EXIT": "1"}),
        ]:
            t0 = time.perf_counter()
            try:
                r = subprocess.run(
                    [sys.executable, "-c", LOAD, path, str(out / "ref.pt")],
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    timeout=90,
                )
                rc, text = r.returncode, (r.stdout + r.stderr)[-1500:]
            except subprocess.TimeoutExpired as err:
                rc, text = "timeout", str(err.stdout)[-1500:]
            trials.append({"package": name, "load": label, "rc": rc, "s": round(time.perf_counter() - t0, 1)})
            print(f"== {name} / {label}: rc {rc} ({time.perf_counter() - t0:.1f} s)\n{text}", flush=True)
    (out / "probe.json").write_text(json.dumps({**report, "trials": trials}, indent=1))
    print("\n| package | load | rc | s |\n|---|---|---|---|")
    for t in trials:
        print(f"| {t['package']} | {t['load']} | {t['rc']} | {t['s']} |")


if __name__ == "__main__":
    main()
