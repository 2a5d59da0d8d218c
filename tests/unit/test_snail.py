"""SNAIL: causal masks (no step sees a later one), the query's own label and the other
queries unseen, TC depth ⌈log₂ T⌉ with dilations 1, 2, 4, …, the fixed-size head, the
attention maps (causal, rows summing to 1, the weights the blocks read with, drawn by the
visualize stage), and learning omniglot_small 5-way 1-shot far above chance through the
engine."""

from __future__ import annotations

import pytest
import torch
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context

from hypermeta.data.episodes import Episodes
from hypermeta.engine.fewshot import FewShotEngine
from hypermeta.errors import HypermetaError
from hypermeta.methods.fewshot_base import embedded_per_episode
from hypermeta.methods.snail import SNAIL, TCBlock, tc_depth
from hypermeta.nn.conv4 import Conv4
from hypermeta.plots.fewshot import FewShotPlotter


def small_snail(n_way: int = 5, k_shot: int = 1) -> SNAIL:
    torch.manual_seed(0)
    return SNAIL(Conv4(hidden=8), n_way, k_shot, width=0.25).double().eval()


def run_sequence(model: SNAIL, sequence: torch.Tensor) -> torch.Tensor:
    """Every step's output for plain sequences (B, T, C): all steps as the prefix."""
    prefix, _ = model.sequence((sequence, sequence[:, :0]))
    return prefix


@pytest.mark.parametrize(("length", "depth"), [(2, 1), (6, 3), (8, 3), (9, 4), (21, 5), (101, 7)])
def test_tc_depth_is_the_base_two_log_rounded_up(length, depth):
    assert tc_depth(length) == depth
    block = TCBlock(4, length, 3)
    assert [b.conv.dilation for b in block.blocks] == [2**i for i in range(depth)]
    assert [b.conv.conv.dilation for b in block.blocks] == [(2**i,) for i in range(depth)]


def test_tc_block_keeps_the_sequence_length_and_adds_its_filters_per_layer():
    block = TCBlock(4, 6, 3)
    prefix, query = block((torch.randn(2, 6, 4), torch.randn(2, 5, 4)))
    assert prefix.shape == (2, 6, 4 + 3 * 3) and query.shape == (2, 5, 4 + 3 * 3)
    assert block.out_channels == 4 + 3 * 3


def test_a_later_step_never_changes_an_earlier_steps_output():
    model = small_snail()
    sequence = torch.randn(3, 6, 8 + 5, dtype=torch.float64)
    before = run_sequence(model, sequence)
    for t in range(6):
        changed = sequence.clone()
        changed[:, t:] = torch.randn_like(changed[:, t:])
        after = run_sequence(model, changed)
        assert torch.equal(after[:, :t], before[:, :t]), t
        assert not torch.allclose(after[:, t], before[:, t]), t  # step t does see itself


def episodes_of(model: SNAIL, n_way: int, k_shot: int, queries: int) -> Episodes:
    generator = torch.Generator().manual_seed(1)
    support = torch.randn(2, n_way * k_shot, 1, 28, 28, generator=generator, dtype=torch.float64)
    query = torch.randn(2, queries, 1, 28, 28, generator=generator, dtype=torch.float64)
    labels = torch.arange(n_way).repeat_interleave(k_shot).repeat(2, 1)
    return Episodes(support, labels, query, torch.randint(0, n_way, (2, queries)), n_way)


def test_each_query_is_the_last_step_of_its_own_sequence_after_the_support_set():
    model = small_snail()
    episodes = episodes_of(model, 5, 1, queries=4)
    with torch.no_grad():
        logits = model.query_logits(episodes)
        features = torch.cat([episodes.support_x, episodes.query_x], 1).flatten(0, 1)
        embedded = model.encoder(features).view(2, 9, -1)
        labels = torch.nn.functional.one_hot(episodes.support_y, 5).double()
        support = torch.cat([embedded[:, :5], labels], -1)
        for q in range(4):
            query = torch.cat([embedded[:, 5 + q], torch.zeros(2, 5, dtype=torch.float64)], -1)
            alone = run_sequence(model, torch.cat([support, query[:, None]], 1))[:, -1]
            assert torch.allclose(model.head(alone), logits[:, q]), q


def test_a_query_sees_neither_its_label_nor_another_query():
    model = small_snail()
    episodes = episodes_of(model, 5, 1, queries=4)
    with torch.no_grad():
        logits = model.query_logits(episodes)
        relabelled = model.query_logits(
            Episodes(episodes.support_x, episodes.support_y, episodes.query_x,
                     (episodes.query_y + 1) % 5, 5)
        )  # fmt: skip
        others = episodes.query_x.clone()
        others[:, 1:] = torch.randn_like(others[:, 1:])
        moved = model.query_logits(
            Episodes(episodes.support_x, episodes.support_y, others, episodes.query_y, 5)
        )
    assert torch.equal(relabelled, logits)
    assert torch.allclose(moved[:, 0], logits[:, 0])  # eval-mode batch norm: per image
    assert not torch.allclose(moved[:, 1:], logits[:, 1:])


def test_the_head_takes_fewer_ways_by_its_first_columns_and_refuses_more():
    model = small_snail(n_way=20)
    assert model.max_way == 20
    with torch.no_grad():
        assert model.query_logits(episodes_of(model, 5, 2, queries=3)).shape == (2, 3, 5)
    with pytest.raises(HypermetaError, match="at most 5 classes"):
        small_snail(n_way=5).query_logits(episodes_of(model, 6, 1, queries=3))


def test_attention_maps_are_causal_distributions_that_a_query_shares_with_no_other():
    model = small_snail()
    episodes = episodes_of(model, 5, 1, queries=4)
    with torch.no_grad():
        maps = model.attention_maps(episodes)
    assert len(maps) == 3  # the paper's three attention blocks
    for weights in maps:
        assert weights.shape == (2, 9, 9)
        assert torch.allclose(weights.sum(-1), torch.ones(2, 9, dtype=torch.float64))
        assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # no later step
        queries = weights[:, 5:, 5:]
        assert torch.equal(queries, torch.diag_embed(queries.diagonal(dim1=1, dim2=2)))
        assert (weights.diagonal(dim1=1, dim2=2) > 0).all()  # each step reads itself


def test_attention_maps_are_the_weights_the_blocks_read_with():
    model = small_snail()
    episodes = episodes_of(model, 5, 1, queries=4)
    with torch.no_grad():
        maps = model.attention_maps(episodes)
        embedded = embedded_per_episode(model.encoder, episodes)
        prefix, query = model.inputs(embedded, model.label_slots(embedded))
        attention = model.blocks[0]
        values = attention.split(torch.cat([prefix, query], 1))[2]
        read = maps[0] @ values  # each step's read, from the map alone
        out_prefix, out_query = attention((prefix, query))
    assert torch.allclose(read[:, :5], out_prefix[..., -attention.value_size :])
    assert torch.allclose(read[:, 5:], out_query[..., -attention.value_size :])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.mark.slow
def test_snail_learns_omniglot_small_five_way_one_shot(tmp_path, data_dir):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "snail",
            "model": {"n_way": 5, "k_shot": 1, "hidden": 16, "width": 0.25},
            "train": {"n_way": 5, "k_shot": 1, "query": 5, "meta_batch": 8,
                      "iterations": 300, "lr": 0.003, "val_every": 300, "val_episodes": 20,
                      "device": "cpu"},
            "eval": {"batchnorm": "running_stats", "episodes": 100,
                     "settings": [{"n_way": 5, "k_shot": 1}, {"n_way": 20, "k_shot": 1}]},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    assert metrics["classifier_ways"].startswith("at most 5 (a fixed-size head")
    assert "accuracy_20way_1shot" not in metrics  # over the head: skipped
    # chance is 20% (measured: 62.8%); a broken mask, label input or head stays near chance
    assert metrics["accuracy_5way_1shot"] >= 0.5, metrics
    assert 0 < metrics["accuracy_5way_1shot_ci95"] < 0.06


def test_visualize_draws_the_attention_maps_of_a_test_episode(tmp_path, data_dir):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "snail",
            "model": {"n_way": 5, "k_shot": 1, "hidden": 8, "width": 0.25},
            "train": {"n_way": 5, "k_shot": 1, "query": 2, "meta_batch": 2, "iterations": 2,
                      "val_every": 2, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "running_stats", "episodes": 4,
                     "settings": [{"n_way": 5, "k_shot": 1}]},
        }
    )  # fmt: skip
    ctx = stage_context(exp, data_dir, tmp_path)
    FewShotEngine().train(ctx)
    paths = FewShotPlotter().visualize(ctx)
    assert [p.name for p in paths][-1] == "attention_maps.png"
    assert paths[-1].stat().st_size > 0


def test_training_draws_each_episodes_label_slots_among_the_heads_columns():
    model = small_snail(n_way=20).train()
    episodes = episodes_of(model, 5, 1, queries=4)
    drawn = []
    for iteration in range(10):
        model.on_iteration(iteration, 10)
        drawn += model.label_slots(episodes).tolist()
    assert all(len(set(row)) == 5 and set(row) <= set(range(20)) for row in drawn)
    assert max(max(row) for row in drawn) >= 5 and len({tuple(row) for row in drawn}) > 1
    assert torch.equal(model.eval().label_slots(episodes), torch.arange(5).expand(2, 5))


def test_a_class_slot_is_both_its_label_input_and_its_answer_column():
    model = small_snail(n_way=20).train()
    episodes = episodes_of(model, 5, 1, queries=4)
    with torch.no_grad():
        model.on_iteration(1, 10)
        logits = model.query_logits(episodes)
        model.on_iteration(1, 10)  # the same draws again: slots, then the support order
        embedded = embedded_per_episode(model.encoder, episodes)
        slots = model.label_slots(embedded)
        _, out = model.sequence(model.inputs(embedded, slots))
    assert torch.allclose(logits, model.head(out).gather(-1, slots[:, None].expand(2, 4, 5)))


def test_training_shuffles_the_support_steps_reproducibly_per_iteration():
    model = small_snail().train()
    episodes = episodes_of(model, 5, 1, queries=4)
    losses = []
    for iteration in (3, 3, 4):
        model.on_iteration(iteration, 10)
        losses.append(model.loss(episodes)[0].item())
    assert losses[0] == losses[1]  # the same iteration, the same order: a resume repeats it
    assert losses[0] != losses[2]
