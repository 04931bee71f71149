"""`flexidit-trt bench`: latency of every backend against its floor and the reference loop, per GPU.

- options.py: the run's options; backends.py: the backends compared, their labels, why one cannot run;
- run.py: the driver, one results file per backend; session.py: what its measurements share;
- trajectories.py: end-to-end trajectories and their speedups; time_plans.py: the time planner on them;
- forwards.py: each engine's forward alone, against its floor, and under torch.profiler (profile.py);
- memory.py: the engines' graphs in one shared pool against one pool per engine;
- measure.py: timing (CUDA events or perf_counter) with warm-up, medians and spread;
- hardware.py: GPU facts (NVML), versions, and the matmul peak and copy bandwidth measured in the run;
- floors.py: the floor of one forward (FLOPs over the peak, weight bytes over the bandwidth);
- reference.py: the reference DiT sampling loop (reference_loop.py, on reference_iddpm.py's schedule) as
  a baseline;
- results.py: the results file's format; report.py: every results file merged into REPORT.md and plots
  (tables.py: its table helper);
- projection.py: trajectories projected onto GPUs not measured, from the per-kernel profiles, and checked
  against a run measured on another GPU; report_projected.py: that part of the report and REPORT.json.
"""

from .options import BenchOptionError, BenchOptions
from .report import Report, build_report
from .run import BenchRun, run_bench

__all__ = ["BenchOptionError", "BenchOptions", "BenchRun", "Report", "build_report", "run_bench"]
