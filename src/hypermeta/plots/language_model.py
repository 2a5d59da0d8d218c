"""Figures of kind `language_model`: learning curves, text samples, and for a HyperLSTM
the hyper-generated scales of W_h while it reads; compare: the group's validation bpc."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from hypermeta.atomic import write_text
from hypermeta.data.text import Vocabulary, from_display
from hypermeta.engine.base import StageContext
from hypermeta.engine.device import resolve_device
from hypermeta.engine.language_model import LanguageModelEval, load_trained, use_threads
from hypermeta.engine.text_generation import generate
from hypermeta.errors import HypermetaError
from hypermeta.hyper.hyperlstm import GATES, HyperLSTM
from hypermeta.nn.lstm import CharLanguageModel
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.viz import _save, pyplot, save_curves


@torch.no_grad()
def hyper_scales(model: CharLanguageModel, vocab: Vocabulary, text: str) -> Tensor:
    """d_h(z) of the first layer over `text`: `[4 gates, H, T]`, scales of W_h per step."""
    if not isinstance(model.rnn, HyperLSTM):
        raise HypermetaError("weight scales exist only for a HyperLSTM model.")
    model.eval()
    device = next(model.parameters()).device
    tokens = vocab.encode(from_display(text)).tokens.long().view(-1, 1).to(device)
    state = model.initial_state(1, device)
    _, _, scales = model.rnn.run(model.embedding(tokens), state, keep_scales=True)
    steps = scales[0][:, 0]  # [T, 4H]
    return steps.view(len(tokens), 4, -1).permute(1, 2, 0).cpu()


def save_scale_heatmap(scales: Tensor, text: str, path: Path, title: str, units: int = 32) -> Path:
    """One heatmap per gate: rows are hidden units, columns the characters read."""
    figure, axes = pyplot().subplots(4, 1, figsize=(max(6.0, 0.32 * len(text)), 9), squeeze=False)
    limit = (scales[:, :units] - 1).abs().max().item() or 1e-6
    for ax, gate, values in zip(axes[:, 0], GATES, scales, strict=True):
        image = ax.imshow(values[:units] - 1, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_ylabel(f"{gate}\nunit")
        ax.set_xticks(range(len(text)))
        ax.set_xticklabels(["␣" if ch == " " else ch for ch in text], fontsize=8)
    figure.colorbar(image, ax=axes[:, 0].tolist(), label="scale of W_h row − 1")
    figure.suptitle(title)
    return _save(figure, path)


def _samples_text(model: CharLanguageModel, vocab: Vocabulary, cfg: LanguageModelEval) -> str:
    parts = []
    for temperature in cfg.sample_temperatures:
        text, unknown = generate(
            model, vocab, cfg.sample_prime, cfg.sample_length, temperature, cfg.seed
        )
        note = f", prime characters unknown to the model: {unknown}" if unknown else ""
        parts.append(f"--- temperature {temperature} (seed {cfg.seed}{note}) ---\n{text}\n")
    return "\n".join(parts)


class LanguageModelPlotter(Plotter):
    kind = "language_model"

    def visualize(self, ctx: StageContext) -> list[Path]:
        exp = ctx.experiment
        cfg: LanguageModelEval = exp.eval
        device = resolve_device(exp.train.device, f"experiments.{exp.name}.train.device")
        use_threads(exp.train.cpu_threads)
        model, vocab, _ = load_trained(ctx.model_path, device)
        history = json.loads(ctx.history_path.read_text())
        paths = [
            save_curves(
                {exp.name: history},
                {"bits per character": ["train_bpc", "val_bpc"]},
                ctx.plots_dir / "curves.png",
                f"{exp.name}: learning curves",
            ),
            write_text(ctx.plots_dir / "samples.txt", _samples_text(model, vocab, cfg)),
        ]
        if isinstance(model.rnn, HyperLSTM):
            scales = hyper_scales(model, vocab, cfg.heatmap_text)
            paths.append(
                save_scale_heatmap(
                    scales,
                    cfg.heatmap_text,
                    ctx.plots_dir / "weight_scales.png",
                    f"{exp.name}: hyper-generated scales of W_h while reading",
                )
            )
        return paths

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        histories = {
            c.experiment.name: json.loads(c.history_path.read_text())
            for c in contexts
            if c.history_path.exists()
        }
        if not histories:
            return []
        return [
            save_curves(
                histories,
                {"validation bits per character": ["val_bpc"]},
                out_dir / "val_bpc.png",
                title,
            )
        ]


register(LanguageModelPlotter())
