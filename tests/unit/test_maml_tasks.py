"""How a meta-batch's tasks are run (gradient/tasks.py, and chunked meta-gradients):
vmapped, looped, on task-worker threads, a chunk of tasks per backward pass; each way
gives the same step and predictions, up to the order of sums."""

from __future__ import annotations

import copy

import pytest
import torch
from maml_helpers import IMAGES, build, flat_parameters, prototype_episodes
from tolerance import assert_close_reordered

from hypermeta.methods.gradient.tasks import TaskMapper, worker_target

torch.set_num_threads(1)


def test_vmapped_and_per_task_inner_loops_agree():
    """Logits and MAML++'s per-step running statistics, tracked from the same start."""
    model = build("mamlpp", IMAGES, n_way=3, width=4, inner_steps=2, vectorize=True)
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 3, 3, 1, 2)
    initial = copy.deepcopy(model.state_dict())
    model.train()
    vectorized = model.query_logits(episodes)
    vectorized_statistics = copy.deepcopy(model.running_statistics.state_dict())
    model.load_state_dict(initial)
    model.tasks.vectorize = False
    looped = model.query_logits(episodes)
    assert_close_reordered(vectorized, looped)
    for name, value in model.running_statistics.state_dict().items():
        assert_close_reordered(vectorized_statistics[name], value)
        assert not torch.equal(value, initial[f"running_statistics.{name}"]), name


def test_chunked_meta_step_takes_the_same_step_as_the_whole_batch():
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 4, 3, 1, 2)
    updated = []
    for chunk in (None, 1, 3):
        torch.manual_seed(0)
        model = build("maml", IMAGES, n_way=3, width=4, task_chunk=chunk)
        model.meta_step(episodes, torch.optim.SGD(model.parameters(), lr=1.0))
        updated.append(flat_parameters(model))
    assert_close_reordered(updated[1], updated[0])
    assert_close_reordered(updated[2], updated[0])


@pytest.mark.parametrize("name", ["maml", "metasgd", "reptile"])
def test_task_workers_take_the_loops_step_and_give_its_predictions(name):
    """Tasks on 2 or 3 threads (5 tasks: uneven runs) step and predict as one loop does."""
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 5, 3, 1, 2)
    models, updated = [], []
    for workers in (1, 2, 3):
        torch.manual_seed(0)
        model = build(name, IMAGES, n_way=3, width=4, task_workers=workers)
        assert [len(part) for part in model.tasks.parts(5)] == {1: [5], 2: [2, 3], 3: [2, 1, 2]}[
            workers
        ]
        model.meta_step(episodes, torch.optim.SGD(model.parameters(), lr=1.0))
        updated.append(flat_parameters(model))
        models.append(model)
        assert torch.get_num_threads() == 1  # the caller's intra-op threads are restored
    for workers in (1, 2):
        assert_close_reordered(updated[workers], updated[0])
    # Predictions from the same parameters: the step's rounding, which the inner loop
    # amplifies (lr 1), is not the predictions' to carry.
    predicted = []
    for model in models:
        model.load_state_dict(models[0].state_dict())
        with model.meta_test("per_query"):
            predicted.append(model.test_logits(episodes))
        assert torch.get_num_threads() == 1
    for workers in (1, 2):
        assert_close_reordered(predicted[workers], predicted[0])
    with torch.no_grad():  # the caller's grad mode reaches the worker threads
        assert (
            model.tasks.in_workers(lambda _: torch.is_grad_enabled(), [range(2)] * 3) == [False] * 3
        )


@pytest.mark.parametrize("vectorize", [True, False])
def test_the_task_mapper_maps_any_function_as_a_loop_would(vectorize):
    """Any learner may use it: here a plain function of shared or per-task weights, the 3
    tasks on one vmap or on 2 worker threads, each thread running its own twin."""
    target = torch.nn.Linear(2, 2)
    mapper = TaskMapper(target, vectorize=vectorize, workers=2)
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    weights = {name: w.detach() for name, w in target.named_parameters()}
    scales = torch.arange(1.0, 4)
    per_task = {name: w * scales.view(-1, *[1] * w.dim()) for name, w in weights.items()}
    ran_on = []

    def apply(params, one_x):
        ran_on.append(mapper.module())
        return torch.func.functional_call(mapper.module(), params, (one_x,))

    with torch.no_grad():
        expected = target(x)
        torch.testing.assert_close(mapper.map(apply, weights, x), expected)
        scaled = mapper.map(apply, per_task, x, params_per_task=True)
        torch.testing.assert_close(scaled, scales.view(3, 1, 1) * expected)
    if vectorize:
        assert mapper.parts(3) == [range(3)] and ran_on == [target, target]
    else:
        assert mapper.parts(3) == [range(2), range(2, 3)]
        assert target not in ran_on and len({id(twin) for twin in ran_on}) == 4  # 2 per map
    assert worker_target() is None
