"""Fixtures and settings shared by every test layer."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from edgeroute.models.store import ModelSet, ensure_models

# In CI, property tests draw the same examples on every run, so a result can be
# reproduced; locally they explore afresh each time (and keep what failed in .hypothesis).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def models() -> ModelSet:
    """The built digits models in the default cache; built once if missing, then reused."""
    return ensure_models()
