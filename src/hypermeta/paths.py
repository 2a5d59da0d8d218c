"""Where the stages read and write, relative to the project root: dvc.yaml's outputs
(and the Snakefile's, which reads them from dvc.yaml), named once for the code."""

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
NEEDS = Path("needs")  # what each experiment needs of others (hypermeta.dag)


def repo_root() -> Path:
    """The project root: the nearest folder above the working directory holding params.yaml."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").exists():
            return folder
    return here
