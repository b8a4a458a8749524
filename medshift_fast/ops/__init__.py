"""Public ops. Models and flows call only these; each dispatches to cuda/triton/cpp/reference."""

from .attention import attention
from .attention_block import attention_block
from .cost import PLAN_SAMPLING_MODES, pairwise_sqdist, sample_plan
from .ode import guided_stage, guided_velocity
from .reference import SinkhornResult
from .sinkhorn import sinkhorn

__all__ = [
    "PLAN_SAMPLING_MODES",
    "SinkhornResult",
    "attention",
    "attention_block",
    "guided_stage",
    "guided_velocity",
    "pairwise_sqdist",
    "sample_plan",
    "sinkhorn",
]
