"""Fixtures for the data tests: one small simulated dataset shared by the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory):
    """A 3-subject x 2-view x 5-domain dataset at 32 px (30 PNGs, ~1 s)."""
    from medshift_fast.data import simulate

    root = tmp_path_factory.mktemp("sim") / "ds"
    simulate(root, subjects=3, views=2, size=32, seed=0, progress=False)
    return root
