"""hypermeta: hypernetworks and meta-learning as one reproducible pipeline."""

from pathlib import Path

__version__ = "0.1.0"

# Where the per-experiment stages write, relative to the project root (dvc.yaml's outs).
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")


def repo_root() -> Path:
    """The project root: the nearest folder above the working directory holding params.yaml."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").exists():
            return folder
    return here
