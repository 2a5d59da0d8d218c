import pytest
import torch
from tolerance import assert_close_reordered
from torch import nn
from torch.func import functional_call

from hypermeta.hyper import (
    GeneratedModel,
    StaticHypernet,
    WeightGenerator,
    effective_parameters,
    effective_size,
    parameter_cost,
    take_parameters,
)
from hypermeta.methods import get_method
from hypermeta.methods.cnn import CNNConfig
from hypermeta.methods.hypercnn import HyperCNNConfig

INFO = {"image_shape": [1, 28, 28], "num_classes": 10}


def test_parameter_counts_match_the_paper():
    cnn = get_method("cnn").build(CNNConfig(), INFO)
    hyper = get_method("hypercnn").build(HyperCNNConfig(), INFO)
    assert parameter_cost(cnn, "conv2.weight") == 7 * 7 * 16 * 16 == 12_544
    # Ha et al. count 4,240 for the hypernetwork; z (N_z = 4) makes ours 4,244.
    assert parameter_cost(hyper, "conv2.weight") == 4_240 + 4
    # conv2.weight is generated, not a trained parameter of the target
    assert "target.conv2.weight" not in dict(hyper.named_parameters())
    own = sum(p.numel() for p in cnn.parameters())
    assert sum(p.numel() for p in hyper.parameters()) == own - 12_544 + 4_244
    # The weights it computes with are the CNN's: conv2's generated, the rest its own.
    assert effective_size(hyper) == own
    assert sum(w.numel() for w in effective_parameters(hyper).values()) == own
    assert parameter_cost(hyper, "conv1.weight") == parameter_cost(cnn, "conv1.weight") == 784


def test_generated_kernel_has_the_target_shape_and_drives_the_target():
    hyper = get_method("hypercnn").build(HyperCNNConfig(), INFO)
    x = torch.randn(3, 1, 28, 28)
    kernel = hyper.generator()["conv2.weight"]
    assert kernel.shape == (16, 16, 7, 7)
    reference = functional_call(hyper.target, {"conv2.weight": kernel}, (x,))
    assert_close_reordered(hyper(x), reference)
    assert torch.equal(effective_parameters(hyper)["conv2.weight"], kernel.detach())
    with pytest.raises(ValueError, match="no condition"):
        hyper(x, condition=0)


def test_gradients_reach_z_and_the_hypernetwork():
    hyper = get_method("hypercnn").build(HyperCNNConfig(), INFO)
    loss = hyper(torch.randn(4, 1, 28, 28)).square().mean()
    loss.backward()
    for name, param in hyper.generator.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_static_hypernet_gradient_matches_finite_differences():
    torch.manual_seed(0)
    shapes = {"w": torch.Size([3, 2, 3, 3])}
    net = StaticHypernet(shapes, z_dim=2, d=3).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.double)

    def loss_of(z, w_in, w_out):
        a = (w_in @ z).view(2, 3)
        kernel = (a @ w_out.T).view(2, 3, 3, 3).transpose(0, 1)
        return torch.nn.functional.conv2d(x, kernel).square().sum()

    inputs = (
        net.z["w"].detach().clone().requires_grad_(),
        net.w_in.weight.detach().clone().requires_grad_(),
        net.w_out.weight.detach().clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(loss_of, inputs)
    # and the module computes the same kernel as the formula (biases are zero at init)
    reference = (inputs[1] @ inputs[0]).view(2, 3) @ inputs[2].T
    torch.testing.assert_close(net()["w"], reference.view(2, 3, 3, 3).transpose(0, 1))


def test_take_parameters_leaves_an_ordinary_module():
    layer = torch.nn.Linear(3, 2)
    shapes = take_parameters(layer, ["weight"])
    assert shapes == {"weight": torch.Size([2, 3])}
    assert [n for n, _ in layer.named_parameters()] == ["bias"]

    class Constant(WeightGenerator):
        def forward(self, condition):
            return {"weight": torch.ones(2, 3)}

    model = GeneratedModel(layer, Constant(shapes))
    torch.testing.assert_close(model(torch.ones(1, 3)), 3 + layer.bias.detach().unsqueeze(0))


class VectorConditioned(WeightGenerator):
    """A linear map from a condition vector to the weights: the shape of a support-set
    hypernetwork or of LEO's decoder (a latent code to weights), in a few lines."""

    def __init__(self, target_shapes: dict[str, torch.Size], condition_dim: int) -> None:
        super().__init__(target_shapes)
        ((self.name, self.shape),) = self.target_shapes.items()
        self.map = nn.Linear(condition_dim, self.shape.numel())

    def forward(self, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.name: self.map(condition).view(self.shape)}


def test_a_conditioned_generator_runs_through_generated_model_with_exact_gradients():
    torch.manual_seed(0)
    target = nn.Linear(3, 2).double()
    generator = VectorConditioned(take_parameters(target, ["weight"]), 4).double()
    model = GeneratedModel(target, generator)
    x = torch.randn(5, 3, dtype=torch.double)
    condition = torch.randn(4, dtype=torch.double)
    assert not torch.allclose(model(x, condition=condition), model(x, condition=-condition))

    # The loss as a function of the condition and of every trainable parameter (the
    # generator's and the target's own bias): autograd agrees with finite differences.
    names = [name for name, _ in model.named_parameters()]
    assert names == ["target.bias", "generator.map.weight", "generator.map.bias"]

    def loss(condition, *params):
        weights = dict(zip(names, params, strict=True))
        return functional_call(model, weights, (x,), {"condition": condition}).sin().sum()

    inputs = (condition, *(p.detach() for p in model.parameters()))
    assert torch.autograd.gradcheck(loss, tuple(t.clone().requires_grad_() for t in inputs))

    model(x, condition=condition).sin().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    # Counted by hand: it computes with a 2x3 weight and 2 biases; the weight costs the
    # map's 4·6 + 6 parameters, the bias its own 2.
    assert effective_size(model) == 2 * 3 + 2
    assert parameter_cost(model, "weight") == 4 * 6 + 6
    assert parameter_cost(model, "bias") == 2
    weights = effective_parameters(model, condition)
    assert weights.keys() == {"weight", "bias"}
    assert torch.equal(weights["weight"], generator(condition)["weight"].detach())


def test_per_example_generated_weights_run_each_input_row_with_its_own_set():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    target = target.double()
    generator = VectorConditioned(take_parameters(target, ["0.weight"]), 4).double()

    class PerRow(WeightGenerator):  # one kernel per row of the condition
        def forward(self, condition):
            return {"0.weight": torch.stack([generator(c)["0.weight"] for c in condition])}

    model = GeneratedModel(target, PerRow(generator.target_shapes), per_example=True)
    x = torch.randn(5, 1, 4, 4, dtype=torch.double)
    conditions = torch.randn(5, 4, dtype=torch.double)
    rows = model(x, condition=conditions)
    for i in range(5):
        alone = GeneratedModel(target, generator)(x[i : i + 1], condition=conditions[i])
        torch.testing.assert_close(rows[i], alone[0])
