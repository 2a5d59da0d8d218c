"""params.yaml's schema and reading: the bottom layer (docs/ARCHITECTURE.md), which
imports no method and no engine.

params.yaml holds data sources, profiles and experiments. An experiment is a base
entry plus optional per-profile overrides (`profiles: {quick: {...}}`), deep-merged
here (`merged_entry`). Its `model`, `train` and `eval` sections are checked against the
schemas its method and engine kind declare by hypermeta.experiments, one layer up.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hypermeta.errors import HypermetaError

# libyaml's safe loader where PyYAML has it: the pure-Python one takes 0.15 s on params.yaml.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictModel(BaseModel):
    """A params section: unknown keys are errors, not silently ignored, and values keep
    their YAML types (`epochs: "3"` is an error, not 3); an int is still a float."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Resources(StrictModel):
    gpu: int = Field(0, ge=0, description="GPUs a cluster job asks for")
    mem_mb: int = Field(4000, gt=0)
    runtime: int = Field(60, gt=0, description="minutes")
    threads: int = Field(
        1, gt=0, description="CPU threads of each of its stages (torch's intra-op threads)"
    )


class SplitConfig(StrictModel):
    """How the split stage cuts the datasets of a profile (each manifest records it)."""

    seed: int = 0
    val_fraction: float = Field(0.1, gt=0, lt=1)
    omniglot: Literal["lake", "vinyals"] = Field(
        "lake",
        description="the split of an experiment on the full Omniglot that names none "
        "(its `split:`; see data/omniglot.py)",
    )


class SplitSection(SplitConfig):
    """`data.split`: a SplitConfig plus per-profile overrides, as an experiment has."""

    profiles: dict[str, dict[str, Any]] = {}


class DataConfig(StrictModel):
    mirror: str | None = None
    datasets: dict[str, list[str]]
    split: SplitSection = SplitSection()


class MlflowConfig(StrictModel):
    experiment: str = "hypermeta"


class ExperimentEntry(StrictModel):
    method: str
    dataset: str
    group: str | None = None
    # Experiments whose trained models this one's stages read (`StageContext.needed_model`):
    # its train stage runs after theirs and reruns when their models change (dvc.yaml).
    needs: list[str] = []
    # How its dataset is cut, for a dataset cut in several ways (Omniglot: lake | vinyals);
    # default `data.split.<dataset>`.
    split: str | None = None
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    eval: dict[str, Any] = {}
    resources: Resources = Resources()
    profiles: dict[str, dict[str, Any]] = {}


class Reference(StrictModel):
    """A published number shown beside ours in the report."""

    metric: str
    value: float
    dataset: str
    source: str


class Params(StrictModel):
    profile: str
    profiles: dict[str, str]
    data: DataConfig
    mlflow: MlflowConfig = MlflowConfig()
    experiments: dict[str, ExperimentEntry]
    references: dict[str, list[Reference]] = {}


@dataclass(frozen=True)
class Experiment:
    """One experiment resolved under a profile, every section validated."""

    name: str
    profile: str
    method: str
    kind: str
    dataset: str
    split: str | None  # the protocol its dataset is cut by, where it has several
    group: str | None
    needs: tuple[str, ...]
    model: BaseModel
    train: BaseModel
    eval: BaseModel
    resources: Resources
    section: dict[str, Any]  # the validated section, defaults filled: logged and hashed

    @property
    def params_hash(self) -> str:
        return params_hash({"profile": self.profile, "experiment": self.section})

    @property
    def data_name(self) -> str:
        """Its folder under data/prepared: the dataset as its `split` cuts it."""
        from hypermeta.data.registry import prepared_name

        return prepared_name(self.dataset, self.split)


def params_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe(error: dict[str, Any], prefix: str) -> str:
    path = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
    if error["type"] == "extra_forbidden":
        return f"{path} is not a known key; remove it or check its spelling"
    if error["type"] == "missing":
        return f"{path} is required; add it"
    detail = f"{error['msg']} (got {error.get('input')!r})"
    return f"{path}: {detail}" if path else detail  # the whole file or section is wrong


def _holds(data: Any, loc: tuple) -> bool:
    """Whether the nested mapping `data` has the key path `loc`."""
    for key in loc:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def validate_section(
    schema: type[BaseModel],
    data: Any,
    where: str,
    override: tuple[str, dict[str, Any]] | None = None,
    file: str = "params.yaml",
) -> BaseModel:
    """Validate `data` against `schema`, raising one sentence naming the file and key path.

    `override` is (where, values) of a profile override merged into `data`: a bad key
    that came from it is named where it is written, under `profiles:`."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        if override is not None and _holds(override[1], error["loc"]):
            where = override[0]
        raise HypermetaError(f"{file}: {_describe(error, where)}.") from None


def load_raw(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise HypermetaError(f"{path} not found; run from the project root (where params.yaml is).")
    try:
        data = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise HypermetaError(f"{path} is not valid YAML ({exc}); fix the syntax.") from None
    if not isinstance(data, dict):
        raise HypermetaError(f"{path} must be a mapping of sections (profile, data, experiments).")
    return data


def read_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """params.yaml with its shape, profiles, datasets and references checked, but not each
    experiment's sections: those need every method's schema, importing torch (`load_params`
    checks them)."""
    params = validate_section(Params, load_raw(path), "")
    if profile is not None:
        params = params.model_copy(update={"profile": profile})
    if params.profile not in params.profiles:
        raise HypermetaError(
            f"params.yaml: profile {params.profile!r} is not defined; "
            f"choose one of {sorted(params.profiles)}."
        )
    from hypermeta.data.registry import DATASETS

    for name, datasets in params.data.datasets.items():
        if name not in params.profiles:
            raise HypermetaError(f"params.yaml: data.datasets.{name} names an undefined profile.")
        for dataset in datasets:
            if dataset not in DATASETS:
                raise HypermetaError(
                    f"params.yaml: data.datasets.{name} lists unknown dataset {dataset!r}; "
                    f"known datasets are {sorted(DATASETS)}."
                )
    for profile_name in params.profiles:
        split_config(params, profile_name)
    groups = {entry.group for entry in params.experiments.values()}
    for name in params.references:
        if name not in params.experiments and name not in groups:
            raise HypermetaError(
                f"params.yaml: references.{name} names no experiment and no report group."
            )
    check_needs(params)
    return params


def check_needs(params: Params) -> None:
    """Every `needs:` names another experiment that runs under every profile on the same
    cut of a shared dataset, and no experiment needs itself through others (the DAG would
    have a cycle)."""
    for name, entry in params.experiments.items():
        for needed in entry.needs:
            if needed not in params.experiments:
                raise HypermetaError(
                    f"params.yaml: experiments.{name}.needs names {needed!r}, which is not an "
                    f"experiment; use one of {sorted(set(params.experiments) - {name})}."
                )
            for profile in params.profiles:
                dataset = params.experiments[needed].dataset
                override = params.experiments[needed].profiles.get(profile, {})
                dataset = override.get("dataset", dataset)
                if dataset not in params.data.datasets.get(profile, []):
                    raise HypermetaError(
                        f"params.yaml: experiments.{name}.needs {needed!r}, which cannot run "
                        f"under profile {profile!r} (data.datasets.{profile} lacks its dataset "
                        f"{dataset!r}); add the dataset there or remove {needed!r} from needs."
                    )
                mine, theirs = (merged_entry(params, n, profile)[0] for n in (name, needed))
                if mine["dataset"] == theirs["dataset"] and mine["split"] != theirs["split"]:
                    raise HypermetaError(
                        f"params.yaml: experiments.{name}.needs {needed!r}, which under profile "
                        f"{profile!r} is cut by split {theirs['split']!r}, not {name}'s "
                        f"{mine['split']!r}: its training classes may hold {name}'s test "
                        "classes; give both the same `split`."
                    )

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " → ".join((*path[path.index(name) :], name))
            raise HypermetaError(
                f"params.yaml: the needs of experiments form a cycle ({cycle}); remove one "
                "of these needs."
            )
        for needed in params.experiments[name].needs:
            visit(needed, (*path, name))

    for name in params.experiments:
        visit(name, ())


def split_config(params: Params, profile: str | None = None) -> SplitConfig:
    """`data.split` under a profile (the active one by default), its override merged."""
    profile = profile or params.profile
    section = params.data.split
    if unknown := set(section.profiles) - set(params.profiles):
        raise HypermetaError(
            f"params.yaml: data.split.profiles names undefined profile(s) {sorted(unknown)}; "
            f"use one of {sorted(params.profiles)}."
        )
    override = section.profiles.get(profile, {})
    merged = deep_merge(section.model_dump(exclude={"profiles"}), override)
    return validate_section(
        SplitConfig, merged, "data.split", (f"data.split.profiles.{profile}", override)
    )


def merged_entry(
    params: Params, name: str, profile: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The entry of experiment `name` with the profile's overrides merged, its shape and
    dataset checked (not its sections, see `resolve`); and the override itself."""
    if name not in params.experiments:
        raise HypermetaError(
            f"unknown experiment {name!r}; params.yaml defines {sorted(params.experiments)}."
        )
    profile = profile or params.profile
    entry = params.experiments[name]
    where = f"experiments.{name}"
    unknown = set(entry.profiles) - set(params.profiles)
    if unknown:
        raise HypermetaError(
            f"params.yaml: {where}.profiles names {sorted(unknown)[0]!r}, not a defined "
            f"profile; use one of {sorted(params.profiles)}."
        )
    base = entry.model_dump(exclude={"profiles"})
    override = entry.profiles.get(profile, {})
    if "method" in override:  # dvc.yaml's stages depend on the code of the entry's method
        raise HypermetaError(
            f"params.yaml: {where}.profiles.{profile}.method: a profile cannot change an "
            "experiment's method; define another experiment for it."
        )
    if "needs" in override:  # the DAG is one for every profile (needs.yaml)
        raise HypermetaError(
            f"params.yaml: {where}.profiles.{profile}.needs: a profile cannot change what an "
            "experiment needs; define another experiment for it."
        )
    merged = deep_merge(base, override)
    merged = validate_section(
        ExperimentEntry, merged, where, (f"{where}.profiles.{profile}", override)
    ).model_dump(exclude={"profiles"})
    from hypermeta.data.registry import DATASETS

    if merged["dataset"] not in DATASETS:
        raise HypermetaError(
            f"params.yaml: {where}.dataset: unknown dataset {merged['dataset']!r}; "
            f"known datasets are {sorted(DATASETS)}."
        )
    datasets = params.data.datasets.get(profile, [])
    if merged["dataset"] not in datasets:
        raise HypermetaError(
            f"params.yaml: {where} uses dataset {merged['dataset']!r} in profile {profile!r}, "
            f"but data.datasets.{profile} does not list it; add it there."
        )
    merged["split"] = chosen_split(params, merged, profile, where)
    return merged, override


def chosen_split(params: Params, merged: dict[str, Any], profile: str, where: str) -> str | None:
    """The protocol the experiment's dataset is cut by: its `split:`, else the profile's
    `data.split.<dataset>`; None for a dataset cut one way only."""
    from hypermeta.data.registry import DATASETS

    dataset, split = merged["dataset"], merged["split"]
    protocols = DATASETS[dataset].split_protocols
    if not protocols:
        if split is not None:
            raise HypermetaError(
                f"params.yaml: {where}.split: dataset {dataset!r} is cut one way only; "
                "remove `split`."
            )
        return None
    split = split or getattr(split_config(params, profile), dataset)
    if split not in protocols:
        raise HypermetaError(
            f"params.yaml: {where}.split: {split!r} is not a split of {dataset!r}; "
            f"use one of {list(protocols)}."
        )
    return split
