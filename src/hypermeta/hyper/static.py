"""Static hypernetwork of Ha, Dai & Le (2016, §3.1).

Each generated conv kernel K^j (N_out × N_in × f × f) has a learned layer embedding
z^j ∈ R^{N_z}; a two-layer linear network shared by all generated layers maps it to
the kernel, one input-channel slice at a time:

    a_i^j = W_i z^j + B_i              (i = 1..N_in, a_i^j ∈ R^d)
    K_i^j = <W_out, a_i^j> + B_out     (K_i^j ∈ R^{N_out·f·f})

For one 7×7×16×16 kernel with N_z = d = 4 that is 4·64+64 + 4·784+784 = 4,240 weights
(the count in the paper's MNIST table) plus the 4 entries of z.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hypermeta.hyper.generated import WeightGenerator


class StaticHypernet(WeightGenerator):
    """Generates conv kernels of one shape from per-layer embeddings z^j; no condition."""

    def __init__(self, target_shapes: dict[str, torch.Size], z_dim: int = 4, d: int = 4) -> None:
        shapes = set(target_shapes.values())
        if len(shapes) != 1 or len(next(iter(shapes))) != 4:
            raise ValueError(f"a static hypernet generates conv kernels of one shape, got {shapes}")
        super().__init__(target_shapes)
        self.n_out, self.n_in, kh, kw = next(iter(shapes))
        self.d = d
        self.z = nn.ParameterDict(
            {name.replace(".", "_"): nn.Parameter(torch.randn(z_dim)) for name in target_shapes}
        )
        self.w_in = nn.Linear(z_dim, self.n_in * d)
        self.w_out = nn.Linear(d, self.n_out * kh * kw)
        # Start with generated kernels at He-init scale (std sqrt(2 / fan_in)) so the
        # hypernetwork's net trains like the ordinary one from the first step.
        fan_in = self.n_in * kh * kw
        nn.init.normal_(self.w_in.weight, std=1 / math.sqrt(z_dim))
        nn.init.zeros_(self.w_in.bias)
        nn.init.normal_(self.w_out.weight, std=math.sqrt(2 / fan_in) / math.sqrt(d))
        nn.init.zeros_(self.w_out.bias)

    def kernel(self, z: torch.Tensor) -> torch.Tensor:
        a = self.w_in(z).view(self.n_in, self.d)  # one d-vector per input channel
        k = self.w_out(a)  # (N_in, N_out·f·f)
        shape = next(iter(self.target_shapes.values()))
        return k.view(self.n_in, self.n_out, *shape[2:]).transpose(0, 1)

    def forward(self, condition: None = None) -> dict[str, torch.Tensor]:
        if condition is not None:
            raise ValueError("a static hypernet takes no condition; call it with None")
        return {name: self.kernel(self.z[name.replace(".", "_")]) for name in self.target_shapes}
