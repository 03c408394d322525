"""The test tree itself: pytest imports test files by basename (no packages), so two files of one name in different
folders stop the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_every_test_file_has_a_basename_of_its_own():
    names = Counter(path.name for path in (Path(__file__).parents[1]).rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
