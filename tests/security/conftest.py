"""Fixtures for the auth tests: a throwaway PKI per test, never committed keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.support import Pki, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)
