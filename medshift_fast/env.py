"""``medshift env``: versions, the compiled extension's state, and what every op resolves to."""

from __future__ import annotations

import platform


def op_resolution(device: str = "cpu") -> dict[str, str]:
    """{op: the backend a float32 call of it on ``device`` resolves to now} (or the error)."""
    import importlib

    import torch

    from . import _backend
    from .errors import MedShiftError

    att, cost, ode, sinkhorn = (importlib.import_module(f"medshift_fast.ops.{m}")
                                for m in ("attention", "cost", "ode", "sinkhorn"))

    x = torch.zeros(2, 4, device=device)
    q = torch.zeros(1, 1, 4, 8, device=device)
    supported = {
        "guided_stage": ode.supported_backends(x, x, x),
        "attention": att.supported_backends(q, q, q),
        "attention_block": ("triton", "reference"),
        "pairwise_sqdist": cost._supported(cost._SUPPORTED_COST, x, x),
        "sample_plan": cost._supported(cost._SUPPORTED_SAMPLE, x),
        "sinkhorn": sinkhorn._supported(x),
    }
    out = {}
    for op, sup in supported.items():
        try:
            out[op] = _backend.resolve(op, torch.device(device).type, sup)
        except MedShiftError as exc:
            out[op] = f"error: {exc}"
    return out


def report() -> str:
    """The text ``medshift env`` prints."""
    import torch

    from . import __version__, _backend

    lines = [f"medshift_fast {__version__}",
             f"python {platform.python_version()}  torch {torch.__version__}  "
             f"cuda {torch.version.cuda or '-'}  gpu {torch.cuda.is_available()}"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton not installed")
    lines.append(_backend.extension_status()["detail"])
    for name, ok in _backend.available_backends().items():
        lines.append(f"backend {name:10s} {'available' if ok else 'missing'}")
    try:
        pref = _backend.current_backend()
    except Exception as exc:  # noqa: BLE001 - a bad MEDSHIFT_FAST_BACKEND value
        lines.append(f"backend preference: error: {exc}")
        return "\n".join(lines)
    lines.append(f"backend preference: {pref} (use_backend / MEDSHIFT_FAST_BACKEND)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for op, name in op_resolution(dev).items():
            lines.append(f"op {op:16s} {dev:4s} -> {name}")
    return "\n".join(lines)
