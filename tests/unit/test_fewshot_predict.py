"""`hypermeta fewshot predict` answers exactly as the evaluator does on the same episode,
and bad folders get one clear sentence."""

from __future__ import annotations

import csv
import shutil
from typing import get_args

import pytest
import torch
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context
from PIL import Image
from tolerance import assert_close_reordered
from torch import nn

from hypermeta.cli import main
from hypermeta.data.episodes import EpisodeSetting
from hypermeta.data.prepare import load_split
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import FewShotEngine, check_ways, episode_logits, split_sampler
from hypermeta.errors import HypermetaError
from hypermeta.fewshot_cli import BATCHNORM_NOTES
from hypermeta.methods.fewshot_base import BATCHNORM_REGIMES, BatchNormRegime
from hypermeta.methods.protonet import PrototypicalNetwork

# The methods `predict` is checked with: the reference learner, a gradient learner
# (MAML, tiny: one inner step), whose answers come from adapting on the support set, and
# the support-set hypernetworks, whose answers come from weights generated from it, and
# the other metric learners: Matching Networks (with full context embeddings, whose
# answers depend on the whole support set) and the Relation Network's relation scores; and
# the Siamese network, whose answers are each class's most similar support image; and
# SNAIL, whose answers come from attending over the labelled support sequence; and
# the LSTM meta-learner, whose answers come from a learned optimizer's updates; MANN,
# whose answers come from its memory after reading the labelled support sequence; and Meta
# Networks, whose answers come from fast weights generated from the support gradients.
MODELS = {
    "protonet": {"hidden": 16},
    "matching": {"hidden": 8, "fce": True},
    "relation": {"hidden": 8},
    "maml": {"n_way": 5, "width": 8, "inner_steps": 1},
    "hypernet_fewshot": {"hidden": 8, "code": 8, "generate_block": True},
    "hyperproto": {"hidden": 8, "code": 8},
    "hypermaml": {"hidden": 8, "code": 8, "inner_steps": 2, "update": "learned"},
    "siamese": {"hidden": 8, "features": 16},
    "snail": {"n_way": 5, "hidden": 8, "width": 0.25},
    "lstm_meta_learner": {"n_way": 5, "width": 8, "inner_steps": 2},
    "mann": {"n_way": 5, "controller": 16, "slots": 8, "slot_size": 8, "read_heads": 2},
    "metanet": {"n_way": 5, "width": 8, "depth": 3},
}
# Transductive is the strictest case (every query's answer depends on the whole episode);
# the tests that need just some trained model share this one.
PROTONET_TRANSDUCTIVE = ("protonet", "transductive")


def with_trained(*experiments: tuple[str, str]):
    """Run the test once per (method, eval.batchnorm), with `trained` built for it."""
    return pytest.mark.parametrize("trained", experiments, ids="-".join, indirect=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="module")
def trained(request, data_dir, tmp_path_factory):
    """A briefly trained (method, eval.batchnorm) experiment, as `with_trained` names."""
    torch.set_num_threads(1)
    method, batchnorm = request.param
    exp = fewshot_experiment(
        {
            "method": method,
            "model": MODELS[method],
            "train": {"n_way": 5, "query": 5, "meta_batch": 2, "iterations": 10,
                      "val_every": 10, "val_episodes": 5, "device": "cpu"},
            "eval": {"batchnorm": batchnorm},
        }
    )  # fmt: skip
    ctx = stage_context(exp, data_dir, tmp_path_factory.mktemp(f"{method}-{batchnorm}"))
    FewShotEngine().train(ctx)
    return ctx


def save_png(image: torch.Tensor, path) -> None:
    # back to Omniglot's look (dark ink on white), which predict converts like training data
    Image.fromarray((255 - image[0]).numpy()).save(path)


def write_folders(root, raw: torch.Tensor, k_shot: int, queries: int, save=save_png):
    """support/class<i>/<shot>.png and query/q<i><j>.png under `root` from `raw`
    (N, drawings, 1, H, W): the first `k_shot` drawings support, the next `queries` query.
    Returns the --support/--query flags and the query file names."""
    for label in range(len(raw)):
        (root / "support" / f"class{label}").mkdir(parents=True)
        for shot in range(k_shot):
            save(raw[label, shot], root / "support" / f"class{label}" / f"{shot}.png")
    (root / "query").mkdir()
    names = []
    for label in range(len(raw)):
        for q in range(queries):
            names.append(f"q{label}{q}.png")
            save(raw[label, k_shot + q], root / "query" / names[-1])
    return ["--support", str(root / "support"), "--query", str(root / "query")], names


def drawings_of(ctx, n_way: int = 5, drawings: int = 5) -> torch.Tensor:
    """(n_way, drawings, 1, H, W) prepared test images of the first classes."""
    images = load_split(ctx.data_dir, "test")["images"]
    return images[:n_way, :drawings]


def predict_csv(model_dir, folders, out) -> list[dict[str, str]]:
    assert main(["fewshot", "predict", "--model", str(model_dir), *folders, "--out", str(out)]) == 0
    return list(csv.DictReader(out.open()))


@with_trained(
    PROTONET_TRANSDUCTIVE,
    ("protonet", "running_stats"),
    ("maml", "transductive"),
    ("maml", "per_query"),
    ("hypernet_fewshot", "running_stats"),
    ("hyperproto", "transductive"),
    ("hypermaml", "running_stats"),
    ("matching", "running_stats"),
    ("relation", "transductive"),
    ("siamese", "running_stats"),
    ("snail", "running_stats"),
    ("lstm_meta_learner", "transductive"),
    ("mann", "per_query"),
    ("metanet", "per_query"),
)
def test_predict_gives_the_evaluators_answers_on_the_same_episode(trained, tmp_path):
    ctx = trained
    learner, saved = load_trained(ctx.model_path)
    sampler = split_sampler(ctx.data_dir, "test", saved["data_info"], torch.device("cpu"))
    setting = EpisodeSetting(n_way=5, k_shot=2, query=3)
    index = sampler.fixed_episodes(setting, 1, seed=0)
    episodes = sampler.gather(setting, index)
    batchnorm = ctx.experiment.eval.batchnorm
    expected = episode_logits(learner, episodes, batchnorm)[0].softmax(-1)

    raw = sampler.images[index.classes[0].unsqueeze(-1), index.drawings[0]]  # (N, K+Q, 1, H, W)
    folders, names = write_folders(tmp_path, raw, setting.k_shot, setting.query)
    rows = predict_csv(ctx.model_dir, folders, tmp_path / "preds.csv")
    assert [row["query"] for row in rows] == names
    classes = [f"class{label}" for label in range(setting.n_way)]
    predicted = [classes[i] for i in expected.argmax(-1).tolist()]
    assert [row["predicted_class"] for row in rows] == predicted
    scores = torch.tensor([[float(row[f"score_{c}"]) for c in classes] for row in rows])
    assert_close_reordered(scores, expected)
    # the evaluator's accuracy on this episode is what the CSV's answers score
    truth = episodes.query_y[0].tolist()
    assert sum(p == classes[t] for p, t in zip(predicted, truth, strict=True)) == sum(
        row["predicted_class"] == classes[t] for row, t in zip(rows, truth, strict=True)
    )


@with_trained(
    PROTONET_TRANSDUCTIVE,
    ("protonet", "running_stats"),
    ("maml", "transductive"),
    ("maml", "per_query"),
    ("mann", "per_query"),
)
def test_a_query_scores_alone_as_among_others_exactly_when_batch_norm_is_not_transductive(
    trained, tmp_path, capsys
):
    raw = drawings_of(trained)
    folders, names = write_folders(tmp_path, raw, k_shot=1, queries=2)
    among = predict_csv(trained.model_dir, folders, tmp_path / "all.csv")
    batchnorm = trained.experiment.eval.batchnorm
    assert capsys.readouterr().out.endswith(f"the model uses {BATCHNORM_NOTES[batchnorm]}.\n")
    for name in names[1:]:
        (tmp_path / "query" / name).unlink()
    alone = predict_csv(trained.model_dir, folders, tmp_path / "one.csv")
    assert alone[0]["query"] == among[0]["query"] == names[0]
    scores = [torch.tensor([float(v) for k, v in row.items() if k.startswith("score_")])
              for row in (alone[0], among[0])]  # fmt: skip
    if batchnorm != "transductive":
        assert_close_reordered(scores[0], scores[1])
    else:  # what the note says: the other queries moved this one's scores
        assert (scores[0] - scores[1]).abs().max() > 1e-3


@with_trained(("maml", "transductive"))
def test_the_batchnorm_option_predicts_in_another_regime_the_model_supports(
    trained, tmp_path, capsys
):
    raw = drawings_of(trained)
    folders, names = write_folders(tmp_path, raw, k_shot=1, queries=2)
    per_query = [*folders, "--batchnorm", "per_query"]
    among = predict_csv(trained.model_dir, per_query, tmp_path / "all.csv")
    assert capsys.readouterr().out.endswith(f"the model uses {BATCHNORM_NOTES['per_query']}.\n")
    for name in names[1:]:
        (tmp_path / "query" / name).unlink()
    alone = predict_csv(trained.model_dir, per_query, tmp_path / "one.csv")
    assert alone[0] == among[0]  # a query's scores are its own, to the printed digit
    argv = ["fewshot", "predict", "--model", str(trained.model_dir), *folders,
            "--out", str(tmp_path / "p.csv"), "--batchnorm", "running_stats"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "hypermeta: error: --batchnorm is 'running_stats', which MAML does not support; "
        "use one of transductive, per_query.\n"
    )


def test_predict_help_states_what_each_batch_norm_regime_means(capsys):
    with pytest.raises(SystemExit):
        main(["fewshot", "predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(note in text for note in BATCHNORM_NOTES.values())
    # a meaning and a note for every regime the schema accepts
    assert list(BATCHNORM_NOTES) == list(BATCHNORM_REGIMES) == list(get_args(BatchNormRegime))


@with_trained(PROTONET_TRANSDUCTIVE)
def test_an_inverted_copy_of_the_images_gets_the_same_predictions(trained, tmp_path):
    """User images come dark on light (Omniglot's look) or light on dark (MNIST's)."""
    raw = drawings_of(trained)

    def light_on_dark(image: torch.Tensor, path) -> None:
        Image.fromarray(image[0].numpy()).save(path)  # the prepared images' own polarity

    folders, _ = write_folders(tmp_path / "dark_on_light", raw, k_shot=2, queries=3)
    expected = predict_csv(trained.model_dir, folders, tmp_path / "a.csv")
    folders, _ = write_folders(tmp_path / "light_on_dark", raw, 2, 3, save=light_on_dark)
    assert predict_csv(trained.model_dir, folders, tmp_path / "b.csv") == expected


@with_trained(PROTONET_TRANSDUCTIVE)
def test_bad_folders_get_one_clear_sentence(trained, tmp_path, capsys):
    support, query = tmp_path / "support", tmp_path / "query"
    for name in ("a", "b"):
        (support / name).mkdir(parents=True)
        Image.new("L", (40, 30), 255).save(support / name / "1.png")
    query.mkdir()
    Image.new("L", (40, 30), 255).save(query / "1.jpg")
    argv = ["fewshot", "predict", "--model", str(trained.model_dir), "--support", str(support),
            "--query", str(query), "--out", str(tmp_path / "p.csv")]  # fmt: skip

    (support / "c").mkdir()
    assert main(argv) == 2
    assert "holds no images" in capsys.readouterr().err
    shutil.rmtree(support / "c")

    # what the layout has no place for is refused, not silently ignored
    Image.new("L", (40, 30), 255).save(support / "stray.png")
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith(
        f"support folder {support} holds files directly (stray.png); it should hold one "
        "sub-folder per class, each holding that class's images.\n"
    )
    (support / "stray.png").unlink()
    (support / "a" / "nested").mkdir()
    assert main(argv) == 2
    assert f"support class folder {support / 'a'} holds sub-folders (nested)" in (
        capsys.readouterr().err
    )
    (support / "a" / "nested").rmdir()
    (query / "more").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"query folder {query} holds sub-folders (more); it should hold the images to "
        "classify directly, with no sub-folders.\n"
    )
    assert err.count("\n") == 1
    (query / "more").rmdir()

    (query / "broken.png").write_text("not an image")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "broken.png is not a readable image" in err and err.count("\n") == 1
    (query / "broken.png").unlink()

    assert main([*argv[:3], str(tmp_path / "no_model"), *argv[4:]]) == 2
    assert "run the train stage" in capsys.readouterr().err
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.pt").write_bytes(b"not a model")
    assert main([*argv[:3], str(tmp_path / "corrupt"), *argv[4:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"hypermeta: error: {tmp_path / 'corrupt' / 'model.pt'} is not a file saved by hypermeta"
    )
    assert err.count("\n") == 1
    assert main(argv) == 0


def test_more_classes_than_a_fixed_head_takes_are_refused():
    learner = PrototypicalNetwork(nn.Flatten())
    check_ways(learner, 50, "n_way", "no limit for ProtoNet")  # any number of ways
    learner.max_way = 5  # what a learner with a 5-way output head declares
    check_ways(learner, 5, "n_way", "fine")
    with pytest.raises(HypermetaError, match=r"^the number of classes in s is 6, but this model "):
        check_ways(learner, 6, "the number of classes in s", "remove class folders")
