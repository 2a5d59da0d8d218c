"""HyperLSTM of Ha, Dai & Le (2016, §3.2): a small hyper LSTM reads the input and the
main LSTM's previous hidden state and, at every time step, emits embeddings z that
rescale the main LSTM's weights row by row and shift its biases:

    gates_t = d_x(z) ⊙ (W_x x_t) + d_h(z) ⊙ (W_h h_{t-1}) + b + b(z)

with d(z) = W_d z and z = W_z ĥ_t + b_z (the paper's memory-efficient weight scaling,
eq. 10-11). This is the one deliberate exception to the generator protocol
(hyper/generated.py; docs/ARCHITECTURE.md, "Generated weights"): the weights change inside
the time loop, so they are modulated in the cell rather than generated once as a dict
for `GeneratedModel`.

Initialisation follows the paper and its reference code (supercell.py): W_z = 0, b_z = 1
for the scaling embeddings and W_d = init_scale / N_z, so every scale starts at
`init_scale` (1: the cell starts as a plain LSTM); the bias embedding has gaussian(0.01)
weights and its projection starts at 0. The reference uses init_scale 0.1 together with
layer norm, which undoes the scale; without layer norm 0.1 would shrink every gate.

Speed: the x-products of all steps (main and hyper) are one matrix product before the
loop; per step, the main W_h and the hyper LSTM's h-input share one product, and the
twelve z → d projections are one batched product (benchmarks/bench_lm.py;
TorchScript, `script=True`, measured no faster than this eager form, see nn/lstm.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypermeta.nn.lstm import GateUpdate, State, init_recurrent, scripted

# Order of the twelve embeddings z: scales of W_x (i, j, f, o), scales of W_h, bias shifts.
SCALE_X, SCALE_H, SHIFT_B = slice(0, 4), slice(4, 8), slice(8, 12)
GATES = ("input", "candidate", "forget", "output")


class HyperLSTMLayer(nn.Module):
    """One HyperLSTM layer; `forward` also returns d_h(z), the scales of W_h per step."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        hyper_num_units: int = 128,
        hyper_embedding_size: int = 4,
        use_layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        orthogonal_init: bool = True,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.hyper_size = hyper_num_units
        self.embedding_size = hyper_embedding_size
        # x → main gates (no bias: b is separate) and x → hyper gates, in one product.
        self.input = nn.Linear(input_size, 4 * hidden_size + 4 * hyper_num_units, bias=False)
        # h_{t-1} → main gates (W_h) and → hyper gates (the hyper LSTM's input is [x, h]).
        self.weight_h = nn.Parameter(
            torch.empty(4 * hidden_size + 4 * hyper_num_units, hidden_size)
        )
        self.hyper_weight_hh = nn.Parameter(torch.empty(4 * hyper_num_units, hyper_num_units))
        self.hyper_bias = nn.Parameter(torch.zeros(4 * hyper_num_units))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.to_z = nn.Linear(hyper_num_units, 12 * hyper_embedding_size)
        self.z_to_d = nn.Parameter(torch.empty(12, hyper_embedding_size, hidden_size))
        self.hyper_update = GateUpdate(hyper_num_units, use_layer_norm, recurrent_dropout)
        self.update = GateUpdate(hidden_size, use_layer_norm, recurrent_dropout)

        nn.init.uniform_(self.input.weight, -(input_size**-0.5), input_size**-0.5)
        init_recurrent(self.weight_h[: 4 * hidden_size], orthogonal_init)
        nn.init.uniform_(self.weight_h[4 * hidden_size :], -(hidden_size**-0.5), hidden_size**-0.5)
        init_recurrent(self.hyper_weight_hh, orthogonal_init)
        scales = 8 * hyper_embedding_size
        with torch.no_grad():
            self.to_z.weight[:scales].zero_()
            self.to_z.bias[:scales].fill_(1.0)
            nn.init.normal_(self.to_z.weight[scales:], std=0.01)
            self.to_z.bias[scales:].zero_()
            self.z_to_d[SCALE_X].fill_(init_scale / hyper_embedding_size)
            self.z_to_d[SCALE_H].fill_(init_scale / hyper_embedding_size)
            self.z_to_d[SHIFT_B].zero_()

    def forward(
        self,
        x: Tensor,
        h: Tensor,
        c: Tensor,
        hyper_h: Tensor,
        hyper_c: Tensor,
        keep_scales: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x `[T, B, input]` → (outputs `[T, B, H]`, h, c, hyper_h, hyper_c, d_h), d_h the
        scales of W_h per step `[T, B, 4H]` if `keep_scales`, else empty (stacking them
        costs a 4H-wide copy per step that training and evaluation do not need)."""
        main_size = 4 * self.hidden_size
        projected = self.input(x)
        # unbind, not indexing by t: the backward of an index fills a zero tensor the size
        # of the whole sequence for every step (quadratic in T); unbind's is one stack.
        wx_steps = projected[..., :main_size].unbind(0)
        hyper_x_steps = (projected[..., main_size:] + self.hyper_bias).unbind(0)
        # The twelve z → d projections as one batched product per step (a block-diagonal
        # [12 N_z, 12 H] matrix was 11/12 zeros: training about 13% slower at hidden 256).
        # The main bias b joins the shifts b(z), so one product yields d_x, d_h, b + b(z).
        shift_bias = torch.cat(
            [torch.zeros_like(self.bias), torch.zeros_like(self.bias), self.bias]
        ).view(12, 1, -1)
        batch = x.shape[1]
        to_z = self.to_z.weight.t()
        hyper_weight_hh = self.hyper_weight_hh.t()
        weight_h = self.weight_h.t()
        outputs: list[Tensor] = []
        scales_h: list[Tensor] = []
        for t in range(x.shape[0]):
            main_h, hyper_from_h = (h @ weight_h).split([main_size, 4 * self.hyper_size], 1)
            hyper_gates = torch.addmm(hyper_x_steps[t] + hyper_from_h, hyper_h, hyper_weight_hh)
            hyper_h, hyper_c = self.hyper_update(hyper_gates, hyper_c)
            z = torch.addmm(self.to_z.bias, hyper_h, to_z)  # [B, 12 N_z]
            d = torch.baddbmm(shift_bias, z.view(batch, 12, -1).transpose(0, 1), self.z_to_d)
            scale_x, scale_h, shift = d.transpose(0, 1).split(4, 1)  # [B, 4, H] views
            gates = torch.addcmul(shift, scale_x, wx_steps[t].view(batch, 4, -1))
            gates = torch.addcmul(gates, scale_h, main_h.view(batch, 4, -1))
            h, c = self.update(gates.reshape(batch, -1), c)
            outputs.append(h)
            if keep_scales:
                scales_h.append(scale_h.reshape(batch, -1))
        scales = torch.stack(scales_h) if keep_scales else x.new_empty(0)
        return torch.stack(outputs), h, c, hyper_h, hyper_c, scales


class HyperLSTM(nn.Module):
    """A stack of HyperLSTM layers with dropout between layers. State: (h, c, ĥ, ĉ)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        hyper_num_units: int = 128,
        hyper_embedding_size: int = 4,
        use_layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        orthogonal_init: bool = True,
        init_scale: float = 1.0,
        script: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.hyper_size = hyper_num_units
        self.dropout = dropout
        self.layers = nn.ModuleList(
            scripted(
                HyperLSTMLayer(
                    input_size if n == 0 else hidden_size,
                    hidden_size,
                    hyper_num_units,
                    hyper_embedding_size,
                    use_layer_norm,
                    recurrent_dropout,
                    orthogonal_init,
                    init_scale,
                ),
                script,
            )
            for n in range(num_layers)
        )

    def initial_state(self, batch: int, device: torch.device) -> State:
        main = torch.zeros(len(self.layers), batch, self.hidden_size, device=device)
        hyper = torch.zeros(len(self.layers), batch, self.hyper_size, device=device)
        return (main, main.clone(), hyper, hyper.clone())

    def run(
        self, x: Tensor, state: State, keep_scales: bool = False
    ) -> tuple[Tensor, State, list[Tensor]]:
        """Outputs, new state, and per layer the W_h scales d_h `[T, B, 4H]` (if
        `keep_scales`; else empty tensors)."""
        new_state: list[list[Tensor]] = [[], [], [], []]
        scales = []
        for n, layer in enumerate(self.layers):
            if n > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, *layer_state, d_h = layer(x, *(s[n] for s in state), keep_scales=keep_scales)
            for slot, value in zip(new_state, layer_state, strict=True):
                slot.append(value)
            scales.append(d_h)
        return x, tuple(torch.stack(s) for s in new_state), scales

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, state, _ = self.run(x, state)
        return y, state
