"""Triton kernels, installed as medshift_fast.kernels. Imported lazily by the dispatcher."""
