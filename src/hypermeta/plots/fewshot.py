"""Figures of kind `fewshot`: learning curves, one test episode as the model answers it,
and the data split in words; compare: the group's curves together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hypermeta.atomic import write_text
from hypermeta.config import Experiment
from hypermeta.data.episodes import EpisodeSetting
from hypermeta.data.prepare import load_manifest
from hypermeta.engine.base import StageContext
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import FewShotEval, episode_logits, split_sampler
from hypermeta.methods.fewshot_base import BATCHNORM_REGIMES
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.viz import save_curves, save_episode


def describe_split(manifest: dict[str, Any], exp: Experiment) -> str:
    """The data split and the test protocol, in words, for the report."""
    cfg: FewShotEval = exp.eval
    lines = [
        f"dataset: {manifest['dataset']} ({manifest.get('description', '')})",
        f"split: {manifest.get('split_protocol', 'not stated by the preparer')}",
    ]
    for split in sorted(manifest["counts"], key=["train", "val", "test"].index):
        classes = manifest["counts"][split]
        characters = manifest.get("split_characters", {}).get(split, "?")
        alphabets = ", ".join(manifest.get("split_alphabets", {}).get(split, []))
        lines.append(f"  {split}: {characters} characters, {classes} classes; {alphabets}")
    settings = ", ".join(f"{s.n_way}-way {s.k_shot}-shot" for s in cfg.settings)
    also = "".join(
        f"; also {mode} on the same episodes (metrics ending {suffix})"
        for mode, suffix in cfg.regimes()[1:]
    )
    lines.append(
        f"test: {cfg.episodes} fixed episodes per setting (seed {cfg.seed}, {cfg.query} "
        f"queries per class): {settings}; batch norm at meta-test: {cfg.batchnorm} "
        f"({BATCHNORM_REGIMES[cfg.batchnorm]}){also}"
    )
    return "\n".join(lines) + "\n"


class FewShotPlotter(Plotter):
    kind = "fewshot"

    def visualize(self, ctx: StageContext) -> list[Path]:
        exp = ctx.experiment
        history = json.loads(ctx.history_path.read_text())
        curves = self._curves({exp.name: history}, ctx.plots_dir / "curves.png", exp.name)
        manifest = load_manifest(ctx.data_dir)
        split_note = write_text(ctx.plots_dir / "data_split.txt", describe_split(manifest, exp))
        return [curves, self._episode(ctx), split_note]

    @staticmethod
    def _episode(ctx: StageContext) -> Path:
        """The first test episode of the first evaluated setting, as the model answers it."""
        exp = ctx.experiment
        cfg: FewShotEval = exp.eval
        learner, saved = load_trained(ctx.model_path)
        sampler = split_sampler(ctx.data_dir, "test", saved["data_info"], torch.device("cpu"))
        first = cfg.settings[0]
        setting = EpisodeSetting(first.n_way, first.k_shot, min(cfg.query, 5))
        index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed).chunks(1)[0]
        episodes = sampler.gather(setting, index)
        logits = episode_logits(learner, episodes, cfg.batchnorm)
        correct = (logits.argmax(-1) == episodes.query_y)[0].view(setting.n_way, setting.query)
        raw = sampler.images[index.classes[0].unsqueeze(-1), index.drawings[0]].float() / 255
        return save_episode(
            raw[:, : setting.k_shot],
            raw[:, setting.k_shot :],
            correct,
            ctx.plots_dir / "episode.png",
            f"{exp.name}: a {setting.name} test episode ({cfg.batchnorm} batch norm)",
        )

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        histories = {
            ctx.experiment.name: json.loads(ctx.history_path.read_text())
            for ctx in contexts
            if ctx.history_path.exists()
        }
        return [self._curves(histories, out_dir / "fewshot_curves.png", title)] if histories else []

    @staticmethod
    def _curves(histories: dict[str, list[dict]], path: Path, title: str) -> Path:
        panels = {"loss": ["train_loss"], "accuracy": ["train_accuracy", "val_accuracy"]}
        return save_curves(histories, panels, path, title, x_key="iteration")


register(FewShotPlotter())
