"""LEO in the few-shot engine, on the frozen encoder of a pre-training experiment it
`needs` (omniglot_small): it starts from that encoder, resumes exactly, restarts when the
needed model changes, and `fewshot predict` answers as the evaluator does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fewshot_helpers import (
    assert_crash_resumes_exactly,
    fewshot_experiment,
    prepared_omniglot_small,
    stage_context,
)
from test_fewshot_predict import predict_csv, write_folders
from tolerance import assert_close_reordered

from hypermeta.data.episodes import EpisodeSetting
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import FewShotEngine, encoded_split, episode_logits, split_sampler
from hypermeta.errors import HypermetaError
from hypermeta.methods.leo import LEO

TRAIN = {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 6, "val_every": 3,
         "val_episodes": 2, "device": "cpu"}  # fmt: skip
LEO_SECTION = {
    "method": "leo",
    "needs": ["pre"],
    "model": {"hidden": 8, "latent": 4, "inner_steps": 2, "finetune_steps": 1},
    "train": TRAIN,
    "eval": {"batchnorm": "running_stats"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working folder holding omniglot_small and a briefly trained `pre` (pretrain)."""
    root = tmp_path_factory.mktemp("leo")
    data_dir = prepared_omniglot_small(root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # where `models/<needed>/model.pt` is looked for
        torch.set_num_threads(1)
        pre = fewshot_experiment(
            {"method": "pretrain", "model": {"hidden": 8}, "train": TRAIN,
             "eval": {"batchnorm": "running_stats"}},
            name="pre",
        )  # fmt: skip
        FewShotEngine().train(stage_context(pre, data_dir, root))
        yield root, data_dir


def leo_context(project, folder: str, section: dict = LEO_SECTION):
    root, data_dir = project
    return stage_context(fewshot_experiment(section, name="leo"), data_dir, root / folder)


def test_leo_freezes_the_needed_encoder_and_resumes_exactly(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    engine = FewShotEngine()
    straight = leo_context(project, "straight")
    engine.train(straight)
    learner, _ = load_trained(straight.model_path)
    pretrained, _ = load_trained(root / "models/pre/model.pt")
    for name, value in pretrained.encoder.state_dict().items():
        assert torch.equal(learner.features.state_dict()[name], value), name

    resumed = leo_context(project, "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, LEO, monkeypatch)


def test_a_changed_needed_model_restarts_training(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    ctx = leo_context(project, "hash")
    before = ctx.training_hash()
    model = Path("models/pre/model.pt")
    kept = model.read_bytes()
    try:
        model.write_bytes(kept + b"retrained")
        assert ctx.training_hash() != before
    finally:
        model.write_bytes(kept)
    assert ctx.training_hash() == before


def test_leo_without_a_needed_encoder_is_one_sentence(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    ctx = leo_context(project, "alone", {**LEO_SECTION, "needs": []})
    with pytest.raises(HypermetaError, match="list exactly one under needs"):
        FewShotEngine().train(ctx)


def test_predict_gives_the_evaluators_answers_on_the_same_episode(project, monkeypatch, tmp_path):
    root, _ = project
    monkeypatch.chdir(root)
    ctx = leo_context(project, "predict")
    FewShotEngine().train(ctx)
    learner, saved = load_trained(ctx.model_path)
    sampler = split_sampler(ctx.data_dir, "test", saved["data_info"], torch.device("cpu"))
    setting = EpisodeSetting(n_way=5, k_shot=2, query=3)
    index = sampler.fixed_episodes(setting, 1, seed=0)
    # the evaluator's path: every test image encoded once, logits from the features
    features = encoded_split(learner, sampler, "running_stats", amp=False)
    with learner.meta_test("running_stats"):
        expected = learner.feature_logits(features.gather(setting, index))[0].softmax(-1)
    # the same episode from images, as validation runs it, agrees
    from_images = episode_logits(learner, sampler.gather(setting, index), "running_stats")
    torch.testing.assert_close(from_images[0].softmax(-1), expected, atol=1e-5, rtol=1e-4)

    raw = sampler.images[index.classes[0].unsqueeze(-1), index.drawings[0]]
    folders, names = write_folders(tmp_path, raw, setting.k_shot, setting.query)
    rows = predict_csv(ctx.model_dir, folders, tmp_path / "preds.csv")
    assert [row["query"] for row in rows] == names
    classes = [f"class{label}" for label in range(setting.n_way)]
    assert [row["predicted_class"] for row in rows] == [
        classes[i] for i in expected.argmax(-1).tolist()
    ]
    scores = torch.tensor([[float(row[f"score_{c}"]) for c in classes] for row in rows])
    assert_close_reordered(scores, expected)
