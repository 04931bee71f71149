"""`flexidit-trt bench`: latency of every backend against its floor and the reference loop, per GPU.

- measure.py: timing (CUDA events or perf_counter) with warm-up, medians and spread;
- hardware.py: GPU facts (NVML), versions, and the matmul peak and copy bandwidth measured in the run;
- floors.py: the floor of one forward (FLOPs over the peak, weight bytes over the bandwidth);
- profile.py: torch.profiler over one engine's forward: kernels, busy vs wall, time by category, the limit;
- reference.py: the reference DiT sampling loop (reference_loop.py, on reference_iddpm.py's schedule) as
  a baseline;
- run.py: the driver, one results file per backend; results.py: that file's format;
- report.py: every results file merged into REPORT.md and PNG plots.
"""

from .options import BenchOptionError, BenchOptions
from .report import Report, build_report
from .run import BenchRun, run_bench

__all__ = ["BenchOptionError", "BenchOptions", "BenchRun", "Report", "build_report", "run_bench"]
