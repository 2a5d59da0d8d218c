import copy

import pytest
from unit.helpers import BASE_PARAMS, load, write_params

from hypermeta.config import split_config
from hypermeta.errors import HypermetaError
from hypermeta.experiments import resolve, set_profile


def changed(**edits):
    params = copy.deepcopy(BASE_PARAMS)
    for path, value in edits.items():
        *parents, last = path.split("__")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    return params


def test_profile_overrides_are_merged_and_validated(tmp_path):
    params = load(tmp_path)
    quick = resolve(params, "cnn")
    paper = resolve(params, "cnn", "paper")
    assert (quick.dataset, paper.dataset) == ("fashion_mnist", "mnist")
    assert quick.train.epochs == 2 and quick.model.kernel_size == 3
    assert quick.params_hash != paper.params_hash


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ({"experiments__cnn__train__lr": "fast"}, "experiments.cnn.train.lr"),
        # a quoted number is a string, not silently the number
        ({"experiments__cnn__train__epochs": "3"}, "experiments.cnn.train.epochs"),
        ({"experiments__cnn__train__lr": "0.01"}, "experiments.cnn.train.lr"),
        ({"experiments__cnn__train__amp": "yes"}, "experiments.cnn.train.amp"),
        ({"experiments__cnn__resources": {"mem_mb": "4000"}}, "experiments.cnn.resources.mem_mb"),
        ({"experiments__cnn__train__epoks": 3}, "experiments.cnn.train.epoks is not a known key"),
        ({"experiments__cnn__model__filters": -1}, "experiments.cnn.model.filters"),
        ({"experiments__cnn__method": "nope"}, "unknown method 'nope'"),
        ({"data__datasets__quick": ["imagenet"]}, "unknown dataset 'imagenet'"),
        ({"profile": "huge"}, "profile 'huge' is not defined"),
        ({"experiments__cnn__train__device": "tpu"}, "experiments.cnn.train.device"),
        ({"surprise": 1}, "surprise is not a known key"),
        (  # a typo inside a profile override is named where it is written
            {"experiments__cnn__profiles__quick__train": {"epoks": 3}},
            "experiments.cnn.profiles.quick.train.epoks is not a known key",
        ),
        ({"experiments__cnn__dataset": "imagenet"}, "cnn.dataset: unknown dataset 'imagenet'"),
        (  # its stages depend on its method's code (dvc.yaml), the same under every profile
            {"experiments__cnn__profiles__quick__method": "hypercnn"},
            "experiments.cnn.profiles.quick.method: a profile cannot change",
        ),
        (
            {"experiments__cnn__profiles": {"fast": {}}},
            "experiments.cnn.profiles names 'fast', not a defined profile",
        ),
    ],
)
def test_bad_params_name_the_key_path(tmp_path, edits, expected):
    with pytest.raises(HypermetaError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        load(tmp_path, changed(**edits))


def test_the_fingerprint_is_of_the_validated_values(tmp_path):
    """An int for a float, or a default written out, is the same experiment: the same
    params hash, so its checkpoint resumes; YAML's own types are accepted as they are."""
    base = resolve(load(tmp_path), "cnn")
    assert isinstance(base.train.lr, float) and base.train.epochs == 2
    same = [
        changed(experiments__cnn__train__lr=0.01, experiments__cnn__train__lr_decay=1),
        changed(experiments__cnn__train__seed=0, experiments__cnn__resources={"gpu": 0}),
    ]
    for params in same:
        assert resolve(load(tmp_path, params), "cnn").params_hash == base.params_hash
    as_int = resolve(load(tmp_path, changed(experiments__cnn__train__lr_decay=1)), "cnn")
    assert as_int.train.lr_decay == 1.0 and as_int.section["train"]["lr_decay"] == 1.0
    other = resolve(load(tmp_path, changed(experiments__cnn__train__epochs=3)), "cnn")
    assert other.params_hash != base.params_hash


def test_a_missing_key_is_named_without_dumping_its_section(tmp_path):
    params = changed()
    del params["experiments"]["cnn"]["method"]
    with pytest.raises(HypermetaError) as error:
        load(tmp_path, params)
    assert str(error.value) == "params.yaml: experiments.cnn.method is required; add it."


def test_dataset_must_be_listed_for_the_profile(tmp_path):
    params = changed(data__datasets__quick=["mnist"])
    with pytest.raises(HypermetaError, match="does not list it; add it there"):
        load(tmp_path, params)


def test_data_split_is_overridden_per_profile_and_checked(tmp_path):
    split = {"seed": 2, "omniglot": "vinyals", "profiles": {"quick": {"omniglot": "lake"}}}
    params = load(tmp_path, changed(data__split=split))
    assert split_config(params).omniglot == "lake" and split_config(params).seed == 2
    assert split_config(params, "paper").omniglot == "vinyals"
    split["profiles"]["quick"]["omniglot"] = "random"
    with pytest.raises(HypermetaError, match=r"data\.split\.profiles\.quick\.omniglot"):
        load(tmp_path, changed(data__split=split))
    with pytest.raises(HypermetaError, match="undefined profile"):
        load(tmp_path, changed(data__split={"profiles": {"huge": {}}}))


def test_an_experiment_picks_the_cut_of_its_dataset_and_the_folder_it_reads(tmp_path):
    params = copy.deepcopy(BASE_PARAMS)
    params["data"]["datasets"] = {"quick": ["omniglot", "mnist"], "paper": ["omniglot", "mnist"]}
    few_shot_eval = {"batchnorm": "transductive"}
    params["experiments"] = {
        "default": {"method": "protonet", "dataset": "omniglot", "eval": few_shot_eval},
        "papers": {
            "method": "protonet",
            "dataset": "omniglot",
            "eval": few_shot_eval,
            "split": "vinyals",
            "profiles": {"quick": {"split": "lake"}},
        },  # fmt: skip
        "digits": {"method": "cnn", "dataset": "mnist"},
    }
    loaded = load(tmp_path, params)
    cuts = {
        (name, profile): (exp.split, exp.data_name)
        for name in params["experiments"]
        for profile in ("quick", "paper")
        for exp in [resolve(loaded, name, profile)]
    }
    assert cuts == {
        ("default", "quick"): ("lake", "omniglot-lake"),  # data.split.omniglot's default
        ("default", "paper"): ("lake", "omniglot-lake"),
        ("papers", "quick"): ("lake", "omniglot-lake"),
        ("papers", "paper"): ("vinyals", "omniglot-vinyals"),
        ("digits", "quick"): (None, "mnist"),  # cut one way: the dataset's own folder
        ("digits", "paper"): (None, "mnist"),
    }
    from hypermeta.report import mixed_data_note

    on_paper = [resolve(loaded, name, "paper") for name in ("default", "papers")]
    assert mixed_data_note(on_paper) == (
        "Not one data set: default on omniglot-lake; papers on omniglot-vinyals. Their test "
        "episodes differ; compare within one."
    )
    assert mixed_data_note([resolve(loaded, name) for name in ("default", "papers")]) == ""
    # `split` enters the fingerprint only where there is a choice
    assert "split" not in resolve(loaded, "digits").section
    params["data"]["split"] = {"omniglot": "vinyals"}
    assert resolve(load(tmp_path, params), "default").data_name == "omniglot-vinyals"
    for experiment, split, message in (
        ("default", "random", r"default\.split: 'random' is not a split of 'omniglot'; use "
         r"one of \['lake', 'vinyals'\]"),
        ("digits", "lake", r"digits\.split: dataset 'mnist' is cut one way only; remove"),
    ):  # fmt: skip
        params["experiments"][experiment]["split"] = split
        with pytest.raises(HypermetaError, match=message):
            load(tmp_path, params)
        del params["experiments"][experiment]["split"]


def test_every_dataset_cut_several_ways_has_a_default_cut():
    from hypermeta.config import SplitConfig
    from hypermeta.data.registry import DATASETS

    for spec in DATASETS.values():
        if spec.split_protocols:
            field = SplitConfig.model_fields[spec.name]
            assert set(field.annotation.__args__) == set(spec.split_protocols)


def test_unknown_experiment_lists_the_known_ones(tmp_path):
    with pytest.raises(HypermetaError, match=r"unknown experiment 'cnnn'.*\['cnn'\]"):
        resolve(load(tmp_path), "cnnn")


def test_set_profile_keeps_comments_and_refuses_unknown_profiles(tmp_path):
    path = write_params(tmp_path)
    path.write_text("# keep me\n" + path.read_text())
    assert set_profile(path, "paper") is True
    assert path.read_text().startswith("# keep me\n") and "profile: paper" in path.read_text()
    before = path.read_text()
    with pytest.raises(HypermetaError, match="profile 'huge' is not defined"):
        set_profile(path, "huge")
    assert path.read_text() == before
