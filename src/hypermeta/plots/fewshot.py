"""Figures of kind `fewshot`: learning curves, one test episode as the model answers it,
and the data split in words; compare: the group's curves together.

For a learner that implements the figure hooks of fewshot_base.FewShotLearner, also: the
weights it generates for two test tasks side by side (`generated_head`,
`generated_filters`), its task codes of the test episodes in 2-D by PCA coloured by
alphabet (`task_codes`), its attention over one test episode per attention layer
(`attention_maps`), and accuracy against the number of inner steps (`with_inner_steps`,
when `eval.inner_steps_sweep` lists counts). For a sequence learner with
`eval.by_instance`, what each step of the first test sequence reads and writes in its
memory (`sequence_trace`). For a learner meta-trained with `train.generated_tasks`, a
few of the synthetic classes it was given, each row a class's drawings between one
drawing of each of its two source classes (engine/task_generation.py). Compare draws
the group's accuracy by instance on one plot (Santoro et al.'s Figure 2) from the
evaluate stage's metrics, which the report stage already reads, so no experiment needs
another's model for it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from hypermeta.atomic import write_text
from hypermeta.config import Experiment
from hypermeta.data.episodes import EpisodeIndex, Episodes, EpisodeSampler, EpisodeSetting
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.data.sequences import fixed_sequences, gather_sequences
from hypermeta.engine.base import StageContext
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import (
    FewShotEval,
    episode_logits,
    eval_augmenter,
    inner_steps_accuracies,
    split_sampler,
)
from hypermeta.experiments import load_params
from hypermeta.methods.fewshot_base import BATCHNORM_REGIMES, FewShotLearner
from hypermeta.methods.sequence_base import SequenceLearner
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.stats import mean_interval
from hypermeta.viz import (
    save_attention_maps,
    save_curves,
    save_episode,
    save_filters,
    save_head_rows,
    save_interval_curves,
    save_memory_trace,
    save_pictures,
    save_scatter,
    tiled,
)


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
        learner, saved = load_trained(ctx.model_path)
        sampler = split_sampler(ctx.data_dir, "test", saved["data_info"], torch.device("cpu"))
        return [
            curves,
            self._episode(ctx, learner, sampler),
            split_note,
            *generated_weights(ctx, learner, sampler),
            *task_code_map(ctx, learner, sampler, manifest),
            *inner_steps_curve(ctx, learner, sampler),
            *memory_trace(ctx, learner, sampler),
            *attention_map_figure(ctx, learner, sampler),
            *augmented_support(ctx, learner, sampler, saved["data_info"]),
            *generated_classes_figure(ctx, saved),
        ]

    @staticmethod
    def _episode(ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler) -> Path:
        """The first test episode of the first evaluated setting, as the model answers it."""
        exp = ctx.experiment
        cfg: FewShotEval = exp.eval
        setting, episodes, raw = first_episode(cfg, sampler)
        logits = episode_logits(learner, episodes, cfg.batchnorm)
        correct = (logits.argmax(-1) == episodes.query_y)[0].view(setting.n_way, setting.query)
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
        curves = (
            [self._curves(histories, out_dir / "fewshot_curves.png", title)] if histories else []
        )
        return curves + instance_curves(contexts, out_dir, title)

    @staticmethod
    def _curves(histories: dict[str, list[dict]], path: Path, title: str) -> Path:
        panels = {"loss": ["train_loss"], "accuracy": ["train_accuracy", "val_accuracy"]}
        return save_curves(histories, panels, path, title, x_key="iteration")


def first_setting(cfg: FewShotEval) -> tuple[EpisodeSetting, str]:
    """The first evaluated setting, its queries capped at 5 (figures need few), and its words."""
    first = cfg.settings[0]
    setting = EpisodeSetting(first.n_way, first.k_shot, min(cfg.query, 5))
    return setting, f"{first.n_way}-way {first.k_shot}-shot"


def first_episode(
    cfg: FewShotEval, sampler: EpisodeSampler
) -> tuple[EpisodeSetting, Episodes, torch.Tensor]:
    """The first fixed test episode of `first_setting`: its setting, the episode (a batch
    of one) and its images, (N, K + Q, 1, H, W) in [0, 1], supports then queries per class."""
    setting, _ = first_setting(cfg)
    index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed).chunks(1)[0]
    raw = sampler.images[index.classes[0].unsqueeze(-1), index.drawings[0]].float() / 255
    return setting, sampler.gather(setting, index), raw


def attention_map_figure(
    ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler
) -> list[Path]:
    """The first test episode's attention maps, one per attention layer: the weight each
    support step and the first query of each class gives each support step and itself;
    nothing for a learner without attention over the episode."""
    exp = ctx.experiment
    cfg: FewShotEval = exp.eval
    setting, episodes, raw = first_episode(cfg, sampler)
    with learner.meta_test(cfg.batchnorm), torch.no_grad():
        maps = learner.attention_maps(episodes)
    if maps is None:
        return []
    n, k, q = setting.n_way, setting.k_shot, setting.query
    support = n * k
    queries = [support + c * q for c in range(n)]  # the first query of each class
    shown = {}
    for layer, weights in enumerate(maps, 1):
        rows = weights[0, list(range(support)) + queries]
        itself = torch.cat(
            [rows[:support, :support].diagonal(), rows[support:, queries].diagonal()]
        )
        on_support = rows[:, :support] * (1 - torch.eye(len(rows), support))  # itself apart
        shown[f"attention layer {layer}"] = torch.cat([on_support, itself[:, None]], 1)
    names = [f"s{i} (c{i // k})" for i in range(support)]
    images = torch.cat([raw[:, :k].flatten(0, 1), raw[:, k]])
    caption = (
        f"Rows: the {support} support steps s0, s1, … in the order the model reads them "
        f"(class by class; cN: class N) and the first query q of each class, each query "
        f"read after the support set alone; columns: the support step read, and the step "
        f"itself (its own weight, taken out of the support columns). Each row sums to 1; "
        f"a step never reads a later one. {cfg.batchnorm} batch norm."
    )
    return [
        save_attention_maps(
            shown,
            names + [f"q (c{c})" for c in range(n)],
            names + ["itself"],
            images,
            ctx.plots_dir / "attention_maps.png",
            f"{exp.name}: attention over a {setting.name} test episode",
            caption,
        )
    ]


def augmented_support(
    ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler, info: dict[str, Any]
) -> list[Path]:
    """The support set of the first test episode of the first augmented setting, each real
    drawing followed by the m drawings the evaluation appended to it; nothing without
    eval.augment."""
    cfg: FewShotEval = ctx.experiment.eval
    if cfg.augment is None or cfg.augment.samples == 0:
        return []
    augment = eval_augmenter(ctx, learner, info, torch.device("cpu"))
    first = cfg.augment.settings[0]
    setting = EpisodeSetting(first.n_way, first.k_shot, cfg.query)
    index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed).chunks(1)[0]
    episodes = sampler.gather(setting, index)
    drawn = augment.drawings(episodes, augment.test_key(setting), 0)[0] * sampler.std + sampler.mean
    real = episodes.support_x[0] * sampler.std + sampler.mean
    rows = torch.cat([real.unsqueeze(1), drawn.unflatten(0, (len(real), -1))], 1)
    picture = tiled(rows.flatten(0, 1).clamp(0, 1), 1 + augment.samples)
    return [
        save_pictures(
            {"each row: a support drawing, then its generated ones": picture},
            ctx.plots_dir / "augmented_support.png",
            f"{ctx.experiment.name}: a {setting.name} support set augmented by "
            f"{cfg.augment.model} (m = {augment.samples})",
        )
    ]


def generated_weights(
    ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler
) -> list[Path]:
    """The head rows and conv kernel the learner generates for the first two test episodes
    of the first setting, side by side; nothing for a learner that generates neither."""
    exp = ctx.experiment
    cfg: FewShotEval = exp.eval
    setting, words = first_setting(cfg)
    index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed).chunks(2)[0]
    episodes = sampler.gather(setting, index)
    with learner.meta_test(cfg.batchnorm), torch.no_grad():
        head = learner.generated_head(episodes)
        filters = learner.generated_filters(episodes)
    paths = []
    tasks = [f"test task {task}" for task in range(len(index))]
    if head is not None:
        paths.append(
            save_head_rows(
                dict(zip(tasks, head, strict=True)),
                ctx.plots_dir / "generated_head.png",
                f"{exp.name}: generated head weights per class, two {words} test tasks",
            )
        )
    if filters is not None:
        paths.append(
            save_filters(
                dict(zip(tasks, filters, strict=True)),
                ctx.plots_dir / "generated_filters.png",
                f"{exp.name}: generated conv kernel, two {words} test tasks",
            )
        )
    return paths


def episode_alphabets(
    data_dir: Path, manifest: dict[str, Any], index: EpisodeIndex
) -> tuple[list[str], int]:
    """Each episode's majority alphabet (ties: the one its earliest class belongs to), and
    how many episodes draw all their classes from one alphabet. "unknown" throughout
    when the prepared split does not record its classes' characters."""
    characters = load_split(data_dir, "test").get("character")
    if characters is None or "characters" not in manifest:
        return ["unknown"] * len(index), 0
    alphabet = [manifest["characters"][c].split("/")[0] for c in characters.tolist()]
    majority, pure = [], 0
    for classes in index.classes.tolist():
        counts = Counter(alphabet[c] for c in classes)
        majority.append(counts.most_common(1)[0][0])
        pure += len(counts) == 1
    return majority, pure


def task_code_map(
    ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler, manifest: dict[str, Any]
) -> list[Path]:
    """The task codes of the first setting's fixed test episodes, projected on their two
    principal components, coloured by alphabet; nothing for a learner without codes."""
    exp = ctx.experiment
    cfg: FewShotEval = exp.eval
    setting, words = first_setting(cfg)
    index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed)
    codes = []
    with learner.meta_test(cfg.batchnorm), torch.no_grad():
        for part in index.chunks(cfg.meta_batch):
            code = learner.task_codes(sampler.gather(setting, part))
            if code is None:
                return []
            codes.append(code.float())
    stacked = torch.cat(codes)
    centred = stacked - stacked.mean(0)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ right[:2].T
    explained = singular[:2].pow(2) / singular.pow(2).sum().clamp_min(1e-12)
    alphabets, pure = episode_alphabets(ctx.data_dir, manifest, index)
    caption = (
        f"{len(index)} fixed {words} test episodes (seed {cfg.seed}); the components explain "
        f"{100 * explained[0]:.0f}% and {100 * explained[1]:.0f}% of the codes' variance. "
        f"An episode's classes may come from several alphabets: each is coloured by the "
        f"alphabet most of its classes come from (ties: its first class's); {pure} of "
        f"{len(index)} draw all their classes from one alphabet."
    )
    return [
        save_scatter(
            points,
            alphabets,
            ctx.plots_dir / "task_codes.png",
            f"{exp.name}: task codes of test episodes (PCA), by alphabet",
            caption,
        )
    ]


def inner_steps_curve(
    ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler
) -> list[Path]:
    """Accuracy against the number of inner steps on the first setting's fixed test
    episodes, the counts `eval.inner_steps_sweep` lists (the evaluate stage's numbers)."""
    exp = ctx.experiment
    cfg: FewShotEval = exp.eval
    if not cfg.inner_steps_sweep:
        return []
    setting, sweep = inner_steps_accuracies(learner, sampler, cfg, amp=False)
    rows = []
    for steps, accuracies in sorted(sweep.items()):
        mean, half = mean_interval(accuracies, 0.95)
        rows.append({"inner_steps": steps, "accuracy": mean, "accuracy_ci95": half})
    return [
        save_curves(
            {exp.name: rows},
            {f"{setting.name} test accuracy ({cfg.batchnorm} batch norm)": ["accuracy"]},
            ctx.plots_dir / "inner_steps.png",
            f"{exp.name}: accuracy against inner steps ({cfg.episodes} fixed episodes)",
            x_key="inner_steps",
        )
    ]


def memory_trace(ctx: StageContext, learner: FewShotLearner, sampler: EpisodeSampler) -> list[Path]:
    """Which slots each step of the first fixed test sequence reads and writes (weights
    averaged over the heads); nothing for a learner without a memory."""
    by = ctx.experiment.eval.by_instance
    if not isinstance(learner, SequenceLearner) or by is None:
        return []
    index = fixed_sequences(sampler, by.n_way, by.per_class, 1, ctx.experiment.eval.seed)
    sequences = gather_sequences(sampler, index)
    with learner.meta_test("per_query"), torch.no_grad():
        trace = learner.sequence_trace(sequences)
    if trace is None:
        return []
    name = ctx.experiment.name
    return [
        save_memory_trace(
            {f"{what} weights": weights[0] for what, weights in trace.items()},
            sequences.y[0].tolist(),
            ctx.plots_dir / "memory_trace.png",
            f"{name}: memory reads and writes over a test sequence of {by.n_way} classes × "
            f"{by.per_class}",
        )
    ]


def instance_curves(contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
    """Accuracy against the instance number with 95% CIs, a line per experiment of the
    group that has it (metrics accuracy_instance_<i>), and the published numbers dashed
    (params.yaml references of those experiments): Santoro et al. 2016, Figure 2."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for ctx in contexts:
        path = ctx.metrics_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        by = ctx.experiment.eval.by_instance
        if by is not None and f"accuracy_instance_{by.instances[0]}" in metrics:
            series[ctx.experiment.name] = [
                (i, metrics[f"accuracy_instance_{i}"], metrics[f"accuracy_instance_{i}_ci95"])
                for i in by.instances
            ]
    if not series:
        return []
    references = {}
    for name, refs in load_params().references.items():
        points = [(int(r.metric.rsplit("_", 1)[1]), r.value) for r in refs
                  if name in series and r.metric.startswith("accuracy_instance_")]  # fmt: skip
        if points:
            references[f"{name}, published ({refs[0].source})"] = sorted(points)
    return [
        save_interval_curves(
            series,
            out_dir / "accuracy_by_instance.png",
            f"{title}: accuracy by instance on fixed test sequences (± 95% CI)",
            "instance (presentation of a class)",
            "accuracy",
            references,
        )
    ]


def generated_classes_figure(ctx: StageContext, saved: dict[str, Any]) -> list[Path]:
    """The first synthetic classes of meta-training, one row each: a drawing of its first
    source class, 10 of its drawings, a drawing of its second; [] without generated tasks."""
    preview = saved.get("generated_classes")
    if preview is None:
        return []
    drawings = preview["classes"][:, :10]
    rows = torch.cat([preview["sources"][:, :1], drawings, preview["sources"][:, 1:]], dim=1)
    sources = "it lies between" if preview["kind"] == "interpolate" else "setting its spread"
    return [
        save_pictures(
            {"": tiled(rows.flatten(0, 1).float() / 255, rows.shape[1])},
            ctx.plots_dir / "generated_classes.png",
            f"{ctx.experiment.name}: synthetic classes ({preview['kind']}); each row 10 "
            f"drawings of one, at its ends the two meta-train classes {sources}",
        )
    ]


register(FewShotPlotter())
