"""Time per task: HNET (chunked hypernetwork + output regulariser) vs fine-tuning.

Both learn the same Permuted sequence with the same main MLP, batch and iterations;
HNET's cost per step grows with the number of earlier tasks it regularises, so the
table shows the first and last task as well as the mean.

    python benchmarks/bench_continual.py [--quick] [--device cpu|cuda]

Needs the prepared data of the quick profile (python pipeline/download.py && python
pipeline/split.py). Writes benchmarks/results/continual.json."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.continual_training import ContinualTrain, train_sequences

HNET = {"hnet_hidden": [50, 50], "chunk_size": 2000, "beta": 0.1}
VARIANTS = {
    "finetune": {"method": "finetune", "model": {"hidden": [100, 100]}},
    "hnet": {"method": "hnet", "model": {"hidden": [100, 100], **HNET}},
    "hnet+lookahead": {
        "method": "hnet",
        "model": {"hidden": [100, 100], **HNET, "lookahead": True},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 tasks x 100 iterations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="data/prepared/mnist")
    args = parser.parse_args()
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    tasks, iterations = (3, 100) if args.quick else (10, 300)
    cfg = ContinualTrain(
        sequence="permuted",
        num_tasks=tasks,
        iterations_per_task=iterations,
        checkpoint_every=10**9,
        device=args.device,
    )
    splits = {s: load_split(Path(args.data), s) for s in ("train", "test")}
    manifest = load_manifest(Path(args.data))
    rows = []
    for name, section in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            saved = train_sequences(
                section,
                cfg,
                splits,
                manifest,
                Checkpointer(Path(tmp) / "checkpoint.pt", name),
                torch.device(args.device),
                name=name,
            )
        seconds = [row["task_seconds"] for row in saved["history"]]
        rows.append(
            {
                "variant": name,
                "first_task_s": seconds[0],
                "last_task_s": seconds[-1],
                "mean_task_s": sum(seconds) / len(seconds),
                "ms_per_iteration": 1000 * sum(seconds) / (len(seconds) * iterations),
                "final_average_accuracy": sum(saved["runs"][0]["accuracy_rows"][-1]) / tasks,
            }
        )
    base = rows[0]["mean_task_s"]
    print(f"\n{tasks} Permuted tasks x {iterations} iterations, batch 128, device {args.device}")
    header = ("variant", "task 1 s", "last s", "mean s", "ms/it", "x ft", "acc")
    print(
        f"{header[0]:<16}"
        + "".join(f"{h:>10}" for h in header[1:4])
        + "".join(f"{h:>8}" if h == "ms/it" else f"{h:>7}" for h in header[4:])
    )
    for r in rows:
        print(
            f"{r['variant']:<16}{r['first_task_s']:>10.2f}{r['last_task_s']:>10.2f}"
            f"{r['mean_task_s']:>10.2f}{r['ms_per_iteration']:>8.2f}"
            f"{r['mean_task_s'] / base:>7.2f}{r['final_average_accuracy']:>7.3f}"
        )
    out = Path("benchmarks/results/continual.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "tasks": tasks,
                "iterations_per_task": iterations,
                "device": args.device,
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
