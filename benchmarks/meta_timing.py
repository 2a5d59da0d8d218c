"""What the meta-learning benchmarks share: their command-line settings, a learner built
from its registered method, synthetic episodes, one meta-iteration as a zero-argument step,
peak memory of one meta-iteration measured in a fresh subprocess, interleaved timing
rounds, and the results file."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

Step = Callable[[], None]
MakeStep = Callable[[str, argparse.Namespace, torch.device], Step]
RESULTS = Path(__file__).parent / "results"


def timing_parser(
    doc: str, names: Iterable[str], meta_batch: int, rounds: tuple[int, int] = (2, 5)
) -> argparse.ArgumentParser:
    """The settings every meta-learning benchmark takes; a script adds its own."""
    quick, full = rounds
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{quick} timed rounds, not {full}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--meta-batch", type=int, default=meta_batch, help="episodes per step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iterations", type=int, default=None, help="timed rounds")
    parser.add_argument("--only", nargs="+", choices=list(names), help="a subset of the names")
    parser.add_argument("--memory-of", choices=list(names), help=argparse.SUPPRESS)  # subprocess
    parser.set_defaults(rounds=rounds)
    return parser


def parse_timing(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = args.rounds[0] if args.quick else args.rounds[1]
    return args


def build_learner(method: str, section: dict, device: torch.device) -> torch.nn.Module:
    """Learner of a registered method from its `model:` section, with seeded weights."""
    from hypermeta.config import validate_section
    from hypermeta.methods import get_method

    spec = get_method(method)
    config = validate_section(spec.model_config, section, "model")
    torch.manual_seed(0)
    return spec.build(config, {"image_shape": [1, 28, 28]}).to(device)


def registered(names: Iterable[str], method_of: Callable[[str], str]) -> list[str]:
    """The names whose method is registered; each other one is skipped, and said so."""
    from hypermeta.methods import METHODS

    kept = []
    for name in names:
        if method_of(name) in METHODS:
            kept.append(name)
        else:
            print(f"skipping {name}: method {method_of(name)!r} is not registered")
    return kept


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def meta_step(learner: torch.nn.Module, episodes, device: torch.device, lr: float = 0.001) -> Step:
    """One meta-iteration as the engine runs it (the learner's `meta_step`, one Adam step),
    finished on the device before it returns, so it can be timed."""
    learner.train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)

    def step() -> None:
        learner.meta_step(episodes, optimizer)
        synchronize(device)

    return step


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


def answered_memory_query(make_step: MakeStep, args: argparse.Namespace) -> bool:
    """In the subprocess `memory_in_subprocesses` starts: print the peak memory, say so."""
    if args.memory_of:
        print(json.dumps({"peak_memory_mb": peak_memory(make_step, args.memory_of, args)}))
    return bool(args.memory_of)


def memory_in_subprocesses(script: str, names: list[str]) -> dict:
    """Peak MB per name, each from `script <this run's settings> --memory-of NAME` in its
    own process."""
    memory = {}
    for name in names:
        command = [sys.executable, script, *sys.argv[1:], "--memory-of", name]
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


def device_label(args: argparse.Namespace) -> str:
    return torch.cuda.get_device_name() if args.device == "cuda" else f"cpu×{args.threads}"


def write_results(filename: str, args: argparse.Namespace, rows: list[dict]) -> Path:
    """benchmarks/results/<filename>: the settings, the device and the rows."""
    out = RESULTS / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k not in ("memory_of", "rounds")}
    document = {"setting": setting, "device": device_label(args), "rows": rows}
    out.write_text(json.dumps(document, indent=2))
    print(f"written {out}")
    return out
