"""Continual learning: the hypernetwork output regulariser, forgetting vs. keeping on a
two-task toy sequence, the baselines' bookkeeping, and exact resume from checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close_reordered
from torch import nn
from torch.func import functional_call
from unit.helpers import untimed

from hypermeta.continual.regularizer import lookahead_delta, output_regularizer
from hypermeta.data.continual import TaskSequence, pixel_permutations
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.continual_accuracy import (
    accuracy_as_tasks_arrive,
    inferred_task_correctness,
    mean_matrix,
    task_correctness,
)
from hypermeta.engine.continual_training import (
    ContinualTrain,
    SequenceInterrupted,
    build_learner,
    sequence_info,
    train_sequences,
)
from hypermeta.hyper import (
    effective_parameters,
    effective_size,
    parameter_cost,
    take_parameters,
    target_shapes,
)
from hypermeta.hyper.chunked import ChunkedHypernet
from hypermeta.nn.mainnet import mlp

SMALL_HNET = {"hnet_hidden": [32], "chunk_size": 64, "task_dim": 8, "chunk_dim": 8}


def small_hnet(num_tasks: int = 3) -> ChunkedHypernet:
    torch.manual_seed(0)
    return ChunkedHypernet(target_shapes(mlp(10, [7], 3)), num_tasks, 8, 8, 64, [32])


# ---------------------------------------------------------------- the hypernetwork


def test_chunked_hypernet_generates_every_target_weight_by_name():
    target = mlp(10, [7], 3)
    shapes = take_parameters(target, list(target_shapes(target)))
    hnet = ChunkedHypernet(shapes, num_tasks=2, task_dim=8, chunk_dim=8, chunk_size=64, hidden=[32])
    weights = hnet(1)
    assert {n: w.shape for n, w in weights.items()} == shapes
    assert hnet.num_chunks == -(-sum(s.numel() for s in shapes.values()) // 64)
    logits = functional_call(target, weights, (torch.randn(5, 10),))
    assert logits.shape == (5, 3)
    # Different task embeddings give different networks.
    assert not torch.allclose(weights["0.weight"], hnet(0)["0.weight"])


def test_hnet_activation_sets_the_hypernetworks_hidden_units_only():
    info = {"input_size": 10, "num_tasks": 2, "classes_per_task": 3}
    model = {"hidden": [7], **SMALL_HNET, "hnet_activation": "elu"}
    learner = build_learner({"method": "hnet", "model": model}, info)
    body_units = [type(m) for m in learner.hnet.body if not isinstance(m, torch.nn.Linear)]
    target_units = [type(m) for m in learner.target if not isinstance(m, torch.nn.Linear)]
    assert body_units == [torch.nn.ELU] and target_units == [torch.nn.ReLU]


def test_hnet_counts_the_weights_it_generates_and_the_hypernetwork_it_trains():
    torch.manual_seed(0)
    info = {"input_size": 10, "num_tasks": 2, "classes_per_task": 3}
    learner = build_learner({"method": "hnet", "model": {"hidden": [7], **SMALL_HNET}}, info)
    # By hand: the main MLP 10-7-3 computes with 10·7 + 7 + 7·3 + 3 = 101 weights, all
    # generated; the hypernetwork trains 2 task and ceil(101 / 64) = 2 chunk embeddings
    # of 8, and its body 16-32-64: 16 + 16 + (16·32 + 32) + (32·64 + 64) = 2,688.
    assert sum(p.numel() for p in learner.parameters()) == 2_688
    assert effective_size(learner.network) == learner.main_network_size() == 101
    weights = effective_parameters(learner.network, condition=1)
    assert {n: w.shape for n, w in weights.items()} == {
        "0.weight": (7, 10),
        "0.bias": (7,),
        "2.weight": (3, 7),
        "2.bias": (3,),
    }
    assert parameter_cost(learner.network, "0.weight") == 2_688
    x = torch.randn(5, 10)
    assert torch.equal(learner(x, 1), functional_call(learner.target, learner.hnet(1), (x,)))
    assert torch.equal(learner.all_task_logits(x)[0], learner(x, 0))


# ---------------------------------------------------------------- the regulariser


def test_regularizer_is_zero_when_hypernetwork_unchanged_and_grows_with_change():
    hnet = small_hnet()
    embeddings = hnet.task_embeddings[:2]
    targets = hnet.flat_weights(embeddings).detach()
    assert output_regularizer(hnet, embeddings, targets, beta=0.01).item() == 0.0

    direction = [torch.randn_like(p) for p in hnet.body.parameters()]
    values = []
    for size in (1e-3, 1e-2, 1e-1):
        moved = copy.deepcopy(hnet)
        with torch.no_grad():
            for p, d in zip(moved.body.parameters(), direction, strict=True):
                p.add_(size * d)
        values.append(output_regularizer(moved, embeddings, targets, beta=0.01).item())
    assert 0 < values[0] < values[1] < values[2]
    # Quadratic in the change for small changes: 10x the step, ~100x the penalty.
    assert values[1] / values[0] == pytest.approx(100, rel=0.05)


def test_regularizer_gradient_reaches_hypernetwork_not_targets_or_stored_embeddings():
    hnet = small_hnet()
    embeddings = hnet.task_embeddings[:2].detach().clone().requires_grad_(True)
    targets = (hnet.flat_weights(embeddings) + 0.1).detach().requires_grad_(True)
    output_regularizer(hnet, embeddings, targets, beta=1.0).backward()
    assert targets.grad is None
    assert embeddings.grad is None
    assert hnet.task_embeddings.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hnet.body.parameters())


def test_lookahead_evaluates_the_regularizer_at_theta_plus_delta():
    hnet = small_hnet()
    embeddings = hnet.task_embeddings[:1]
    targets = hnet.flat_weights(embeddings).detach()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    target = mlp(10, [7], 3)
    take_parameters(target, list(target_shapes(target)))
    task_loss = F.cross_entropy(functional_call(target, hnet(2), (x,)), y)
    shared = {n: p for n, p in hnet.named_parameters() if n != "task_embeddings"}
    optimizer = torch.optim.Adam(hnet.parameters(), lr=0.1)
    delta = lookahead_delta(task_loss, shared, optimizer, "sgd")
    stepped = copy.deepcopy(hnet)
    with torch.no_grad():
        for name, p in stepped.named_parameters():
            if name in delta:
                p.add_(delta[name])
    expected = output_regularizer(stepped, embeddings, targets, beta=0.5)
    got = output_regularizer(hnet, embeddings, targets, beta=0.5, delta=delta)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() > 0  # the task step would move task 0's weights; the penalty sees it


def test_adam_lookahead_is_the_change_adam_makes_with_the_same_gradient():
    torch.manual_seed(0)
    warm, fresh = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4))
    optimizer = torch.optim.Adam([warm, fresh], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(3):  # moments and a step count for `warm`; `fresh` has no state yet
        optimizer.zero_grad()
        warm.pow(3).sum().backward()
        optimizer.step()
    assert fresh not in optimizer.state
    task_loss = (warm @ torch.randn(3)).sin().sum() + fresh.exp().sum()
    params = {"warm": warm, "fresh": fresh}
    delta = lookahead_delta(task_loss, params, optimizer, "adam")
    sgd = lookahead_delta(task_loss, params, optimizer, "sgd")
    assert fresh not in optimizer.state  # looking ahead leaves the optimizer as it was
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer.zero_grad()
    task_loss.backward()
    assert torch.equal(sgd["warm"], -0.01 * warm.grad)
    optimizer.step()
    for name, p in params.items():  # equal up to the rounding of the updated weights
        rounding = 2 * torch.finfo(p.dtype).eps * before[name].abs().max().item()
        assert torch.allclose(p.detach() - before[name], delta[name], rtol=0, atol=rounding), name
    # Adam's first step moves every weight by about lr, whatever the gradient's size.
    assert torch.allclose(delta["fresh"].abs(), torch.full((4,), 0.01), rtol=1e-3)


# ---------------------------------------------------------------- task sequences


def toy_split(n: int, seed: int) -> dict[str, torch.Tensor]:
    """8x8 uint8 "images"; the label is which half of the pixels is brighter. Each
    permuted task is the same rule on a different pixel order, so what one task's
    first layer learns is useless, and overwritten, for the next."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    flat = images.flatten(1).float()
    labels = (flat[:, :32].mean(1) > flat[:, 32:].mean(1)).long()
    return {"images": images, "labels": labels}


TOY_INFO = {"num_classes": 2, "mean": 0.5, "std": 0.29}


def toy_splits() -> dict[str, dict[str, torch.Tensor]]:
    return {"train": toy_split(4000, 0), "test": toy_split(1000, 1)}


def test_sequences_split_consecutive_classes_and_permute_pixels_reproducibly():
    labels = torch.arange(10).repeat(3)
    split = {"images": torch.zeros(30, 1, 2, 2, dtype=torch.uint8), "labels": labels}
    info = {"num_classes": 10, "mean": 0.0, "std": 1.0}
    tasks = TaskSequence("split", split, info, 5, seed=0)
    assert tasks.classes_per_task == 2 and tasks.size(3) == 6
    _, y = tasks.batch(3, torch.arange(6))
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    permutations = pixel_permutations(4, 9, seed=3)
    assert torch.equal(permutations, pixel_permutations(4, 9, seed=3))
    assert torch.equal(permutations[0], torch.arange(9))  # the first task is not permuted
    assert all(not torch.equal(p, torch.arange(9)) for p in permutations[1:])
    image = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2)
    permuted = TaskSequence("permuted", {"images": image, "labels": labels[:1]}, info, 2, seed=0)
    x, _ = permuted.batch(1, torch.tensor([0]))
    assert torch.equal(x[0] * 255, torch.arange(4.0)[permuted.permutations[1]])


def run_toy(
    method: str, model: dict, iterations: int, checkpoint: Checkpointer, stop_at=None, **train
):
    cfg = ContinualTrain(
        sequence="permuted",
        num_tasks=2,
        iterations_per_task=iterations,
        batch_size=64,
        lr=train.pop("lr", 3e-3),
        device="cpu",
        **train,
    )
    hooks = {} if stop_at is None else {"stop_at": stop_at}
    section = {"method": method, "model": model}
    return train_sequences(section, cfg, toy_splits(), TOY_INFO, checkpoint, "cpu", **hooks)


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("toy")
    results = {}
    for method, model in {
        # Two hidden units: a network trained directly must reuse them for task 2, while
        # HNET generates a separate pair per task from its embedding.
        "finetune": {"hidden": [2]},
        "hnet": {"hidden": [2], "beta": 0.05, **SMALL_HNET},
        "multitask": {"hidden": [2]},
    }.items():
        saved = run_toy(method, model, 300, Checkpointer(tmp / f"{method}.pt", "toy"))
        results[method] = mean_matrix(saved)
    return results


@pytest.mark.slow
def test_finetuning_forgets_task_one_and_hnet_keeps_it(toy_results):
    finetune, hnet = toy_results["finetune"], toy_results["hnet"]
    # Both learn each task when it is trained (chance is 0.5).
    assert finetune[0, 0] > 0.85 and hnet[0, 0] > 0.85
    assert finetune[1, 1] > 0.85 and hnet[1, 1] > 0.85
    finetune_drop = (finetune[0, 0] - finetune[1, 0]).item()
    hnet_drop = (hnet[0, 0] - hnet[1, 0]).item()
    assert finetune_drop > 0.15, f"fine-tuning kept task 1 ({finetune.tolist()})"
    assert hnet_drop < 0.02, f"HNET forgot task 1 ({hnet.tolist()})"
    assert hnet[1, 0] - finetune[1, 0] > 0.15


def test_multitask_upper_bound_keeps_task_one(toy_results):
    multitask, finetune = toy_results["multitask"], toy_results["finetune"]
    assert multitask[1, 0] > 0.85  # still right on task 1 after training task 2
    assert multitask[1].mean() > finetune[1].mean() + 0.05


# ---------------------------------------------------------------- baselines' bookkeeping


def test_ewc_fisher_is_the_mean_squared_per_example_gradient():
    splits = toy_splits()
    data = TaskSequence("permuted", splits["train"], TOY_INFO, 2, seed=0)
    info = sequence_info(TOY_INFO, data)
    torch.manual_seed(0)
    learner = build_learner({"method": "ewc", "model": {"hidden": [5], "fisher_samples": 20}}, info)
    learner.end_task(0, data)
    positions = torch.randperm(data.size(0), generator=torch.Generator().manual_seed(0))[:20]
    expected = torch.zeros_like(learner.fisher)
    for p in positions:
        x, _ = data.batch(0, p[None])
        logits = learner(x, 0)[0]
        learner.zero_grad()
        torch.log_softmax(logits, -1)[logits.argmax()].backward()
        expected += torch.cat([q.grad.flatten() for q in learner.parameters()]).pow(2)
    assert_close_reordered(learner.fisher, expected / 20)
    assert torch.equal(learner.anchor, learner.flat_parameters())
    assert learner.penalty().item() == 0.0  # at the anchor nothing is paid


def test_si_path_integral_matches_the_loss_decrease_along_the_path():
    splits = toy_splits()
    data = TaskSequence("permuted", splits["train"], TOY_INFO, 2, seed=0)
    torch.manual_seed(0)
    learner = build_learner(
        {"method": "si", "model": {"hidden": [8]}}, sequence_info(TOY_INFO, data)
    )
    x, y = data.batch(0, torch.arange(256))
    optimizer = torch.optim.SGD(learner.parameters(), lr=1e-3)
    learner.begin_task(0)
    start_loss = F.cross_entropy(learner(x, 0), y).item()
    for _ in range(200):
        loss = F.cross_entropy(learner(x, 0), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.after_step()
    decrease = start_loss - F.cross_entropy(learner(x, 0), y).item()
    assert decrease > 0.01
    # Σ_i ω_i = Σ_steps −g·Δθ is the first-order loss decrease (small steps: near exact).
    assert learner.path_integral.sum().item() == pytest.approx(decrease, rel=0.02)


# ---------------------------------------------------------------- exact resume


# Beside its weights, what each method carries from finished tasks to the next one.
MEMORY = {"hnet": ["stored_targets"], "ewc": ["fisher", "anchor"], "si": ["importance", "anchor"]}


@pytest.mark.parametrize(
    ("method", "model", "seeds", "stop"),
    [
        ("hnet", {"hidden": [16], **SMALL_HNET}, [0], (0, 1, 0)),  # between tasks
        # inside task 2, ΔΘ from the optimizer state the checkpoint restores
        ("hnet", {"hidden": [16], **SMALL_HNET, "lookahead": True}, [0], (0, 1, 20)),
        ("hnet", {"hidden": [16], **SMALL_HNET}, [0, 1], (1, 0, 0)),  # between seeds
        ("si", {"hidden": [16]}, [0], (0, 1, 20)),
        ("ewc", {"hidden": [16], "fisher_samples": 50}, [0], (0, 1, 0)),  # between tasks
    ],
)
def test_checkpoint_resumes_the_sequence_exactly(tmp_path, method, model, seeds, stop):
    torch.set_num_threads(1)
    train = {"checkpoint_every": 20, "seeds": seeds}
    whole = run_toy(method, model, 40, Checkpointer(tmp_path / "whole.pt", "toy"), **train)
    checkpoint = Checkpointer(tmp_path / "killed.pt", "toy")
    with pytest.raises(SequenceInterrupted):
        run_toy(method, model, 40, checkpoint, stop_at=lambda *at: at == stop, **train)
    state = checkpoint.load()
    assert state["position"] == stop
    if state["learner"] is not None:  # task 1's memory is in the checkpoint, not zeros
        for name in MEMORY[method]:
            assert torch.count_nonzero(state["learner"][name]) > 0, name
    resumed = run_toy(method, model, 40, checkpoint, **train)
    assert len(resumed["runs"]) == len(seeds)
    for before, after in zip(whole["runs"], resumed["runs"], strict=True):
        assert after["accuracy_rows"] == before["accuracy_rows"]
        # Same weights and memory (embeddings, stored targets, Fisher, ...), not merely close.
        for name, tensor in before["final_state"].items():
            assert torch.equal(after["final_state"][name], tensor), name
    # the interrupted task's loss averages all its iterations, not those after the resume
    assert untimed(resumed["history"]) == untimed(whole["history"])


def test_task_correctness_uses_the_given_task_identity():
    splits = toy_splits()
    data = TaskSequence("permuted", splits["test"], TOY_INFO, 2, seed=0)
    torch.manual_seed(0)
    learner = build_learner(
        {"method": "finetune", "model": {"hidden": [4]}}, sequence_info(TOY_INFO, data)
    )
    with torch.no_grad():
        learner.net[-1].bias.copy_(torch.tensor([9.0, -9.0, -9.0, 9.0]))  # head 0: class 0
        learner.net[-1].weight.zero_()
    labels = splits["test"]["labels"]
    assert task_correctness(learner, data, 0, 100).float().mean() == (labels == 0).float().mean()
    assert task_correctness(learner, data, 1, 100).float().mean() == (labels == 1).float().mean()


def test_task_inference_picks_the_lowest_entropy_head():
    splits = toy_splits()
    data = TaskSequence("permuted", splits["test"], TOY_INFO, 2, seed=0)
    torch.manual_seed(0)
    learner = build_learner(
        {"method": "finetune", "model": {"hidden": [4]}}, sequence_info(TOY_INFO, data)
    )
    with torch.no_grad():
        learner.net[-1].weight.zero_()
        learner.net[-1].bias.copy_(torch.tensor([5.0, -5.0, 0.1, 0.0]))  # head 0 is confident
    labels = splits["test"]["labels"]
    for task in (0, 1):
        label_right, task_and_label_right = inferred_task_correctness(learner, data, task, 300)
        assert torch.equal(label_right, labels == 0)  # head 0 chosen, it always says 0
        assert torch.equal(task_and_label_right, (labels == 0) & (task == 0))


def test_accuracy_matrix_averages_seeds_and_leaves_untrained_tasks_out():
    saved = {
        "runs": [
            {"accuracy_rows": [[0.9], [0.5, 0.8]]},
            {"accuracy_rows": [[0.7], [0.3, 1.0]]},
        ]
    }
    matrix = mean_matrix(saved)
    assert torch.isnan(matrix[0, 1])
    assert torch.allclose(matrix[1], torch.tensor([0.4, 0.9]))
    assert accuracy_as_tasks_arrive(matrix) == pytest.approx([0.8, 0.65])
