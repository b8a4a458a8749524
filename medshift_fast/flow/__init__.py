"""Flow matching: coupling (OT/SB), paths, matcher, ODE solvers, guidance, translation."""

from .coupling import COUPLINGS, CouplingConfig, couple, couple_indices
from .guidance import make_field
from .matcher import FlowBatch, SBFlowMatcher
from .paths import sample_t, sb_sample_xt, sb_target
from .sampler import Sampler
from .solvers import SOLVERS, TABLEAUX, integrate, integrate_sde, nfe, stage_ops, time_grid
from .translate import decode, encode, sample, sdedit, translate

__all__ = [
    "COUPLINGS",
    "SOLVERS",
    "CouplingConfig",
    "FlowBatch",
    "SBFlowMatcher",
    "Sampler",
    "couple",
    "couple_indices",
    "decode",
    "encode",
    "TABLEAUX",
    "integrate",
    "integrate_sde",
    "stage_ops",
    "make_field",
    "nfe",
    "sample",
    "sample_t",
    "sb_sample_xt",
    "sb_target",
    "sdedit",
    "time_grid",
    "translate",
]
