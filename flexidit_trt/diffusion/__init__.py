"""Diffusion math: schedules, samplers, guidance and the compute-budget planner (no network code)."""

from .coeffs import StepCoeffs
from .guidance import REFERENCE_GUIDED_CHANNELS, cfg_labels, guide, split_cfg
from .planner import Plan, plan
from .samplers import Sampler, apply_step, make_sampler
from .schedule import SpacedSchedule, linear_betas, q_sample, space_timesteps

__all__ = [
    "REFERENCE_GUIDED_CHANNELS",
    "Plan",
    "Sampler",
    "SpacedSchedule",
    "StepCoeffs",
    "apply_step",
    "cfg_labels",
    "guide",
    "linear_betas",
    "make_sampler",
    "plan",
    "q_sample",
    "space_timesteps",
    "split_cfg",
]
