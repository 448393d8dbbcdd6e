"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sim_cache(tmp_path_factory):
    """A compiled-simulation cache directory (``EDGESPIKE_CACHE``) of the requesting module's own, so that its
    builds are counted from an empty cache."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESPIKE_CACHE", str(path))
        yield path
