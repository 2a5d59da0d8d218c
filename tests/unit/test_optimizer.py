"""The engines' Adam: torch's fused Adam step for step, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch

from hypermeta.engine.device import adam


def trained(make_optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = make_optimizer(model.parameters())
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    data = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(16, 5, generator=data), torch.randint(0, 3, (16,), generator=data)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model, optimizer


def test_steps_equal_torchs_fused_adam_bit_for_bit_and_resume_from_its_state():
    ours, ours_optimizer = trained(lambda p: adam(p, lr=0.01, weight_decay=0.1))
    torchs, torchs_optimizer = trained(
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, fused=True)
    )
    for a, b in zip(ours.parameters(), torchs.parameters(), strict=True):
        assert torch.equal(a, b)  # the same kernel in the same order
    restored = adam(torchs.parameters(), lr=0.01)
    restored.load_state_dict(torchs_optimizer.state_dict())
    assert str(restored.state_dict()) == str(torchs_optimizer.state_dict())
    assert not any(p.grad is None for p in ours.parameters())
    ours_optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in ours.parameters())


def test_a_training_step_does_not_import_torch_dynamo_or_inductor():
    """torch.optim's compile hooks import torch._dynamo on first use (0.85 s of a job),
    torch.use_deterministic_algorithms torch._inductor's config (1 s)."""
    script = (
        "import sys, torch\n"
        "from hypermeta.engine.device import adam, fix_numerics\n"
        "fix_numerics(1)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "model = torch.nn.Linear(3, 2)\n"
        "optimizer = adam(model.parameters(), lr=0.1)\n"
        "schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 ** i)\n"
        "model(torch.randn(4, 3)).sum().backward()\n"
        "optimizer.step(); schedule.step(); optimizer.zero_grad()\n"
        "optimizer.load_state_dict(optimizer.state_dict())\n"
        "print(any(m.startswith(('torch._dynamo', 'torch._inductor')) for m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
