"""Few-shot classification (engine kind `fewshot`): episodic meta-training and evaluation.

Any `FewShotLearner` plugs in (methods/fewshot_base.py says how): the engine samples
seeded meta-batches, calls the learner's `meta_step`, validates on fixed episodes, keeps
a resumable checkpoint, and evaluates on a fixed, seeded set of test episodes per
setting (identical for every method), reporting accuracy mean ± 95% CI half width. How
batch norm behaves at meta-test (`eval.batchnorm`, a regime of
fewshot_base.BATCHNORM_REGIMES that the learner lists in its `batchnorm_regimes`) has no
default: every experiment states it, and the results record it (`meta_test_batchnorm`,
and the MLflow param `eval.batchnorm`). `eval.also_batchnorm` evaluates the same
trained model on the same episodes under further regimes (Reptile's paper reports both),
their metrics suffixed with the regime (`accuracy_5way_1shot_transductive`), so the
unsuffixed keys always mean `eval.batchnorm`. `eval.inner_steps_sweep` evaluates a learner
with inner steps (fewshot_base's `with_inner_steps`) after each listed number of them, on
the first setting's episodes in the `eval.batchnorm` regime (`accuracy_5way_1shot_steps2`).
`eval.lake_runs` adds Lake et al.'s 20-way within-alphabet one-shot benchmark
(data/one_shot.py; 20 trials per run) in the `eval.batchnorm` regime: the error rate
over runs, `lake_within_alphabet_error` ± its 95% CI half width (`_ci95`), and `lake_trials`.
`eval.by_instance` scores a sequence learner (methods/sequence_base.py) on fixed, seeded
test sequences (data/sequences.py) by the presentation of each class, Santoro et al.'s
accuracy by instance: `accuracy_instance_<i>` ± `_ci95` over sequences.
`eval.augment` (and `train.augment`) add to each support image m drawings of its class from
a needed generative model (engine/augmentation.py): `accuracy_<setting>_augmented` on the
same episodes, and `_augment_gain`, the paired difference ± its 95% CI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from hypermeta.config import StrictModel
from hypermeta.data.episodes import (
    EpisodeIndex,
    Episodes,
    EpisodeSampler,
    EpisodeSetting,
    seeded_generator,
)
from hypermeta.data.one_shot import class_alphabets, lake_setting, within_alphabet_runs
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.data.sequences import fixed_sequences, gather_sequences, sequence_setting
from hypermeta.engine import register
from hypermeta.engine.augmentation import SupportAugment, SupportAugmenter, support_generator
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.classification import build_model, load_trained, standardization
from hypermeta.engine.device import DeviceName, adam, autocast, resolve_device
from hypermeta.engine.loop import Row, Training, fit_stage, on_cpu, save_trained
from hypermeta.engine.schedule import lr_scheduler
from hypermeta.engine.task_generation import GeneratedTasks, with_generated_tasks
from hypermeta.errors import HypermetaError
from hypermeta.methods import get_method
from hypermeta.methods.fewshot_base import RETIRED_REGIMES, BatchNormRegime, FewShotLearner
from hypermeta.methods.sequence_base import SequenceLearner
from hypermeta.nn.inference import inference_copy
from hypermeta.progress import progress
from hypermeta.stats import mean_interval, paired_difference


class FewShotTrain(StrictModel):
    n_way: int = Field(5, ge=2)
    k_shot: int = Field(1, gt=0)
    query: int = Field(15, gt=0, description="queries per class in meta-training episodes")
    meta_batch: int = Field(32, gt=0, description="tasks per meta-iteration")
    iterations: int = Field(1000, gt=0, description="meta-iterations (outer updates)")
    lr: float = Field(1e-3, gt=0, description="outer (meta) learning rate, Adam")
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_decay: float = Field(0.5, gt=0, le=1, description="step schedule: factor per step")
    lr_decay_every: int = Field(2000, gt=0, description="step schedule: iterations per step")
    weight_decay: float = Field(0.0, ge=0)
    val_every: int = Field(100, gt=0, description="iterations between validation + checkpoint")
    val_episodes: int = Field(100, gt=0, description="fixed validation episodes")
    seed: int = 0
    device: DeviceName = "auto"
    amp: bool = Field(False, description="bf16 autocast on CUDA")
    augment: SupportAugment | None = Field(
        None, description="meta-train on support sets augmented by a generative model"
    )
    generated_tasks: GeneratedTasks | None = Field(
        None, description="synthetic classes from a generative model mixed into meta-training"
    )


class EvalSetting(StrictModel):
    n_way: int = Field(ge=2)
    k_shot: int = Field(gt=0)


def _not_retired(regime: Any) -> Any:
    if isinstance(regime, str) and regime in RETIRED_REGIMES:
        raise PydanticCustomError("retired_regime", RETIRED_REGIMES[regime])
    return regime


# A regime in params.yaml: one of BatchNormRegime; a retired name says what replaced it.
Regime = Annotated[BatchNormRegime, BeforeValidator(_not_retired)]


class InstanceEval(StrictModel):
    """Accuracy by instance on fixed test sequences of `n_way` classes × `per_class` samples."""

    sequences: int = Field(1000, gt=0, description="fixed test sequences")
    n_way: int = Field(5, ge=2, description="classes per sequence")
    per_class: int = Field(10, gt=0, description="samples of each class per sequence")
    instances: list[Annotated[int, Field(gt=0)]] = Field(
        [1, 2, 3, 5, 10], description="presentations scored: metrics accuracy_instance_<i>"
    )

    @model_validator(mode="after")
    def _instances_exist(self) -> InstanceEval:
        if max(self.instances, default=0) > self.per_class:
            raise ValueError(
                f"instances {self.instances} go past the {self.per_class} samples of a class "
                "per sequence; raise per_class or drop the larger instances"
            )
        return self


class EvalAugment(SupportAugment):
    settings: list[EvalSetting] = Field(
        [EvalSetting(n_way=5, k_shot=1), EvalSetting(n_way=20, k_shot=1)],
        description="settings (of eval.settings) also evaluated augmented, on the same episodes",
    )
    episodes: int | None = Field(
        None, gt=0, description="augment the first n of each setting's test episodes (all: null)"
    )


class FewShotEval(StrictModel):
    batchnorm: Regime = Field(description="batch-norm regime at meta-test (BATCHNORM_REGIMES)")
    also_batchnorm: list[Regime] = Field(
        [], description="further regimes on the same episodes; metrics end in _<regime>"
    )
    settings: list[EvalSetting] = [
        EvalSetting(n_way=5, k_shot=1),
        EvalSetting(n_way=5, k_shot=5),
        EvalSetting(n_way=20, k_shot=1),
        EvalSetting(n_way=20, k_shot=5),
    ]
    query: int = Field(15, gt=0, description="queries per class in test episodes")
    episodes: int = Field(600, gt=0, description="fixed test episodes per setting")
    seed: int = Field(0, description="seeds the test episodes; same for every method")
    meta_batch: int = Field(25, gt=0, description="test episodes per forward pass")
    inner_steps_sweep: list[Annotated[int, Field(ge=0)]] = Field(
        [],
        description="inner-step counts to also evaluate after, on the first setting "
        "(learners with inner steps); metrics accuracy_<setting>_steps<n>",
    )

    lake_runs: int = Field(
        0,
        ge=0,
        description="runs of Lake's 20-way within-alphabet one-shot benchmark, 20 trials "
        "each (Omniglot; 0: off); metric lake_within_alphabet_error",
    )
    by_instance: InstanceEval | None = Field(
        None, description="accuracy by instance on fixed test sequences (sequence learners)"
    )
    augment: EvalAugment | None = Field(
        None,
        description="also evaluate with support sets augmented by a generative model "
        "(engine/augmentation.py): metrics accuracy_<setting>_augmented, augment_gain_<setting>",
    )
    paired_with: str | None = Field(
        None,
        description="a needed few-shot experiment evaluated on the same episodes: metrics "
        "accuracy_<setting>_baseline and the paired accuracy_<setting>_difference ± _ci95",
    )

    @model_validator(mode="after")
    def _regimes_differ(self) -> FewShotEval:
        regimes = [self.batchnorm, *self.also_batchnorm]
        if len(set(regimes)) != len(regimes):
            raise ValueError(f"also_batchnorm repeats a regime already evaluated: {regimes}")
        if len(set(self.inner_steps_sweep)) != len(self.inner_steps_sweep):
            raise ValueError(f"inner_steps_sweep repeats a count: {self.inner_steps_sweep}")
        if self.augment and (
            missing := [s for s in self.augment.settings if s not in self.settings]
        ):
            raise ValueError(
                f"augment.settings {[f'{s.n_way}way_{s.k_shot}shot' for s in missing]} are not "
                "in settings: the augmented pass reuses their episodes; add them to settings"
            )
        return self

    def regimes(self) -> list[tuple[BatchNormRegime, str]]:
        """(batch-norm regime, metric-key suffix): the primary one unsuffixed."""
        return [(self.batchnorm, ""), *((mode, f"_{mode}") for mode in self.also_batchnorm)]


def split_sampler(data_dir: Path, split: str, info: dict, device: torch.device) -> EpisodeSampler:
    return EpisodeSampler(load_split(data_dir, split)["images"], info["mean"], info["std"], device)


def lake_runs_index(data_dir: Path, info: dict, runs: int, seed: int, where: str) -> EpisodeIndex:
    """The meta-test split's `runs` seeded runs of Lake's within-alphabet benchmark."""
    if not info.get("drawings_by_drawer"):
        raise HypermetaError(
            f"{where}: Lake's one-shot runs need each class's drawings stored by drawer, which "
            "this prepared dataset does not say; rerun the split stage (Omniglot), or set "
            "lake_runs to 0."
        )
    seen = set(info["split_alphabets"]["train"]) | set(info["split_alphabets"]["val"])
    if shared := sorted(seen & set(info["split_alphabets"]["test"])):
        raise HypermetaError(
            f"{where}: Lake's one-shot runs are drawn from alphabets never seen in "
            f"meta-training, but this split ({info['split_summary']}) meta-trains on "
            f"{len(shared)} of its meta-test alphabets; use `split: lake` or set lake_runs "
            "to 0."
        )
    test = load_split(data_dir, "test")
    alphabets = class_alphabets(test["character"], info["characters"])
    return within_alphabet_runs(alphabets, test["rotation"], info["drawings_per_class"], runs, seed)


def episode_logits(
    learner: FewShotLearner, episodes: Episodes, batchnorm: BatchNormRegime, amp: bool = False
) -> torch.Tensor:
    """(B, N·Q, N) float logits at meta-test: what `evaluate`, validation and `predict` use."""
    with learner.meta_test(batchnorm), autocast(episodes.query_x.device, amp):
        return learner.test_logits(episodes).float()


def encoded_split(
    learner: FewShotLearner, sampler: EpisodeSampler, batchnorm: BatchNormRegime, amp: bool
) -> EpisodeSampler | None:
    """`sampler` over the learner's per-image features when, in this batch-norm regime,
    it has an `image_encoder` (every image encoded once, not once per episode); else None."""
    with learner.meta_test(batchnorm), autocast(sampler.images.device, amp):
        encoder = learner.image_encoder()
        return sampler.encoded(inference_copy(encoder)) if encoder is not None else None


def episode_accuracies(
    learner: FewShotLearner,
    sampler: EpisodeSampler,
    setting: EpisodeSetting,
    index: EpisodeIndex,
    batchnorm: BatchNormRegime,
    chunk: int,
    amp: bool,
    features: EpisodeSampler | None = None,
    encode_split: bool = True,
    augment: SupportAugmenter | None = None,
) -> torch.Tensor:
    """Query accuracy of each episode in `index`, (E,). `features`: `sampler` encoded by
    `encoded_split` for this regime, when the caller keeps it for several settings; else
    the split is encoded here if the learner allows, unless `encode_split` is False (for a
    few episodes, encoding their images per episode is cheaper than the whole split).
    `augment`: each support set augmented first, seeded by the episode's position."""
    if features is None and encode_split:
        features = encoded_split(learner, sampler, batchnorm, amp)
    accuracies, key = [], augment and augment.test_key(setting)
    for i, part in enumerate(progress(index.chunks(chunk), desc=f"{setting.name} episodes")):
        first = i * chunk
        if features is None:
            episodes = sampler.gather(setting, part)
            if augment is not None:
                episodes = augment.augmented(episodes, key, first)
            logits = episode_logits(learner, episodes, batchnorm, amp)
        else:
            episodes = features.gather(setting, part)
            if augment is not None:
                episodes = augment.augmented(sampler.gather(setting, part), key, first, episodes)
            with torch.no_grad():
                logits = learner.feature_logits(episodes).float()
        accuracies.append((logits.argmax(-1) == episodes.query_y).float().mean(1).cpu())
    return torch.cat(accuracies)


def check_ways(learner: FewShotLearner, n_way: int, where: str, fix: str) -> None:
    if learner.max_way is not None and n_way > learner.max_way:
        raise HypermetaError(
            f"{where} is {n_way}, but this model takes at most {learner.max_way} classes; {fix}."
        )


def check_regimes(learner: FewShotLearner, cfg: FewShotEval, where: str) -> None:
    """Refuse, before any work, a batch-norm regime the learner does not implement, or
    an inner-step sweep for a learner without inner steps."""
    learner.check_batchnorm(cfg.batchnorm, f"{where}.batchnorm")
    for index, regime in enumerate(cfg.also_batchnorm):
        learner.check_batchnorm(regime, f"{where}.also_batchnorm.{index}")
    if cfg.inner_steps_sweep and learner.with_inner_steps(0) is None:
        raise HypermetaError(
            f"{where}.inner_steps_sweep is set, but {type(learner).__name__} has no inner "
            "steps to vary; leave it empty."
        )
    if cfg.by_instance is not None and not isinstance(learner, SequenceLearner):
        raise HypermetaError(
            f"{where}.by_instance is set, but {type(learner).__name__} does not read labelled "
            "sequences (methods/sequence_base.py); remove by_instance."
        )


def check_augment(learner: FewShotLearner, ctx: StageContext, device: torch.device) -> None:
    """Refuse, before training: a generator of `train.augment` or `eval.augment` that is not
    under needs: or cannot draw samples of a given image's class, an augmented setting over
    a fixed-size head, and augmented meta-training of a learner that trains on features."""
    exp = ctx.experiment
    where = f"experiments.{exp.name}"
    for section, augment in (("train", exp.train.augment), ("eval", exp.eval.augment)):
        if augment is not None:
            support_generator(ctx.needed_model(augment.model), f"{where}.{section}.augment", device)
    for index, item in enumerate(exp.eval.augment.settings if exp.eval.augment else []):
        check_ways(learner, item.n_way, f"{where}.eval.augment.settings.{index}.n_way",
                   "remove that setting (a model with a larger head can augment it)")  # fmt: skip
    if exp.train.augment is not None and learner.image_encoder() is not None:
        raise HypermetaError(
            f"{where}.train.augment is set, but {type(learner).__name__} meta-trains on the "
            "features of a frozen encoder, not on images; remove train.augment."
        )


def support_augmenter(
    ctx: StageContext,
    augment: SupportAugment,
    info: dict,
    device: torch.device,
    encoder: torch.nn.Module | None = None,
) -> SupportAugmenter:
    """The augmenter of `augment` over images normalised as in `info` (with `encoder`:
    appending encoded drawings to episodes of its features)."""
    where = f"experiments.{ctx.experiment.name}: augment.model"
    model = support_generator(ctx.needed_model(augment.model), where, device)
    return SupportAugmenter(
        model, augment.samples, augment.seed, info["mean"], info["std"], encoder
    )


def augmented_metrics(
    name: str, setting: EpisodeSetting, plain: torch.Tensor, augmented: torch.Tensor
) -> dict[str, Any]:
    """Accuracy with augmentation ± its CI, and the paired gain over the same episodes
    (`plain`: their accuracies without)."""
    mean, half = mean_interval(augmented, 0.95)
    plain_mean, plain_half = mean_interval(plain, 0.95)
    gain, gain_half = paired_difference(plain, augmented, 0.95)
    key = f"accuracy_{setting.name}"
    print(f"[hypermeta] {name} {setting.name} augmented: {100 * mean:.2f} ± {100 * half:.2f}%, "
          f"paired gain {100 * gain:+.2f} ± {100 * gain_half:.2f} points")  # fmt: skip
    return {
        f"{key}_augment_baseline": plain_mean,  # without, on the augmented episodes
        f"{key}_augment_baseline_ci95": plain_half,
        f"{key}_augmented": mean,
        f"{key}_augmented_ci95": half,
        f"{key}_augment_gain": gain,
        f"{key}_augment_gain_ci95": gain_half,
    }


def inner_steps_accuracies(
    learner: FewShotLearner,
    sampler: EpisodeSampler,
    cfg: FewShotEval,
    amp: bool,
    features: EpisodeSampler | None = None,
) -> tuple[EpisodeSetting, dict[int, torch.Tensor]]:
    """The first setting and each episode's accuracy after each count of
    `cfg.inner_steps_sweep` inner steps, on that setting's fixed episodes (`eval.batchnorm`;
    `features` as for `episode_accuracies`, else each episode's images encoded with it:
    for one setting's episodes cheaper than encoding the split)."""
    first = cfg.settings[0]
    setting = EpisodeSetting(first.n_way, first.k_shot, cfg.query)
    index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed)
    accuracies = {}
    for steps in cfg.inner_steps_sweep:
        with learner.with_inner_steps(steps):
            accuracies[steps] = episode_accuracies(
                learner, sampler, setting, index, cfg.batchnorm, cfg.meta_batch, amp, features,
                encode_split=False,
            )  # fmt: skip
    return setting, accuracies


def instance_accuracies(
    learner: SequenceLearner, sampler: EpisodeSampler, cfg: InstanceEval, seed: int, chunk: int
) -> dict[int, torch.Tensor]:
    """{instance i: (E,) each fixed test sequence's accuracy at the i-th presentation of
    its classes}, the n_way steps of that presentation in each sequence."""
    index = fixed_sequences(sampler, cfg.n_way, cfg.per_class, cfg.sequences, seed)
    hits = {i: [] for i in cfg.instances}
    for part in progress(index.chunks(chunk), desc="test sequences"):
        sequences = gather_sequences(sampler, part)
        with learner.meta_test("per_query"), torch.no_grad():
            correct = (learner.sequence_logits(sequences).argmax(-1) == sequences.y).float()
        instances = sequences.instances
        for i in cfg.instances:
            at = (instances == i).float()
            hits[i].append(((correct * at).sum(1) / at.sum(1)).cpu())
    return {i: torch.cat(parts) for i, parts in hits.items()}


class FewShotTraining(Training):
    """Seeded meta-batches, one meta-step each; every `val_every` iterations a row on
    the fixed validation episodes and a checkpoint."""

    step_key = "iteration"

    def __init__(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: FewShotTrain = exp.train
        self.cfg, self.exp = cfg, exp
        self.batchnorm = exp.eval.batchnorm
        self.device = resolve_device(cfg.device, f"experiments.{exp.name}.train.device")
        self.info = load_manifest(ctx.data_dir)
        self.setting = EpisodeSetting(cfg.n_way, cfg.k_shot, cfg.query)
        self.train_sampler = split_sampler(ctx.data_dir, "train", self.info, self.device)
        self.val_sampler = split_sampler(ctx.data_dir, "val", self.info, self.device)
        self.train_sampler.check(self.setting, f"experiments.{exp.name}.train (train split)")
        self.val_sampler.check(self.setting, f"experiments.{exp.name}.train (val split)")
        self.val_index = self.val_sampler.fixed_episodes(self.setting, cfg.val_episodes, cfg.seed)
        self.generated_preview = None
        if cfg.generated_tasks is not None:  # engine/task_generation.py
            self.train_sampler, self.generated_preview = with_generated_tasks(
                self.train_sampler, cfg.generated_tasks, ctx, self.info, cfg.seed
            )
            self.train_sampler.check(self.setting, f"experiments.{exp.name}.train")

        torch.manual_seed(cfg.seed)
        self.learner = build_model(exp.section, self.info).to(self.device)
        if not isinstance(self.learner, FewShotLearner):
            raise HypermetaError(f"method {exp.method!r} does not build a FewShotLearner.")
        check_ways(
            self.learner,
            cfg.n_way,
            f"experiments.{exp.name}.train.n_way",
            "make it agree with n_way in the model section",
        )
        check_regimes(self.learner, exp.eval, f"experiments.{exp.name}.eval")
        check_augment(self.learner, ctx, self.device)
        self.augment = cfg.augment and support_augmenter(ctx, cfg.augment, self.info, self.device)
        start_from = get_method(exp.method).start_from
        if start_from is not None:
            start_from(self.learner, {n: load_trained(ctx.needed_model(n))[0] for n in exp.needs})
            self.learner.to(self.device)
        # A learner whose encoder is frozen sees each image through it alone in training
        # too (LEO): it meta-trains on episodes of features, every image encoded once.
        if (encoder := self.learner.image_encoder()) is not None:
            self.train_sampler = self.train_sampler.encoded(inference_copy(encoder))
        self.optimizer = adam(self.learner.parameters(), cfg.lr, cfg.weight_decay)
        self.scheduler = lr_scheduler(
            self.optimizer, cfg.lr_schedule, cfg.iterations, cfg.lr_decay, cfg.lr_decay_every
        )
        self.label, self.rounds, self.steps = exp.name, 1, cfg.iterations
        self.row_every = self.checkpoint_every = cfg.val_every
        self.window: dict[str, float] = {}  # sums of meta_step's numbers since the last row
        self.window_steps, self.elapsed = 0, 0.0

    def state(self, round: int, step: int) -> dict[str, Any]:
        return {
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": round * self.steps + step,
            "elapsed": self.elapsed,
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        self.learner.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.elapsed = state["elapsed"]
        return divmod(state["iteration"], self.steps)

    def resumed(self, round: int, step: int) -> str:
        return f"after meta-iteration {round * self.steps + step}"

    def begin_round(self, round: int, step: int) -> str:
        self.began = time.perf_counter()
        return "meta-training"

    def step(self, round: int, step: int) -> None:
        self.learner.train()
        self.learner.on_iteration(step, self.cfg.iterations)
        # Seeded per iteration: a resumed run draws exactly the tasks it would have.
        episodes = self.train_sampler.sample(
            self.setting, self.cfg.meta_batch, seeded_generator("train", self.cfg.seed, step)
        )
        if self.augment is not None:
            episodes = self.augment.augmented(episodes, ("augment-train", self.augment.seed, step))
        self.lr = self.optimizer.param_groups[0]["lr"]
        with autocast(self.device, self.cfg.amp):
            stats = self.learner.meta_step(episodes, self.optimizer)
        self.scheduler.step()
        for key, value in stats.items():
            self.window[key] = self.window.get(key, 0.0) + value
        self.window_steps += 1

    def row(self, round: int, done: int) -> Row:
        self.elapsed += time.perf_counter() - self.began
        val = episode_accuracies(
            self.learner,
            self.val_sampler,
            self.setting,
            self.val_index,
            self.batchnorm,
            self.cfg.meta_batch,
            self.cfg.amp,
        )
        val_mean, val_half = mean_interval(val)
        row = {
            "iteration": done,
            **{f"train_{key}": value / self.window_steps for key, value in self.window.items()},
            "val_accuracy": val_mean,
            "val_accuracy_ci95": val_half,
            "lr": self.lr,
            "train_seconds": self.elapsed,
        }
        self.window, self.window_steps = {}, 0
        self.began = time.perf_counter()  # validation time is not training time
        return row

    def line(self, row: Row) -> str:
        return (
            f"{row['iteration']}/{self.cfg.iterations}: train loss "
            f"{row.get('train_loss', float('nan')):.4f}, val accuracy {row['val_accuracy']:.4f}"
        )

    def postfix(self, last: Row | None) -> dict[str, str]:
        return {"val_accuracy": f"{last['val_accuracy']:.3f}"} if last else {}

    def saved(self) -> dict[str, Any]:
        return {
            "experiment": self.exp.section,
            "data_info": self.info,
            "state_dict": on_cpu(self.learner.state_dict()),
            **({"generated_classes": self.generated_preview} if self.generated_preview else {}),
        }


class FewShotEngine(Engine):
    kind = "fewshot"
    train_config = FewShotTrain
    eval_config = FewShotEval
    compare_columns = {
        "5-way 1-shot": "accuracy_5way_1shot",
        "5-way 5-shot": "accuracy_5way_5shot",
        "20-way 1-shot": "accuracy_20way_1shot",
        "20-way 5-shot": "accuracy_20way_5shot",
        "Lake 20-way within-alphabet one-shot error": "lake_within_alphabet_error",
    }
    compare_note = (
        "Accuracy on fixed, seeded test episodes, the same for every learner, in each "
        "experiment's eval.batchnorm regime. Lake's benchmark (eval.lake_runs): each run is "
        "20 characters of one meta-test alphabet, one drawer's drawing of each as the "
        "support and another drawer's as the 20 queries; error over the runs' 20 trials "
        "each, ± 95% CI over runs; blank where a learner's head takes under 20 ways or the "
        "experiment does not ask for it. Published rows: params.yaml's references for the group."
    )

    def train(self, ctx: StageContext) -> None:
        training = FewShotTraining(ctx)
        history = fit_stage(training, ctx)
        save_trained(ctx.model_path, training.saved(), history, ctx.history_path)

    def trained_model(self, ctx: StageContext) -> tuple[torch.nn.Module, str]:
        learner, saved = load_trained(ctx.model_path)
        return learner, (
            f"with learner.meta_test(regime), regime one of {learner.batchnorm_regimes} "
            f"(evaluated: {saved['experiment']['eval']['batchnorm']!r}): "
            "learner.test_logits(Episodes(support_x, support_y, query_x, query_y, n_way)) "
            "→ (B, N·Q, N) query logits (hypermeta.data.episodes.Episodes); images "
            f"{standardization(saved['data_info'])}"
        )

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        exp = ctx.experiment
        cfg: FewShotEval = exp.eval
        device = resolve_device(exp.train.device, f"experiments.{exp.name}.train.device")
        learner, saved = load_trained(ctx.model_path)
        check_regimes(learner, cfg, f"experiments.{exp.name}.eval")
        learner.to(device)
        sampler = split_sampler(ctx.data_dir, "test", saved["data_info"], device)
        metrics: dict[str, Any] = {
            "meta_test_batchnorm": cfg.batchnorm,  # the regime of the unsuffixed metrics
            "test_episodes": cfg.episodes,
            "test_classes": sampler.num_classes,
            "params_total": sum(p.numel() for p in learner.parameters()),
            "classifier_ways": (
                "any number (no fixed-size head)"
                if learner.max_way is None
                else f"at most {learner.max_way} (a fixed-size head; larger settings are skipped)"
            ),
        }
        features = {
            mode: encoded_split(learner, sampler, mode, exp.train.amp) for mode, _ in cfg.regimes()
        }
        augment = cfg.augment and eval_augmenter(ctx, learner, saved["data_info"], device)
        if augment is not None:
            metrics |= {
                "augment_model": cfg.augment.model,
                "augment_samples": augment.samples,
                "augment_episodes": min(cfg.augment.episodes or cfg.episodes, cfg.episodes),
            }
        baseline = None
        if cfg.paired_with is not None:
            baseline, differs = paired_baseline(ctx, saved, device)
            baseline_features = encoded_split(baseline, sampler, cfg.batchnorm, exp.train.amp)
            metrics |= {"paired_with": cfg.paired_with, "paired_differs_in": differs}
        for item in cfg.settings:
            setting = EpisodeSetting(item.n_way, item.k_shot, cfg.query)
            if learner.max_way is not None and setting.n_way > learner.max_way:
                print(f"[hypermeta] {exp.name}: skipping {setting.name}, over the model's ways")
                continue
            sampler.check(setting, f"experiments.{exp.name}.eval.settings")
            index = sampler.fixed_episodes(setting, cfg.episodes, cfg.seed)
            for batchnorm, suffix in cfg.regimes():
                accuracies = episode_accuracies(
                    learner,
                    sampler,
                    setting,
                    index,
                    batchnorm,
                    cfg.meta_batch,
                    exp.train.amp,
                    features[batchnorm],
                )
                mean, half = mean_interval(accuracies, 0.95)
                key = f"accuracy_{setting.name}{suffix}"
                metrics[key] = mean
                metrics[f"{key}_ci95"] = half  # the report's half-width key
                print(
                    f"[hypermeta] {exp.name} {setting.name} ({batchnorm} batch norm): "
                    f"{100 * mean:.2f} ± {100 * half:.2f}%"
                )
                if augment is not None and not suffix and item in cfg.augment.settings:
                    n = cfg.augment.episodes
                    first = EpisodeIndex(index.classes[:n], index.drawings[:n])
                    augmented = episode_accuracies(
                        learner, sampler, setting, first, batchnorm, cfg.meta_batch,
                        exp.train.amp, features[batchnorm], augment=augment,
                    )  # fmt: skip
                    plain = accuracies[: len(first)]
                    metrics |= augmented_metrics(exp.name, setting, plain, augmented)
                if baseline is not None and batchnorm == cfg.batchnorm:
                    theirs = episode_accuracies(
                        baseline, sampler, setting, index, batchnorm, cfg.meta_batch,
                        exp.train.amp, baseline_features,
                    )  # fmt: skip
                    metrics |= paired_metrics(key, accuracies, theirs)
        if cfg.inner_steps_sweep:
            setting, sweep = inner_steps_accuracies(
                learner, sampler, cfg, exp.train.amp, features[cfg.batchnorm]
            )
            for steps, accuracies in sweep.items():
                mean, half = mean_interval(accuracies, 0.95)
                metrics[f"accuracy_{setting.name}_steps{steps}"] = mean
                metrics[f"accuracy_{setting.name}_steps{steps}_ci95"] = half
                print(f"[hypermeta] {exp.name} {setting.name} after {steps} inner steps: "
                      f"{100 * mean:.2f} ± {100 * half:.2f}%")  # fmt: skip
        if cfg.by_instance is not None:
            metrics.update(instance_metrics(learner, sampler, cfg, exp.name))
        if cfg.lake_runs:
            metrics.update(
                lake_metrics(learner, sampler, ctx, cfg, exp.train.amp, features[cfg.batchnorm])
            )
        return metrics


def eval_augmenter(
    ctx: StageContext, learner: FewShotLearner, info: dict, device: torch.device
) -> SupportAugmenter:
    """`eval.augment`'s augmenter in the `eval.batchnorm` regime: for a learner with an
    `image_encoder` there, drawings are encoded by the same inference copy as the split."""
    cfg: FewShotEval = ctx.experiment.eval
    with learner.meta_test(cfg.batchnorm):
        encoder = learner.image_encoder()
        encoder = inference_copy(encoder) if encoder is not None else None
    return support_augmenter(ctx, cfg.augment, info, device, encoder)


def paired_baseline(
    ctx: StageContext, saved: dict[str, Any], device: torch.device
) -> tuple[FewShotLearner, str]:
    """`eval.paired_with`'s trained learner, on `device`, and the dotted keys of its
    method, model and train sections that differ from this experiment's, in words; refused
    unless it is a few-shot learner of the same prepared data (else its test episodes differ)
    implementing this experiment's batch-norm regime."""
    exp = ctx.experiment
    where = f"experiments.{exp.name}.eval.paired_with"
    baseline, theirs = load_trained(ctx.needed_model(exp.eval.paired_with))
    if not isinstance(baseline, FewShotLearner):
        raise HypermetaError(f"{where} names {exp.eval.paired_with!r}, not a few-shot learner; "
                             "name one evaluated on the same episodes.")  # fmt: skip
    if theirs["data_info"]["tensor_md5"] != saved["data_info"]["tensor_md5"]:
        raise HypermetaError(
            f"{where}: {exp.eval.paired_with!r} was trained on other prepared data, so its "
            "test episodes are not these; give both experiments the same dataset and split."
        )
    baseline.check_batchnorm(exp.eval.batchnorm, f"experiments.{exp.name}.eval.batchnorm")
    ours = {key: saved["experiment"].get(key) for key in ("method", "model", "train")}
    differs = differing_keys(ours, {key: theirs["experiment"].get(key) for key in ours})
    return baseline.to(device), ", ".join(differs) or "nothing"


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two nested sections differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix.rstrip(".")]
    keys = sorted(set(a) | set(b))
    return [d for key in keys for d in differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]


def paired_metrics(key: str, ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """The baseline's accuracy on the same episodes (± its CI) and the paired difference
    ours - baseline ± the paired 95% CI over episodes."""
    mean, half = mean_interval(theirs, 0.95)
    difference, difference_half = paired_difference(theirs, ours, 0.95)
    return {
        f"{key}_baseline": mean,
        f"{key}_baseline_ci95": half,
        f"{key}_difference": difference,
        f"{key}_difference_ci95": difference_half,
    }


def instance_metrics(
    learner: SequenceLearner, sampler: EpisodeSampler, cfg: FewShotEval, name: str
) -> dict[str, Any]:
    """accuracy_instance_<i> ± `_ci95` over the fixed test sequences, and their number."""
    by = cfg.by_instance
    check_ways(learner, by.n_way, f"experiments.{name}.eval.by_instance.n_way", "lower it")
    sampler.check(sequence_setting(by.n_way, by.per_class), f"experiments.{name}.eval.by_instance")
    metrics: dict[str, Any] = {"test_sequences": by.sequences}
    for i, accuracies in instance_accuracies(
        learner, sampler, by, cfg.seed, cfg.meta_batch
    ).items():
        mean, half = mean_interval(accuracies, 0.95)
        metrics[f"accuracy_instance_{i}"], metrics[f"accuracy_instance_{i}_ci95"] = mean, half
        print(f"[hypermeta] {name} instance {i}: {100 * mean:.2f} ± {100 * half:.2f}%")
    return metrics


def lake_metrics(
    learner: FewShotLearner,
    sampler: EpisodeSampler,
    ctx: StageContext,
    cfg: FewShotEval,
    amp: bool,
    features: EpisodeSampler | None,
) -> dict[str, Any]:
    """Lake's within-alphabet one-shot error over `cfg.lake_runs` runs (mean over runs ±
    95% CI half width), in the `eval.batchnorm` regime; {} for a head of under 20 ways."""
    name, setting = ctx.experiment.name, lake_setting()
    if learner.max_way is not None and setting.n_way > learner.max_way:
        print(f"[hypermeta] {name}: skipping Lake's 20-way runs, over the model's ways")
        return {}
    info = load_manifest(ctx.data_dir)
    index = lake_runs_index(ctx.data_dir, info, cfg.lake_runs, cfg.seed, f"experiments.{name}.eval")
    accuracies = episode_accuracies(
        learner, sampler, setting, index, cfg.batchnorm, cfg.meta_batch, amp, features
    )
    error, half = mean_interval(1 - accuracies, 0.95)
    trials = len(index) * setting.n_way
    print(f"[hypermeta] {name} Lake's within-alphabet 20-way one-shot, {trials} trials: "
          f"error {100 * error:.2f} ± {100 * half:.2f}%")  # fmt: skip
    return {
        "lake_within_alphabet_error": error,
        "lake_within_alphabet_error_ci95": half,
        "lake_trials": trials,
    }


register(FewShotEngine())
