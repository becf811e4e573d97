"""TV-L1 solver parameters, shared by every flow backend (no torch or cv2 needed to read them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# OpenCV's constants (tvl1flow.cpp), shared by our solvers
FLOAT_EPS = float(np.finfo(np.float32).eps)  # "grad > numeric_limits<float>::epsilon()"
MIN_LEVEL_SIDE = 16  # the pyramid stops before a level gets a side below this


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's DualTVL1OpticalFlow defaults (checked against cv2.optflow 4.11 getters)."""

    tau: float = 0.25  # time step of the dual (Chambolle) update; OpenCV's and IPOL's default
    lam: float = 0.15  # data-term weight (for intensities in 0..255); lower = smoother flow
    theta: float = 0.3  # coupling between u and the auxiliary v
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8  # OpenCV's default (cv2 4.11 getter), not 0.5
    median_filtering: int = 5
