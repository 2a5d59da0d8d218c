"""LSTM building blocks for character language models: the gate update shared by the
LN-LSTM and the HyperLSTM (layer normalisation of Ba et al. 2016, recurrent dropout of
Semeniuta et al. 2016), stacks with one state interface, and the embedding → RNN →
softmax language model every method builds.

Layout is time-major, `[T, B, features]`. A stack's state is a tuple of tensors shaped
`[num_layers, B, size]`, so the training loop can carry and detach it without knowing
which RNN it holds. Input-to-hidden products of a whole sequence are one matrix product
before the time loop; only hidden-to-hidden work is per step, and per-step inputs are
`unbind` views (indexing a step's slice costs a whole-sequence zero tensor in backward).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


class GateUpdate(nn.Module):
    """From the four gate pre-activations (i, j, f, o) and the cell c to the new (h, c).

    With layer norm, each gate block is normalised on its own with its own gain and
    bias, and the cell is normalised before tanh, as in the HyperLSTM reference code.
    Recurrent dropout drops the candidate g = tanh(j) only, so memory is never erased."""

    def __init__(
        self,
        hidden_size: int,
        use_layer_norm: bool,
        recurrent_dropout: float = 0.0,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.use_layer_norm = use_layer_norm
        self.recurrent_dropout = recurrent_dropout
        self.forget_bias = forget_bias
        self.gate_gain = nn.Parameter(torch.ones(4, hidden_size))
        self.gate_bias = nn.Parameter(torch.zeros(4, hidden_size))
        self.cell_gain = nn.Parameter(torch.ones(hidden_size))
        self.cell_bias = nn.Parameter(torch.zeros(hidden_size))
        if not use_layer_norm:  # keep the state_dict small and the parameter count honest
            for name in ("gate_gain", "gate_bias", "cell_gain", "cell_bias"):
                setattr(self, name, nn.Parameter(torch.empty(0), requires_grad=False))

    def forward(self, gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        if self.use_layer_norm:
            blocks = gates.view(gates.shape[0], 4, self.hidden_size)
            blocks = F.layer_norm(blocks, [self.hidden_size])
            gates = (blocks * self.gate_gain + self.gate_bias).view(gates.shape[0], -1)
        i, j, f, o = gates.chunk(4, 1)
        g = torch.tanh(j)
        if self.recurrent_dropout > 0.0:
            g = F.dropout(g, self.recurrent_dropout, self.training)
        c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * g
        if self.use_layer_norm:
            cell = F.layer_norm(c, [self.hidden_size], self.cell_gain, self.cell_bias)
        else:
            cell = c
        return torch.tanh(cell) * torch.sigmoid(o), c


def init_recurrent(weight: Tensor, orthogonal: bool) -> None:
    """Orthogonal blocks per gate (the reference's initialiser), else uniform ±1/sqrt(n)."""
    hidden = weight.shape[1]
    with torch.no_grad():
        for block in weight.split(hidden, 0):
            if orthogonal:
                nn.init.orthogonal_(block)
            else:
                nn.init.uniform_(block, -(hidden**-0.5), hidden**-0.5)


class LNLSTMLayer(nn.Module):
    """One LSTM layer with optional layer norm and recurrent dropout."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        use_layer_norm: bool = True,
        recurrent_dropout: float = 0.0,
        orthogonal_init: bool = True,
    ) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, 4 * hidden_size)
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        nn.init.zeros_(self.input.bias)
        init_recurrent(self.weight_hh, orthogonal_init)
        self.update = GateUpdate(hidden_size, use_layer_norm, recurrent_dropout)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        steps = self.input(x).unbind(0)  # not x[t]: see HyperLSTMLayer.forward
        weight_hh = self.weight_hh.t()
        outputs: list[Tensor] = []
        for t in range(len(steps)):
            h, c = self.update(torch.addmm(steps[t], h, weight_hh), c)
            outputs.append(h)
        return torch.stack(outputs), h, c


class LNLSTM(nn.Module):
    """A stack of `LNLSTMLayer`s with dropout between layers. State: (h, c)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        use_layer_norm: bool = True,
        recurrent_dropout: float = 0.0,
        orthogonal_init: bool = True,
        script: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.layers = nn.ModuleList(
            scripted(
                LNLSTMLayer(
                    input_size if n == 0 else hidden_size,
                    hidden_size,
                    use_layer_norm,
                    recurrent_dropout,
                    orthogonal_init,
                ),
                script,
            )
            for n in range(num_layers)
        )

    def initial_state(self, batch: int, device: torch.device) -> State:
        zeros = torch.zeros(len(self.layers), batch, self.hidden_size, device=device)
        return (zeros, zeros.clone())

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        hs, cs = [], []
        for n, layer in enumerate(self.layers):
            if n > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, h, c = layer(x, state[0][n], state[1][n])
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


class TorchLSTM(nn.Module):
    """torch's own LSTM (cuDNN on GPU, a fused kernel on CPU) behind the stack interface."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        # torch applies `dropout` between layers only, and warns when there is one layer
        between = dropout if num_layers > 1 else 0.0
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, dropout=between)

    def initial_state(self, batch: int, device: torch.device) -> State:
        zeros = torch.zeros(self.num_layers, batch, self.hidden_size, device=device)
        return (zeros, zeros.clone())

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, (h, c) = self.lstm(x, (state[0], state[1]))
        return y, (h, c)


def scripted(layer: nn.Module, enabled: bool = True) -> nn.Module:
    """`layer` compiled by TorchScript, or as is. Off by default: on CPU it measured no
    faster than eager once the step was fused (bench_lm.py), and its optimised graph
    rounds differently from its first (profiling) runs, so a resumed training run would
    not be bit-identical to an uninterrupted one. torch.compile unrolls the time loop
    (slow to compile per sequence length), so it is not used either."""
    if not enabled:
        return layer
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning
        )
        return torch.jit.script(layer)


class CharLanguageModel(nn.Module):
    """Embedding → recurrent stack → dropout → softmax over the vocabulary."""

    def __init__(
        self, vocab_size: int, embedding_size: int, rnn: nn.Module, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = rnn
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(rnn.hidden_size, vocab_size)

    def initial_state(self, batch: int, device: torch.device) -> State:
        return self.rnn.initial_state(batch, device)

    def forward(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """Logits `[T, B, vocab]` for `tokens` `[T, B]`, and the state after them."""
        y, state = self.rnn(self.dropout(self.embedding(tokens)), state)
        return self.decoder(self.dropout(y)), state
