import os
from pathlib import Path

import pytest

# Tests share a 2-core machine: keep torch from oversubscribing it.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VARDIST_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"fixtures not found at {FIXTURES}: clone with ../shared beside the repo "
                    f"or set VARDIST_SHARED")
    return FIXTURES
