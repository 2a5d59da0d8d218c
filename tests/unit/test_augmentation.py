"""Support-set augmentation (engine/augmentation.py) in the few-shot engine, on
omniglot_small: no query ever reaches the generator, m = 0 changes nothing, copies of the
support drawings leave ProtoNet's logits unchanged, the same seed gives the same result,
and the refusals."""

from __future__ import annotations

import pytest
import torch
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context

from hypermeta.atomic import torch_save
from hypermeta.data.episodes import Episodes, EpisodeSetting
from hypermeta.engine.augmentation import SupportAugmenter
from hypermeta.engine.classification import build_model
from hypermeta.engine.fewshot import FewShotEngine, episode_accuracies, split_sampler
from hypermeta.errors import HypermetaError
from hypermeta.methods.protonet import PrototypicalNetwork
from hypermeta.nn.conv4 import Conv4

TRAIN = {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 2, "val_every": 2,
         "val_episodes": 2, "device": "cpu"}  # fmt: skip
GENERATORS = {
    "vae": {"method": "vae", "model": {"latent_size": 4, "hidden": 4}},
    "gan": {
        "method": "gan",
        "model": {"latent_size": 4, "generator_hidden": [8], "discriminator_hidden": [8]},
    },  # fmt: skip
}


def protonet_section(augment: dict | None, batchnorm: str = "running_stats", **extra) -> dict:
    settings = [{"n_way": 5, "k_shot": 1}]
    eval_section = {"batchnorm": batchnorm, "settings": settings, "episodes": 6, "query": 3}
    if augment is not None:
        eval_section["augment"] = {"settings": settings, **augment}
    return {"method": "protonet", "needs": ["vae", "gan"], "model": {"hidden": 8},
            "train": TRAIN, "eval": eval_section, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """omniglot_small, an untrained VAE and MLP GAN under models/, and a ProtoNet trained
    two meta-iterations (augmentation's mechanics need no good model)."""
    root = tmp_path_factory.mktemp("augment")
    data_dir = prepared_omniglot_small(root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # where `models/<needed>/model.pt` is looked for
        torch.manual_seed(0)
        for name, section in GENERATORS.items():
            info = {"image_shape": [1, 28, 28]}
            saved = {"experiment": section, "data_info": info,
                     "state_dict": build_model(section, info).state_dict()}  # fmt: skip
            (root / "models" / name).mkdir(parents=True)
            torch_save(root / "models" / name / "model.pt", saved)
        exp = fewshot_experiment(protonet_section({"model": "vae", "samples": 0}), name="proto")
        FewShotEngine().train(stage_context(exp, data_dir, root))
        yield root, data_dir


def evaluate(project, augment: dict | None, batchnorm: str = "running_stats") -> dict:
    root, data_dir = project
    exp = fewshot_experiment(protonet_section(augment, batchnorm), name="proto")
    return FewShotEngine().evaluate(stage_context(exp, data_dir, root))


@pytest.mark.parametrize("batchnorm", ["running_stats", "transductive"])  # features, images
def test_no_generated_drawings_leave_the_accuracy_exactly(project, monkeypatch, batchnorm):
    monkeypatch.chdir(project[0])
    metrics = evaluate(project, {"model": "vae", "samples": 0}, batchnorm)
    assert metrics["accuracy_5way_1shot_augmented"] == metrics["accuracy_5way_1shot"]
    assert metrics["accuracy_5way_1shot_augment_baseline"] == metrics["accuracy_5way_1shot"]
    assert metrics["accuracy_5way_1shot_augment_gain"] == 0.0
    assert metrics["accuracy_5way_1shot_augment_gain_ci95"] == 0.0


def test_the_same_seed_gives_the_same_augmented_accuracy(project, monkeypatch):
    monkeypatch.chdir(project[0])
    first = evaluate(project, {"model": "vae", "samples": 2})
    again = evaluate(project, {"model": "vae", "samples": 2})
    other = evaluate(project, {"model": "vae", "samples": 2, "seed": 1})
    keys = ["accuracy_5way_1shot_augmented", "accuracy_5way_1shot_augment_gain"]
    assert [first[k] for k in keys] == [again[k] for k in keys]
    assert first["augment_samples"] == 2 and first["augment_model"] == "vae"
    prefix = evaluate(project, {"model": "vae", "samples": 2, "episodes": 3})
    assert prefix["augment_episodes"] == 3
    assert prefix["accuracy_5way_1shot"] == first["accuracy_5way_1shot"]  # all 6 without
    assert other["accuracy_5way_1shot"] == first["accuracy_5way_1shot"]  # the same episodes


class SpyGenerator:
    """Records every image samples_like is given; draws noise from the generator."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def samples_like(self, images, m, generator):
        self.inputs.append(images.clone())
        return torch.rand((len(images), m, *images.shape[1:]), generator=generator)


def test_no_query_of_an_augmented_episode_reaches_the_generator(project):
    _, data_dir = project
    info = {"mean": 0.1, "std": 0.3}
    sampler = split_sampler(data_dir, "test", info, torch.device("cpu"))
    setting = EpisodeSetting(5, 1, 3)
    index = sampler.fixed_episodes(setting, 4, 0)
    spy = SpyGenerator()
    augmenter = SupportAugmenter(spy, 2, 0, info["mean"], info["std"])
    learner = PrototypicalNetwork(Conv4(hidden=8))
    episode_accuracies(learner, sampler, setting, index, "transductive", 3, False,
                       encode_split=False, augment=augmenter)  # fmt: skip
    episodes = sampler.gather(setting, index)
    assert len(spy.inputs) == len(index)  # one call per episode, its support set alone

    def binary(x):  # the generator's input: the drawings binarised
        return ((x * info["std"] + info["mean"]) * 255 > 127.5).float()

    for seen, support, queries in zip(
        spy.inputs, episodes.support_x, episodes.query_x, strict=True
    ):
        assert torch.equal(seen, binary(support))
        for query in binary(queries):
            assert not any(torch.equal(query, image) for image in seen)


def test_augmented_support_sets_are_k_times_1_plus_m_shots_per_class(project):
    _, data_dir = project
    sampler = split_sampler(data_dir, "test", {"mean": 0.1, "std": 0.3}, torch.device("cpu"))
    setting = EpisodeSetting(5, 2, 3)
    episodes = sampler.gather(setting, sampler.fixed_episodes(setting, 2, 0))
    augmented = SupportAugmenter(SpyGenerator(), 3, 0, 0.1, 0.3).augmented(episodes, ("t",))
    assert augmented.support_x.shape[1] == 5 * 2 * (1 + 3)
    assert torch.equal(augmented.support_y[0], torch.arange(5).repeat_interleave(8))
    assert torch.equal(augmented.support_x[:, :2], episodes.support_x[:, :2])  # real shots first
    assert torch.equal(augmented.query_x, episodes.query_x)


class CopyGenerator:
    """A perfect generator of one kind: m copies of each image it is given."""

    def samples_like(self, images, m, generator):
        return images.unsqueeze(1).expand(-1, m, *images.shape[1:]).clone()


def test_copies_of_the_support_images_leave_protonets_logits_unchanged():
    """A class's prototype is the mean of its support features, so m exact copies of each
    support drawing change no logit: true only if the drawings come back in the split's
    normalisation and each lands in its own class."""
    mean, std = 0.1, 0.3
    generator = torch.Generator().manual_seed(0)
    binary = (torch.rand(2, 5 * 2, 1, 28, 28, generator=generator) > 0.7).float()
    queries = (torch.rand(2, 5 * 3, 1, 28, 28, generator=generator) > 0.7).float()
    episodes = Episodes((binary - mean) / std, torch.arange(5).repeat_interleave(2).repeat(2, 1),
                        (queries - mean) / std, torch.arange(5).repeat_interleave(3).repeat(2, 1),
                        5)  # fmt: skip
    torch.manual_seed(0)
    learner = PrototypicalNetwork(Conv4(hidden=8)).eval()
    augmented = SupportAugmenter(CopyGenerator(), 3, 0, mean, std).augmented(episodes, ("t",))
    with torch.no_grad(), learner.meta_test("running_stats"):
        plain, copied = learner.test_logits(episodes), learner.test_logits(augmented)
    torch.testing.assert_close(copied, plain, rtol=1e-5, atol=1e-5)


def test_refusals_name_the_problem(project, monkeypatch):
    root, data_dir = project
    monkeypatch.chdir(root)
    engine = FewShotEngine()

    def train(section: dict) -> None:
        exp = fewshot_experiment(section, name="refused")
        engine.train(stage_context(exp, data_dir, root / "refused"))

    with pytest.raises(HypermetaError, match="samples_like returns None"):
        train(protonet_section({"model": "gan", "samples": 1}))
    unlisted = protonet_section({"model": "vae", "samples": 1})
    unlisted["needs"] = ["gan"]
    with pytest.raises(HypermetaError, match="does not list it under needs"):
        train(unlisted)
    head = protonet_section(None)
    head |= {"method": "maml", "model": {"n_way": 5, "width": 8}}
    head["eval"] |= {"batchnorm": "transductive", "settings": [{"n_way": 5, "k_shot": 1},
                     {"n_way": 6, "k_shot": 1}]}  # fmt: skip
    head["eval"]["augment"] = {
        "model": "vae",
        "samples": 1,
        "settings": [{"n_way": 6, "k_shot": 1}],
    }
    with pytest.raises(HypermetaError, match="takes at most 5 classes"):
        train(head)
    with pytest.raises(Exception, match="not in settings"):
        fewshot_experiment(
            protonet_section(
                {"model": "vae", "samples": 1, "settings": [{"n_way": 20, "k_shot": 1}]}
            )
        )


def test_augmented_meta_training_repeats_exactly_and_differs_from_plain(project, monkeypatch):
    root, data_dir = project
    monkeypatch.chdir(root)
    engine = FewShotEngine()
    states = {}
    for folder, augment in (("a", {"model": "vae", "samples": 1}), ("b", None), ("c", None)):
        section = protonet_section(None)
        if augment is not None:
            section["train"] = {**TRAIN, "augment": augment}
        ctx = stage_context(fewshot_experiment(section, name="t"), data_dir, root / folder)
        engine.train(ctx)
        states[folder] = torch.load(ctx.model_path, weights_only=True)["state_dict"]
    again = protonet_section(None)
    again["train"] = {**TRAIN, "augment": {"model": "vae", "samples": 1}}
    ctx = stage_context(fewshot_experiment(again, name="t"), data_dir, root / "d")
    engine.train(ctx)
    repeated = torch.load(ctx.model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(repeated[k], v) for k, v in states["a"].items())
    assert all(torch.equal(states["b"][k], v) for k, v in states["c"].items())
    assert not all(torch.equal(states["b"][k], v) for k, v in states["a"].items())


def test_the_report_says_plainly_where_augmentation_does_not_help():
    from hypermeta.report import augmentation_rows

    record = {"augment_model": "vae", "augment_samples": 4, "augment_episodes": 10}
    record |= {"accuracy_5way_1shot_augment_baseline": 0.9, "accuracy_5way_1shot_augmented": 0.92,
               "accuracy_5way_1shot_augment_gain": 0.02,
               "accuracy_5way_1shot_augment_gain_ci95": 0.01}  # fmt: skip
    record |= {"accuracy_20way_1shot_augment_baseline": 0.8, "accuracy_20way_1shot_augmented": 0.7,
               "accuracy_20way_1shot_augment_gain": -0.1,
               "accuracy_20way_1shot_augment_gain_ci95": 0.02}  # fmt: skip
    rows, sentences = augmentation_rows({"proto": record})
    generator = "vae, m = 4, 10 episodes"
    assert rows[0] == ("proto", "5way 1shot", generator, "90.00%", "92.00%", "2.00% ± 1.00%")
    assert rows[1][0] == "proto" and rows[1][1] == "20way 1shot"
    assert any(row[0].startswith("published: Matching Networks") for row in rows)
    assert sentences == [
        "Augmenting with vae, m = 4, 10 episodes lowers the 20way 1shot accuracy of proto "
        "(gain -10.00% ± 2.00%)."
    ]


def test_visualize_draws_one_augmented_support_set(project, monkeypatch):
    from hypermeta.plots.fewshot import FewShotPlotter

    root, data_dir = project
    monkeypatch.chdir(root)
    exp = fewshot_experiment(protonet_section({"model": "vae", "samples": 2}), name="proto")
    paths = FewShotPlotter().visualize(stage_context(exp, data_dir, root))
    assert root / "plots" / "proto" / "augmented_support.png" in paths
    plain = fewshot_experiment(protonet_section(None), name="proto")
    paths = FewShotPlotter().visualize(stage_context(plain, data_dir, root))
    assert not any(path.name == "augmented_support.png" for path in paths)
