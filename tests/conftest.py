"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest

from edgeroute.models.store import ModelSet, ensure_models


@pytest.fixture(scope="session")
def models() -> ModelSet:
    """The built digits models in the default cache; built once if missing, then reused."""
    return ensure_models()
