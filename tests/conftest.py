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


# The files that take longest, first: `make test` hands whole files to two workers in
# collection order (pytest-xdist --dist loadfile), so the quick pipeline (test_pipeline.py,
# most of the run) starts at once on a worker of its own and the rest shares the other.
LONGEST_FIRST = ("test_pipeline.py", "test_cluster.py", "test_reruns.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
