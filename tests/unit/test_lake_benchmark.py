"""Lake et al.'s within-alphabet one-shot benchmark: runs of one alphabet's unrotated
characters, two drawers, seeded; and the evaluator's error is the runs' error computed
directly."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import ROOT
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context

from hypermeta.config import Reference, load_raw, read_params
from hypermeta.data.episodes import Episodes
from hypermeta.data.one_shot import LAKE_WAYS, class_alphabets, within_alphabet_runs
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import FewShotEngine
from hypermeta.errors import HypermetaError
from hypermeta.report import comparison_rows
from hypermeta.stats import mean_interval

# A meta-test split as the split stage stores it: every character at 4 rotations, each
# rotation a class; alphabet "small" has too few characters for a 20-way run.
SIZES = {"big": 30, "exact": 20, "small": 12}
ALPHABETS = [a for a, n in SIZES.items() for _ in range(n)] * 4
ROTATION = torch.tensor([0, 90, 180, 270]).repeat_interleave(sum(SIZES.values()))
DRAWERS = 20


def runs(count: int = 50, seed: int = 0):
    return within_alphabet_runs(ALPHABETS, ROTATION, DRAWERS, count, seed)


def test_each_run_is_twenty_unrotated_characters_of_one_alphabet():
    index = runs()
    assert index.classes.shape == (50, LAKE_WAYS) and index.drawings.shape == (50, LAKE_WAYS, 2)
    for classes in index.classes.tolist():
        assert len(set(classes)) == LAKE_WAYS
        assert len({ALPHABETS[c] for c in classes}) == 1
        assert all(ROTATION[c] == 0 for c in classes)
    used = {ALPHABETS[c[0]] for c in index.classes.tolist()}
    assert used == {"big", "exact"}  # both alphabets with 20 characters, never "small"


def test_support_and_query_drawers_differ_and_no_image_is_in_both():
    index = runs()
    for classes, drawings in zip(index.classes.tolist(), index.drawings.tolist(), strict=True):
        support = {(c, d[0]) for c, d in zip(classes, drawings, strict=True)}
        query = {(c, d[1]) for c, d in zip(classes, drawings, strict=True)}
        assert not support & query
        assert len({d[0] for d in drawings}) == 1 and len({d[1] for d in drawings}) == 1
        assert drawings[0][0] != drawings[0][1]
        assert all(0 <= d < DRAWERS for pair in drawings for d in pair)


def test_runs_are_seeded_and_fewer_runs_are_a_prefix():
    a, b, other = runs(seed=3), runs(seed=3), runs(seed=4)
    assert torch.equal(a.classes, b.classes) and torch.equal(a.drawings, b.drawings)
    assert not torch.equal(a.classes, other.classes)
    assert not torch.equal(a.drawings, other.drawings)
    short = runs(count=7, seed=3)
    assert torch.equal(short.classes, a.classes[:7]) and torch.equal(short.drawings, a.drawings[:7])


def test_a_split_without_a_twenty_character_alphabet_gets_one_clear_sentence():
    with pytest.raises(HypermetaError, match="need an alphabet with 20 unrotated characters"):
        within_alphabet_runs(["a"] * 12, torch.zeros(12), DRAWERS, 1, 0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


def test_the_split_stage_stores_drawings_by_drawer(data_dir):
    assert load_manifest(data_dir)["drawings_by_drawer"] is True


def test_the_evaluators_lake_error_is_the_runs_error_computed_directly(tmp_path, data_dir):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "protonet",
            "model": {"hidden": 8},
            "train": {"n_way": 5, "query": 2, "meta_batch": 1, "iterations": 3,
                      "val_every": 3, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "transductive", "settings": [{"n_way": 5, "k_shot": 1}],
                     "episodes": 2, "lake_runs": 4, "seed": 5},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    metrics = engine.evaluate(ctx)

    learner, saved = load_trained(ctx.model_path)
    info, test = saved["data_info"], load_split(data_dir, "test")
    alphabets = class_alphabets(test["character"], info["characters"])
    index = within_alphabet_runs(alphabets, test["rotation"], 20, 4, seed=5)
    errors = []
    for classes, drawings in zip(index.classes, index.drawings, strict=True):
        images = test["images"][classes.unsqueeze(1), drawings].float() / 255 - info["mean"]
        images = images / info["std"]  # (20, 2, 1, H, W): support drawer, query drawer
        labels = torch.arange(LAKE_WAYS).unsqueeze(0)
        episode = Episodes(images[None, :, 0], labels, images[None, :, 1], labels, LAKE_WAYS)
        with learner.meta_test("transductive"):
            logits = learner.test_logits(episode)
        errors.append((logits.argmax(-1) != labels).float().mean())
    error, half = mean_interval(torch.stack(errors))
    assert metrics["lake_trials"] == 4 * LAKE_WAYS
    assert metrics["lake_within_alphabet_error"] == pytest.approx(error, abs=1e-6)
    assert metrics["lake_within_alphabet_error_ci95"] == pytest.approx(half, abs=1e-6)


def test_the_report_prints_a_groups_published_anchors_beside_ours_as_error_rates():
    columns = FewShotEngine.compare_columns
    ours = {"siamese_omniglot": {"lake_within_alphabet_error": 0.25, **{
        "lake_within_alphabet_error_ci95": 0.05}}}  # fmt: skip
    anchor = Reference(metric="lake_within_alphabet_error", value=0.045, dataset="omniglot",
                       source="people (Lake et al. 2015, Fig. 6A)")  # fmt: skip
    unrelated = Reference(metric="test_bpc", value=1.3, dataset="ptb_char", source="x, Table 1")
    rows = comparison_rows(columns, ours, [anchor, unrelated])
    lake = list(columns.values()).index("lake_within_alphabet_error") + 1
    assert rows[0][0] == "siamese_omniglot" and rows[0][lake] == "25.00% ± 5.00%"
    assert rows[1][0] == "published: people (Lake et al. 2015, Fig. 6A)"
    assert rows[1][lake] == "4.50%" and set(rows[1][1:lake]) == {""}
    assert len(rows) == 2  # a reference to no column of the table is not a row


def test_references_may_name_a_report_group_but_not_an_unknown_name(tmp_path):
    assert "fewshot_omniglot" in read_params(ROOT / "params.yaml").references
    params = load_raw(ROOT / "params.yaml")
    params["references"]["no_such_group"] = params["references"]["fewshot_omniglot"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(HypermetaError, match="references.no_such_group names no experiment"):
        read_params(tmp_path / "params.yaml")


def test_lake_runs_refuse_a_split_that_meta_trains_on_the_test_alphabets(tmp_path):
    from hypermeta.engine.fewshot import lake_runs_index

    info = {
        "drawings_by_drawer": True,
        "split_summary": "Vinyals split: 1200 / 423 characters (seed 0), rotations as classes",
        "split_alphabets": {"train": ["Greek", "Latin"], "val": ["Greek"], "test": ["Latin"]},
    }
    with pytest.raises(HypermetaError, match=r"meta-trains on 1 of its meta-test alphabets; use"):
        lake_runs_index(tmp_path, info, 20, 0, "experiments.x.eval")
