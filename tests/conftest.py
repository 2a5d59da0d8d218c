import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("HYPERMETA_DATA_MIRROR") or ROOT.parent / "shared" / "data")
# What the README says is not yet reproduced depends on what the mirror holds; every test
# sees the same mirror however pytest is started (make test and .ci/run set it too).
os.environ.setdefault("HYPERMETA_DATA_MIRROR", str(MIRROR))


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    """Unit tests never talk to MLflow; integration tests re-enable it explicitly."""
    monkeypatch.setenv("HYPERMETA_TRACKING", "off")


@pytest.fixture
def mirror() -> Path:
    if not (MIRROR / "README.md").exists():
        pytest.fail(f"the offline data mirror {MIRROR} is missing; set HYPERMETA_DATA_MIRROR")
    return MIRROR
