"""Task generation (engine/task_generation.py, data/mixed_episodes.py) and the paired
evaluation against a needed baseline (`eval.paired_with`), on omniglot_small with a
briefly trained VAE: the synthetic classes come from meta-train drawings only, a fraction
of 0 trains bit for bit as real classes alone, the same seed makes the same classes, a
killed run resumes exactly, and bad options are refused in one sentence."""

from __future__ import annotations

import hashlib

import pytest
import torch
from fewshot_helpers import (
    assert_crash_resumes_exactly,
    fewshot_experiment,
    prepared_omniglot_small,
    stage_context,
)
from helpers import untimed

from hypermeta.data.episodes import EpisodeSampler, EpisodeSetting, seeded_generator
from hypermeta.data.mixed_episodes import MixedEpisodeSampler
from hypermeta.data.prepare import load_split
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import FewShotEngine, differing_keys
from hypermeta.engine.generative import GenerativeEngine
from hypermeta.engine.task_generation import GeneratedTasks, generate_classes
from hypermeta.errors import HypermetaError
from hypermeta.methods.generative_base import binarised
from hypermeta.methods.protonet import PrototypicalNetwork
from hypermeta.methods.vae import ConvVAE
from hypermeta.report import paired_note

TRAIN = {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 6, "val_every": 3,
         "val_episodes": 2, "device": "cpu"}  # fmt: skip
EVAL = {"batchnorm": "running_stats", "episodes": 6, "query": 2,
        "settings": [{"n_way": 5, "k_shot": 1}]}  # fmt: skip
GENERATED = {"model": "gen", "classes": 12, "fraction": 0.5}
REAL = {"method": "protonet", "model": {"hidden": 8}, "train": TRAIN, "eval": EVAL}


def taskgen(generated: dict = GENERATED, needs: tuple = ("gen",), **eval_extra) -> dict:
    return {
        **REAL,
        "needs": list(needs),
        "train": {**TRAIN, "generated_tasks": generated},
        "eval": {**EVAL, **eval_extra},
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working folder holding omniglot_small, a briefly trained VAE `gen` and a
    ProtoNet `base` meta-trained on real classes only."""
    root = tmp_path_factory.mktemp("taskgen")
    data_dir = prepared_omniglot_small(root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # where `models/<needed>/model.pt` is looked for
        torch.set_num_threads(1)
        gen = fewshot_experiment(
            {"method": "vae", "model": {"latent_size": 4, "hidden": 4},
             "train": {"iterations": 4, "log_every": 2, "checkpoint_every": 4, "batch_size": 8,
                       "val_images": 8, "device": "cpu"}},
            name="gen",
        )  # fmt: skip
        GenerativeEngine().train(stage_context(gen, data_dir, root))
        FewShotEngine().train(stage_context(fewshot_experiment(REAL, "base"), data_dir, root))
        yield root, data_dir


def context(project, section: dict, folder: str, name: str = "taskgen"):
    root, data_dir = project
    return stage_context(fewshot_experiment(section, name=name), data_dir, root / folder)


def fingerprints(images: torch.Tensor) -> set[str]:
    """One hash per drawing of (N, 1, H, W) floats, as a generative model sees them."""
    return {hashlib.sha256(image.float().numpy().tobytes()).hexdigest() for image in images}


def split_fingerprints(data_dir, split: str) -> set[str]:
    return fingerprints(binarised(load_split(data_dir, split)["images"].flatten(0, 1)))


def test_generated_classes_are_made_from_meta_train_drawings_only(project, monkeypatch):
    root, data_dir = project
    monkeypatch.chdir(root)
    seen = []
    encode = ConvVAE.encode

    def spy(self, images):
        seen.append(images.clone())
        return encode(self, images)

    monkeypatch.setattr(ConvVAE, "encode", spy)
    ctx = context(project, taskgen(), "spied")
    FewShotEngine().train(ctx)
    encoded = fingerprints(torch.cat(seen))
    assert len(encoded) > 100  # the drawings of the source classes, each its own
    assert encoded <= split_fingerprints(data_dir, "train")
    assert not encoded & (
        split_fingerprints(data_dir, "val") | split_fingerprints(data_dir, "test")
    )
    preview = torch.load(ctx.model_path, weights_only=True)["generated_classes"]
    assert preview["classes"].shape[1:] == load_split(data_dir, "train")["images"].shape[1:]


def test_the_same_seed_makes_the_same_classes_and_another_seed_others(project):
    root, data_dir = project
    model, _ = load_trained(root / "models/gen/model.pt")
    images = load_split(data_dir, "train")["images"]
    for kind in ("interpolate", "prior"):
        cfg = GeneratedTasks(model="gen", classes=5, kind=kind)
        first, pairs = generate_classes(model, images, cfg, seed=0)
        again, same_pairs = generate_classes(model, images, cfg, seed=0)
        other, _ = generate_classes(model, images, cfg, seed=1)
        assert torch.equal(first, again) and torch.equal(pairs, same_pairs)
        assert not torch.equal(first, other)
        assert first.shape == (5, *images.shape[1:]) and first.dtype == torch.uint8
        assert first.float().mean(dim=(1, 2, 3, 4)).min() > 0  # no class left blank
        assert (pairs[:, 0] != pairs[:, 1]).all()  # two distinct meta-train classes


def test_episodes_of_generated_classes_are_the_chosen_fraction():
    real = EpisodeSampler(torch.zeros(10, 6, 1, 4, 4, dtype=torch.uint8), 0.0, 1.0)
    extra = torch.full((7, 6, 1, 4, 4), 255, dtype=torch.uint8)
    setting = EpisodeSetting(3, 1, 2)
    alone = real.draw(setting, 400, seeded_generator("t"))
    for fraction, share in ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5)):
        mixed = MixedEpisodeSampler(real, extra, fraction)
        index = mixed.draw(setting, 400, seeded_generator("t"))
        generated = (index.classes >= 10).all(1)
        assert ((index.classes >= 10) == generated[:, None]).all()  # episodes of one kind
        assert generated.float().mean().item() == pytest.approx(share, abs=0.07)
        # the real episodes are those the real split alone draws
        assert torch.equal(index.classes[~generated], alone.classes[~generated])
        assert torch.equal(index.drawings[~generated], alone.drawings[~generated])
        episodes = mixed.gather(setting, index)
        assert torch.equal(episodes.query_x.flatten(1).amax(1) > 0, generated)


def test_a_fraction_of_zero_trains_bit_for_bit_as_real_classes_alone(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    ctx = context(project, taskgen({**GENERATED, "fraction": 0.0}), "zero")
    FewShotEngine().train(ctx)
    ours = torch.load(ctx.model_path, weights_only=True)
    real = torch.load(root / "models/base/model.pt", weights_only=True)
    for key, value in real["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key
    assert untimed(ours["history"]) == untimed(real["history"])


def test_training_with_generated_tasks_resumes_exactly(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    engine = FewShotEngine()
    straight = context(project, taskgen(), "straight")
    engine.train(straight)
    resumed = context(project, taskgen(), "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, PrototypicalNetwork, monkeypatch)
    # and the generated classes changed what it learned
    real = torch.load(root / "models/base/model.pt", weights_only=True)["state_dict"]
    ours = torch.load(straight.model_path, weights_only=True)["state_dict"]
    assert any(not torch.equal(ours[key], value) for key, value in real.items())


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (taskgen(needs=()), "does not list it under needs; add needs: \\[gen\\]"),
        (taskgen({**GENERATED, "model": "nobody"}), "does not list it under needs"),
        (taskgen({**GENERATED, "model": "base"}, needs=("base",)), "cannot encode and decode"),
        (taskgen({**GENERATED, "classes": 3}), "5-way episodes need 5 classes but this split"),
    ],
)
def test_bad_generated_tasks_are_one_sentence(project, monkeypatch, section, message):
    root, _ = project
    monkeypatch.chdir(root)
    ctx = context(project, section, "refused")
    with pytest.raises(HypermetaError, match=message):
        FewShotEngine().train(ctx)
    assert not ctx.model_path.exists()


def test_a_generator_of_another_split_is_refused(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    saved = torch.load(root / "models/gen/model.pt", weights_only=True)
    saved["data_info"]["tensor_md5"]["train"] = "0" * 32
    (root / "models/elsewhere").mkdir(exist_ok=True)
    torch.save(saved, root / "models/elsewhere/model.pt")
    ctx = context(project, taskgen({**GENERATED, "model": "elsewhere"}, needs=("elsewhere",)), "x")
    with pytest.raises(HypermetaError, match="another meta-train split .* could hold meta-test"):
        FewShotEngine().train(ctx)


def test_paired_evaluation_gives_the_difference_on_the_same_episodes(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    engine = FewShotEngine()
    twin = context(project, {**REAL, "needs": ["base"],
                             "eval": {**EVAL, "paired_with": "base"}}, "twin")  # fmt: skip
    engine.train(twin)
    same = engine.evaluate(twin)  # trained as base was: the very same model
    assert same["paired_differs_in"] == "nothing"
    assert same["accuracy_5way_1shot_baseline"] == same["accuracy_5way_1shot"]
    assert same["accuracy_5way_1shot_difference"] == 0.0
    assert same["accuracy_5way_1shot_difference_ci95"] == 0.0

    ctx = context(project, taskgen(needs=("gen", "base"), paired_with="base"), "paired")
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    assert metrics["paired_with"] == "base"
    assert metrics["paired_differs_in"] == "train.generated_tasks"
    assert metrics["accuracy_5way_1shot_baseline"] == same["accuracy_5way_1shot"]
    assert metrics["accuracy_5way_1shot_difference"] == pytest.approx(
        metrics["accuracy_5way_1shot"] - metrics["accuracy_5way_1shot_baseline"]
    )


def test_differing_keys_names_each_changed_leaf():
    a = {"train": {"lr": 1, "generated_tasks": {"classes": 2}}, "model": {"hidden": 8}}
    b = {"train": {"lr": 1, "generated_tasks": None}, "model": {"hidden": 16}}
    assert differing_keys(a, b) == ["model.hidden", "train.generated_tasks"]
    assert differing_keys(a, a) == []


def test_the_report_says_when_a_paired_difference_is_inside_its_ci():
    record = {
        "paired_with": "real_only",
        "paired_differs_in": "train.generated_tasks",
        "accuracy_5way_1shot": 0.91,
        "accuracy_5way_1shot_baseline": 0.90,
        "accuracy_5way_1shot_difference": 0.01,
        "accuracy_5way_1shot_difference_ci95": 0.02,
        "accuracy_20way_1shot": 0.75,
        "accuracy_20way_1shot_baseline": 0.70,
        "accuracy_20way_1shot_difference": 0.05,
        "accuracy_20way_1shot_difference_ci95": 0.01,
    }
    note = paired_note(record)
    assert "Paired with real_only (differs in train.generated_tasks)" in note
    assert "5way_1shot: 91.00% vs 90.00%, difference +1.00 ± 2.00 points" in note
    assert "inside its paired 95% CI: no difference measured" in note
    assert "20way_1shot: 75.00% vs 70.00%, difference +5.00 ± 1.00 points" in note
    assert note.count("inside its paired") == 1
    assert paired_note({"accuracy_5way_1shot": 0.9}) == ""
