"""The LSTM meta-learner (Ravi & Larochelle 2017, "Optimization as a model for few-shot
learning"): a learned optimizer whose cell state is the learner's parameters.

For each coordinate of the learner (a Conv-4, every weight flattened into one vector θ):

    c_t = f_t ⊙ c_{t−1} − i_t ⊙ ∇_{θ_{t−1}} L_t,       θ_t = c_t,  c_0 = θ_0 meta-learned
    i_t = σ(W_I · [h_t, θ_{t−1}, i_{t−1}] + b_I)        the learning rate
    f_t = σ(W_F · [h_t, θ_{t−1}, f_{t−1}] + b_F)        the weight decay (1: none)

where h_t is the hidden state of a first, ordinary LSTM layer (hidden 20), shared by
all coordinates, fed the loss L_t and the gradient each preprocessed as Andrychowicz et
al. (2016) do (log-magnitude and sign, p = 10). With f_t = 1 and i_t = α one step is
plain gradient descent of step size α. b_F starts large (forget ≈ 1) and b_I small, so
the first meta-iterations take small steps without decay (the paper's initialisation,
the gate weights U(−0.01, 0.01), b_F ~ U(4, 6), b_I ~ U(−5, −4); `input_gate_bias`
changes b_I's range: a short run learns faster from a larger first step).

First order, as the paper: the learner's gradient and loss enter the meta-learner as
inputs with no derivative through them (no second derivatives); the meta-gradient still
reaches θ_0 through c_t and every meta-learner weight through the gates.

Batch norm as in the paper: the learner's batch norm normalises with the statistics of
the batch it is given, in meta-training and at meta-test (the `transductive` regime: a
task's queries normalised together); `per_query` (the support set plus one query) is
also offered, as for every learner of the gradient family. The inner loop, the task
mapper, the queries' prediction and the outer step are the gradient family's
(gradient/learner.py); this file replaces the update rule by the meta-learner and clips
the meta-gradient's norm (0.25 in the paper's reference code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.gradient.inner_loop import Weights, loss_and_gradients
from hypermeta.methods.gradient.learner import GradientMetaLearner
from hypermeta.nn import Conv4
from hypermeta.nn.batch_stat_norm import use_batch_statistics


class LSTMMetaConfig(StrictModel):
    """The `model:` section of the LSTM meta-learner."""

    n_way: int = Field(5, gt=1, description="classes the Conv-4 head outputs")
    width: int = Field(32, gt=0, description="Conv-4 filters per layer (the paper: 32)")
    inner_steps: int = Field(5, gt=0, description="learner updates per episode in meta-training")
    eval_inner_steps: int | None = Field(
        None, gt=0, description="learner updates at meta-test; default: inner_steps"
    )
    hidden: int = Field(20, gt=0, description="hidden units of the first LSTM layer")
    input_gate_bias: list[float] = Field(
        [-5.0, -4.0],
        min_length=2,
        max_length=2,
        description="range of the input gate's initial bias b_I (the paper's: U(−5, −4), a "
        "first step size σ(b_I) of about 0.01)",
    )
    preprocess_p: float = Field(10.0, gt=0, description="p of the log/sign preprocessing")
    gradient_clip: float | None = Field(
        0.25, gt=0, description="clip the meta-gradient's norm (None: not)"
    )
    vectorize: bool | None = Field(
        None, description="vmap over the tasks of a meta-batch; default: yes, but not on a CPU"
    )
    task_chunk: int | None = Field(
        None, gt=0, description="tasks per backward pass in meta-training (bounds memory)"
    )
    task_workers: int | None = Field(
        None, gt=0, description="threads adapting a meta-batch's tasks side by side (CPU loop)"
    )


def preprocess(x: torch.Tensor, p: float) -> torch.Tensor:
    """(…, 2): Andrychowicz et al. (2016)'s scaling of a gradient or loss: (log|x| / p,
    sign x) where |x| ≥ e^{−p}, else (−1, e^p x); magnitudes of any scale become inputs
    of order one."""
    magnitude = x.abs()
    big = magnitude >= math.exp(-p)
    log_part = torch.where(big, magnitude.clamp_min(math.exp(-p)).log() / p, -1.0)
    sign_part = torch.where(big, x.sign(), math.exp(p) * x)
    return torch.stack([log_part, sign_part], -1)


def lstm_cell(
    cell: nn.LSTMCell, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`cell(x, state)` written out: aten's fused lstm_cell has no vmap batching rule."""
    if state is None:
        zeros = x.new_zeros(x.shape[0], cell.hidden_size)
        state = (zeros, zeros)
    h, c = state
    gates = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class ParameterCell(nn.Module):
    """The second layer: a coordinate-wise LSTM cell whose cell state is the learner's
    parameters, its input gate the learning rate and its forget gate the weight decay."""

    def __init__(self, hidden: int, input_gate_bias: Sequence[float] = (-5.0, -4.0)) -> None:
        super().__init__()
        self.input_gate = nn.Linear(hidden + 2, 1)
        self.forget_gate = nn.Linear(hidden + 2, 1)
        for gate in (self.input_gate, self.forget_gate):
            nn.init.uniform_(gate.weight, -0.01, 0.01)
        nn.init.uniform_(self.forget_gate.bias, 4.0, 6.0)
        nn.init.uniform_(self.input_gate.bias, *input_gate_bias)

    def forward(
        self,
        h: torch.Tensor,
        theta: torch.Tensor,
        gradient: torch.Tensor,
        last_input: torch.Tensor,
        last_forget: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(θ_t, i_t, f_t) from h_t (n, hidden) and θ_{t−1}, ∇, i_{t−1}, f_{t−1} (n,)."""

        def gate(layer: nn.Linear, last: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(layer(torch.cat([h, theta[:, None], last[:, None]], 1))).squeeze(1)

        i, f = gate(self.input_gate, last_input), gate(self.forget_gate, last_forget)
        return f * theta - i * gradient, i, f


class LSTMMetaLearner(GradientMetaLearner):
    """A Conv-4 learner trained on each support set by the meta-learner LSTM, from
    meta-learned initial parameters θ_0 (the Conv-4's own)."""

    def __init__(self, target: nn.Module, config: LSTMMetaConfig) -> None:
        super().__init__(target, config, F.cross_entropy, config.n_way)  # type: ignore[arg-type]
        self.gradient_lstm = nn.LSTMCell(4, config.hidden)
        self.parameter_cell = ParameterCell(config.hidden, config.input_gate_bias)

    def second_order(self) -> bool:
        return False  # the paper's choice: no derivative through the learner's gradients

    def trajectory(
        self, params: Weights, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> list[Weights]:
        """The learner's parameters after 0, 1, ..., `steps` meta-learner updates on ONE
        task's support set (the whole set each update)."""
        names = list(params)
        sizes = [params[n].numel() for n in names]

        def unflatten(flat: torch.Tensor) -> Weights:
            parts = flat.split(sizes)
            return {n: w.view_as(params[n]) for n, w in zip(names, parts, strict=True)}

        def support_loss(fast: Weights) -> torch.Tensor:
            return self.task_loss(self.run_target(fast, support_x), support_y)

        theta = torch.cat([params[n].flatten() for n in names])
        last_input = last_forget = torch.zeros_like(theta)
        state = None
        path = [params]
        p = self.config.preprocess_p
        for _ in range(steps):
            loss, grads = loss_and_gradients(
                support_loss, path[-1], keep_graph=False, vmapped=self.tasks.vectorizes()
            )
            gradient = torch.cat([grads[n].flatten() for n in names])
            x = torch.cat([preprocess(gradient, p), preprocess(loss.expand_as(gradient), p)], 1)
            state = lstm_cell(self.gradient_lstm, x, state)
            theta, last_input, last_forget = self.parameter_cell(
                state[0], theta, gradient, last_input, last_forget
            )
            path.append(unflatten(theta))
        return path

    def clip_meta_gradients(self, params: list[torch.Tensor]) -> None:
        if self.config.gradient_clip is not None:
            nn.utils.clip_grad_norm_(
                [p for p in params if p.grad is not None], self.config.gradient_clip
            )


def build(config: LSTMMetaConfig, data_info: dict[str, Any]) -> LSTMMetaLearner:
    channels, height, _ = data_info["image_shape"]
    target = Conv4(channels, config.width, num_classes=config.n_way, image_size=height)
    return LSTMMetaLearner(use_batch_statistics(target), config)


register(
    MethodSpec(
        name="lstm_meta_learner",
        kind="fewshot",
        model_config=LSTMMetaConfig,
        build=build,
        summary="LSTM meta-learner: a learned optimizer, cell state = learner weights "
        "(Ravi & Larochelle 2017)",
    )
)
