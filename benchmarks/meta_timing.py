"""What the meta-learning benchmarks share: synthetic episodes, peak memory of one
meta-iteration measured in a fresh subprocess, and interleaved timing rounds."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

Step = Callable[[], None]
MakeStep = Callable[[str, argparse.Namespace, torch.device], Step]


def make_episodes(meta_batch: int, n_way: int, k_shot: int, n_query: int, device):
    from hypermeta.data.episodes import Episodes

    g = torch.Generator().manual_seed(0)

    def images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(meta_batch, n_way * per_class, 1, 28, 28, generator=g)
        y = torch.arange(n_way).repeat_interleave(per_class).repeat(meta_batch, 1)
        return x, y

    support_x, support_y = images(k_shot)
    query_x, query_y = images(n_query)
    return Episodes(support_x, support_y, query_x, query_y, n_way).to(device)


def peak_memory(make_step: MakeStep, name: str, args: argparse.Namespace) -> float:
    """MB one meta-iteration needs; run in a fresh subprocess, as RSS peaks never fall."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    step = make_step(name, args, device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024


def memory_in_subprocesses(script: str, names: list[str], arguments: list[str]) -> dict:
    """Peak MB per name, each from `script --memory-of NAME *arguments` in its own process."""
    memory = {}
    for name in names:
        command = [sys.executable, script, "--memory-of", name, *arguments]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        memory[name] = json.loads(done.stdout.strip().splitlines()[-1])["peak_memory_mb"]
    return memory


def interleaved_times(
    make_step: MakeStep, names: list[str], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Seconds per meta-iteration, the names taking turns round after round, so a shared
    machine's changing load falls on all of them alike."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    steps = {name: make_step(name, args, device) for name in names}
    for step in steps.values():
        step()  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.iterations):
        for name, step in steps.items():
            began = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - began)
    return times
