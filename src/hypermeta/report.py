"""The report stage: `reports/report.md` and a self-contained `reports/index.html`
(figures embedded, opens from disk) with ours beside the papers' numbers, the figures,
and provenance (git commit, profile, params hashes, data checksums, MLflow run ids)."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from hypermeta.atomic import write_text
from hypermeta.config import Experiment, Params, Reference
from hypermeta.engine import get_engine
from hypermeta.engine.augmentation import PUBLISHED as AUGMENT_PUBLISHED
from hypermeta.errors import HypermetaError
from hypermeta.experiments import load_params, resolve
from hypermeta.methods import get_method
from hypermeta.methods.fewshot_base import BATCHNORM_REGIMES
from hypermeta.paths import METRICS, PLOTS, REPORTS, repo_root
from hypermeta.plots import get_plotter
from hypermeta.results import RESULTS, PaperRecord, load_records
from hypermeta.stages import child_run, read_manifest, stage_context
from hypermeta.tracking import git_commit

CI_SUFFIXES = ("_ci_low", "_ci_high", "_ci95")
PERCENT_WORDS = ("accuracy", "error", "bwt", "transfer")


def _is_percent(metric: str) -> bool:
    return any(word in metric for word in PERCENT_WORDS)


def natural_key(name: str) -> list[str | int]:
    """Sort key reading each run of digits as a number: task_2 before task_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def format_value(metric: str, value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and value > 1):
        return f"{int(value):,}"
    return f"{100 * value:.2f}%" if _is_percent(metric) else f"{value:.4g}"


def format_metric(metric: str, metrics: dict[str, Any]) -> str:
    """The value with its 95% CI, from `<m>_ci_low/_ci_high` or a `<m>_ci95` half width."""
    value = metrics[metric]
    text = format_value(metric, value)
    if f"{metric}_ci_low" in metrics:
        low = format_value(metric, metrics[f"{metric}_ci_low"])
        high = format_value(metric, metrics[f"{metric}_ci_high"])
        return f"{text} [{low}, {high}]"
    if f"{metric}_ci95" in metrics:
        return f"{text} ± {format_value(metric, metrics[f'{metric}_ci95'])}"
    return text


def result_rows(
    metrics: dict[str, Any], references: list[Reference], dataset: str
) -> list[tuple[str, str, str]]:
    """(metric, ours, paper) rows: referenced metrics first, then every other number."""
    by_metric = {ref.metric: ref for ref in references}
    numeric = [
        k
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.endswith(CI_SUFFIXES)
    ]
    numeric.sort(key=natural_key)
    ordered = [m for m in by_metric if m in metrics] + [m for m in numeric if m not in by_metric]
    rows = []
    for metric in ordered:
        ref = by_metric.get(metric)
        paper = paper_cell(ref, dataset) if ref else ""
        rows.append((metric, format_metric(metric, metrics), paper))
    return rows


def paper_cell(ref: Reference, dataset: str) -> str:
    note = "" if ref.dataset == dataset else f" on {ref.dataset}, not {dataset}"
    return f"{format_value(ref.metric, ref.value)} ({ref.source}{note})"


def mixed_data_note(members: list[Experiment]) -> str:
    """A warning where a group's experiments are cut differently (e.g. the Vinyals and the
    Lake split of Omniglot): their test episodes differ, so their numbers do not compare."""
    by_data: dict[str, list[str]] = {}
    for exp in members:
        by_data.setdefault(exp.data_name, []).append(exp.name)
    if len(by_data) < 2:
        return ""
    parts = "; ".join(f"{', '.join(names)} on {data}" for data, names in by_data.items())
    return f"Not one data set: {parts}. Their test episodes differ; compare within one."


def data_note(exp: Experiment, manifest: dict[str, Any] | None) -> str:
    """Which data and scale a number comes from: the dataset, its split (from the split
    stage's manifest), any slice the experiment trains on (its `max_*` settings), the profile."""
    if manifest is None:
        return f"{exp.dataset} (not prepared); profile {exp.profile}"
    parts = [f"{exp.dataset} ({manifest['split_summary']})"]
    counts, slices = manifest["counts"], []
    for key, value in exp.train.model_dump().items():
        if key.startswith("max_") and value is not None:  # e.g. max_train_tokens
            split, *unit = key.removeprefix("max_").split("_")
            of = f" of {counts[split]:,}" if split in counts else ""
            slices.append(f"{value:,}{of} {split} {' '.join(unit)}")
    if slices:
        parts.append("slice: " + ", ".join(slices))
    return "; ".join([*parts, f"profile {exp.profile}"])


def batchnorm_of(metric: str, record: dict[str, Any]) -> str | None:
    """The batch-norm regime a few-shot number was measured in: the one its key ends in
    (`eval.also_batchnorm`), else the record's `meta_test_batchnorm`; None for others."""
    if "meta_test_batchnorm" not in record:
        return None
    suffixed = (r for r in BATCHNORM_REGIMES if metric.removesuffix("_ci95").endswith(f"_{r}"))
    return next(suffixed, record["meta_test_batchnorm"])


def batchnorm_note(record: dict[str, Any]) -> str:
    """The regimes of a few-shot record's numbers, in words; "" for other records."""
    if "meta_test_batchnorm" not in record:
        return ""
    primary = record["meta_test_batchnorm"]
    parts = [f"Batch norm at meta-test: {primary} ({BATCHNORM_REGIMES[primary]})"]
    others = {batchnorm_of(metric, record) for metric in record} - {primary, None}
    parts += [f"metrics ending _{r}: {r} ({BATCHNORM_REGIMES[r]})" for r in sorted(others)]
    return "; ".join(parts) + "."


def ways_note(record: dict[str, Any]) -> str:
    """How many ways a few-shot learner's classifier takes, in words; "" for others."""
    return f"Ways: {record['classifier_ways']}." if "classifier_ways" in record else ""


def paired_note(record: dict[str, Any]) -> str:
    """`eval.paired_with` in words: each setting's accuracy beside the baseline's on the same
    test episodes, the paired difference ± its 95% CI, and, where that interval holds 0, that
    no difference was measured; "" for a record without a paired baseline."""
    if "paired_with" not in record:
        return ""
    parts = []
    for key in sorted((k for k in record if k.endswith("_difference")), key=natural_key):
        metric = key.removesuffix("_difference")
        difference, half = record[key], record[f"{key}_ci95"]
        part = (
            f"{metric.removeprefix('accuracy_')}: {100 * record[metric]:.2f}% vs "
            f"{100 * record[f'{metric}_baseline']:.2f}%, difference {100 * difference:+.2f} "
            f"± {100 * half:.2f} points"
        )
        if abs(difference) <= half:
            part += ", inside its paired 95% CI: no difference measured"
        parts.append(part)
    return (
        f"Paired with {record['paired_with']} (differs in {record['paired_differs_in']}), "
        f"on the same test episodes: {'; '.join(parts)}."
    )


def model_note(exp: Experiment) -> str:
    """The experiment's method variant in words (MethodSpec.describe); "" when it has none."""
    describe = get_method(exp.method).describe
    return describe(exp.model) if describe is not None else ""


def read_metrics(experiment: str) -> dict[str, Any]:
    path = METRICS / experiment / "metrics.json"
    if not path.exists():
        raise HypermetaError(f"{path} is missing; run the evaluate stage for {experiment} first.")
    return json.loads(path.read_text())


def summary_rows(
    experiments: list[Experiment],
    results: dict[str, dict[str, Any]],
    references: dict[str, list[Reference]],
    data: dict[str, str],
) -> list[tuple[str, str, str, str, str]]:
    """One row per published number: the experiment, the metric, ours, the paper's, and
    the data ours comes from (`data`, by experiment), with a few-shot number's batch-norm
    regime."""
    rows = []
    for exp in experiments:
        refs = references.get(exp.name, [])
        record = results[exp.name]
        for metric, ours, paper in result_rows(record, refs, exp.dataset):
            if paper:
                regime = batchnorm_of(metric, record)
                note = data[exp.name] + (f"; batch norm {regime}" if regime else "")
                rows.append((exp.name, metric, ours, paper, note))
    return rows


def comparison_rows(
    columns: dict[str, str], metrics: dict[str, dict[str, Any]], anchors: list[Reference]
) -> list[tuple[str, ...]]:
    """One row per experiment of a group: its name, then each column's metric with its CI;
    then one per published anchor of the group (params.yaml `references.<group>`) in a column."""
    keys = list(columns.values())
    rows = [
        (name, *(format_metric(key, m) if key in m else "" for key in keys))
        for name, m in metrics.items()
    ]
    for ref in anchors:
        if ref.metric in keys:
            cells = (format_value(key, ref.value) if key == ref.metric else "" for key in keys)
            rows.append((f"published: {ref.source}", *cells))
    return rows


AUGMENT_HEADER = ["experiment", "setting", "generator", "without", "with", "paired gain"]
AUGMENT_NOTE = (
    "Support-set augmentation (eval.augment): each support image gets m drawings of its "
    "class from the generator, on the same fixed test episodes as the row without; the "
    "gain is the mean over episodes of (with - without) ± its paired 95% CI. The published "
    "rows are the DAGAN paper's (Antoniou et al. 2017), on its own Omniglot split and "
    "protocol, not ours: anchors for the size of an effect, not numbers to match."
)


def augmentation_rows(
    results: dict[str, dict[str, Any]],
) -> tuple[list[tuple[str, ...]], list[str]]:
    """One row per augmented setting of each experiment (without, with, the paired gain),
    then the published anchors; and a plain sentence for each gain not above its CI."""
    rows, sentences = [], []
    for name, m in results.items():
        for gain_key in sorted((k for k in m if k.endswith("_augment_gain")), key=natural_key):
            plain = gain_key.removesuffix("_augment_gain")
            setting = plain.removeprefix("accuracy_").replace("_", " ")
            generator = (
                f"{m['augment_model']}, m = {m['augment_samples']}, "
                f"{m['augment_episodes']} episodes"
            )
            keys = (f"{plain}_augment_baseline", f"{plain}_augmented", gain_key)
            cells = (format_metric(key, m) for key in keys)
            rows.append((name, setting, generator, *cells))
            gain, half = m[gain_key], m[f"{gain_key}_ci95"]
            if gain - half <= 0:
                effect = "lowers" if gain + half < 0 else "does not lift, outside its paired CI,"
                sentences.append(
                    f"Augmenting with {generator} {effect} the {setting} accuracy of {name} "
                    f"(gain {format_metric(gain_key, m)})."
                )
    for source, without, with_ in AUGMENT_PUBLISHED:
        cells = (format_value("accuracy", v) for v in (without, with_, with_ - without))
        rows.append((f"published: {source}", "", "", *cells))
    return rows, sentences


PAPER_SCALE_HEADER = ["experiment", "metric", "ours", "published", "difference", "scale",
                      "wall time", "device", "commit", "finished"]  # fmt: skip
NOT_YET_HEADER = ["experiment", "published", "why not yet"]
PAPER_SCALE = "Reproduced at paper scale"  # the section's heading, in the report and README
README_BEGIN = (
    "<!-- paper-scale results: generated from results/*.json and params.yaml by "
    "`python -m hypermeta.report --readme`; do not edit by hand -->"
)
README_END = "<!-- end of paper-scale results -->"


def format_difference(metric: str, difference: float) -> str:
    """ours - published, signed: in percentage points for a percentage."""
    if _is_percent(metric):
        return f"{100 * difference:+.2f} points"
    return f"{difference:+.4g}"


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _in_params_order(params: Params, records: dict[str, PaperRecord]) -> list[PaperRecord]:
    names = [name for name in params.experiments if name in records]
    return [records[name] for name in names + sorted(set(records) - set(names))]


def _record_metrics(params: Params, record: PaperRecord) -> list[str]:
    """The metrics a record's rows show: those it compares with a paper, else those its
    report group's published numbers name (a baseline beside its group's method)."""
    if record.published:
        return [comparison.metric for comparison in record.published]
    entry = params.experiments.get(record.experiment)
    if entry is None or entry.group is None:
        return []
    peers = [name for name, other in params.experiments.items() if other.group == entry.group]
    named = [ref.metric for name in peers for ref in params.references.get(name, [])]
    return [metric for metric in dict.fromkeys(named) if metric in record.metrics]


def paper_scale_rows(params: Params, records: dict[str, PaperRecord]) -> list[tuple[str, ...]]:
    """One row per number a paper-scale record holds (PAPER_SCALE_HEADER)."""
    rows = []
    for record in _in_params_order(params, records):
        published = {comparison.metric: comparison for comparison in record.published}
        changed = ", ".join(  # as --set takes them: null, not Python's None
            f"{k}={'null' if v is None else v}" for k, v in record.overrides.items()
        )
        kind = "partial" if record.partial else "full"
        scale = f"{kind}: {changed}" if changed else kind  # full: settings that keep the scale
        wall = format_duration(record.wall_seconds) + (" (resumed)" if record.resumed else "")
        shared = (
            scale,
            wall,
            f"{record.device}, {record.threads} thread{'s' if record.threads > 1 else ''}",
            record.git_commit[:8],
            record.finished[:10],
        )
        for metric in _record_metrics(params, record) or ["—"]:
            comparison = published.get(metric)
            if metric in record.metrics:
                ours = format_metric(metric, record.metrics)
            elif comparison:
                ours = format_value(metric, comparison.ours)
            else:  # a record with no number that a paper or its group's paper has
                ours = "nothing to compare; see its record"
            if comparison:
                paper = f"{format_value(metric, comparison.published)} ({comparison.source})"
                difference = format_difference(metric, comparison.difference)
            else:
                paper, difference = "—", "—"
            rows.append((record.experiment, metric, ours, paper, difference, *shared))
    return rows


def missing_data(params: Params, root: Path) -> dict[str, list[str]]:
    """Each dataset of params.yaml's paper profile whose files the configured local data
    mirror lacks, with those files: a run of it here could not get its data."""
    from hypermeta.data.download import mirror_location, missing_from_mirror
    from hypermeta.data.registry import DATASETS

    mirror = mirror_location(params.data.mirror, root)
    paper = params.data.datasets.get("paper", [])
    return {name: files for name in paper if (files := missing_from_mirror(DATASETS[name], mirror))}


def not_yet_rows(
    params: Params, records: dict[str, PaperRecord], missing: dict[str, list[str]]
) -> list[tuple[str, ...]]:
    """Each experiment with published numbers no record covers, the numbers (grouped by
    source) and why (NOT_YET_HEADER); `missing` is `missing_data`."""
    rows = []
    for name, references in params.references.items():
        if name not in params.experiments:  # a report group's anchors, not an experiment's
            continue
        covered = {c.metric for c in records[name].published} if name in records else set()
        uncovered = [ref for ref in references if ref.metric not in covered]
        if not uncovered:
            continue
        by_source: dict[str, list[str]] = {}
        for ref in uncovered:
            by_source.setdefault(ref.source, []).append(
                f"{ref.metric} {format_value(ref.metric, ref.value)}"
            )
        numbers = "; ".join(f"{', '.join(n)} ({source})" for source, n in by_source.items())
        paper = resolve(params, name, "paper")
        gpu, minutes = paper.resources.gpu, paper.resources.runtime
        reasons = []
        if files := missing.get(paper.dataset):
            reasons.append(
                f"data not available: the data mirror has no {', '.join(files)} (the download "
                "stage would have to fetch it from its publisher)"
            )
        if name in records:
            reasons.append("its paper-scale record does not compare these")
        elif gpu > 0:
            asks = f"{gpu} GPU for about {format_duration(60 * minutes)}"
            reasons.append(f"needs a GPU at paper scale (its paper profile asks for {asks})")
        elif not reasons:
            reasons.append(f"fits this CPU; not run yet (`hypermeta paper-check {name}`)")
        rows.append((name, numbers, "; ".join(reasons)))
    return rows


def paper_scale_section(
    params: Params, records: dict[str, PaperRecord], missing: dict[str, list[str]]
) -> list[tuple]:
    """The section PAPER_SCALE (its heading apart) as blocks, ("h3" | "p", text) or
    ("table", header, rows), which the report and the README render alike; `missing`
    is `missing_data`."""
    if records:
        intro = (
            "From the records under `results/`, one per experiment run at its paper profile "
            "by `hypermeta paper-check`, kept in git with the commit of the code that ran. "
            "Ours with its 95% CI; difference = ours − published (in points for a "
            "percentage); scale is full, or partial, with the settings changed from the paper "
            "profile (a full run's leave its scale as published: threads, or no support-set "
            "augmentation); a resumed run's wall time is the part after its resume."
        )
        blocks = [("p", intro), ("table", PAPER_SCALE_HEADER, paper_scale_rows(params, records))]
    else:
        blocks = [
            ("p", "No experiment has been run at paper scale yet: `results/` holds no record.")
        ]
    blocks.append(("h3", "Not yet reproduced at paper scale"))
    not_yet = not_yet_rows(params, records, missing)
    if not_yet:
        blocks += [
            ("p", "The papers' numbers in params.yaml's `references` that no record covers."),
            ("table", NOT_YET_HEADER, not_yet),
        ]
    else:
        blocks.append(("p", "None: every published number has a paper-scale record."))
    return blocks


def paper_scale_markdown(
    params: Params, records: dict[str, PaperRecord], missing: dict[str, list[str]]
) -> str:
    """The section in markdown: report.md's and the README's, the same text."""
    marks = {"h3": "### ", "p": ""}
    parts = [
        _markdown_table(block[1], block[2]) if block[0] == "table" else marks[block[0]] + block[1]
        for block in paper_scale_section(params, records, missing)
    ]
    return "\n\n".join(parts)


def _html_blocks(blocks: list[tuple]) -> list[str]:
    return [
        _html_table(block[1], block[2])
        if block[0] == "table"
        else f"<{block[0]}>{_inline_code(html.escape(block[1]))}</{block[0]}>"
        for block in blocks
    ]


def readme_with_results(readme: str, section: str) -> str:
    """`readme` with the text between its README_BEGIN and README_END lines replaced."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise HypermetaError(
            f"README.md lacks the lines {README_BEGIN!r} and then {README_END!r}; put them "
            f'back around the section "{PAPER_SCALE}".'
        )
    return f"{readme[: begin + len(README_BEGIN)]}\n\n{section}\n\n{readme[end:]}"


def _markdown_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _unbroken_interval(cell: str) -> str:
    """A value may wrap before its interval, never inside it or around its ±."""
    cell = re.sub(r"\[[^]]*\]", lambda found: found.group().replace(" ", "\u00a0"), cell)
    return cell.replace(" ± ", "\u00a0±\u00a0")


def _inline_code(escaped: str) -> str:
    """Markdown's `code` in escaped HTML text."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


def _html_cell(text: str) -> str:
    """A cell's text in HTML: identifiers (accuracy_20way_1shot, train.epochs=10) may
    wrap after their `_`, `.` and `=`, intervals never; `code` is <code>."""
    escaped = html.escape(_unbroken_interval(text))
    return _inline_code(re.sub(r"([_=]|\.(?=[A-Za-z]))", r"\1<wbr>", escaped))


def _html_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _embedded(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def build_report(params: Params, out_dir: Path, results: Path = RESULTS) -> Path:
    """Write the report next to `out_dir`, then swap it into place; the paper-scale
    records are read from the folder `results`."""
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_report(params, staging, load_records(results))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise
    # Swap the finished folder into place so readers never see a half-written report.
    previous = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def write_report(params: Params, staging: Path, records: dict[str, PaperRecord]) -> None:
    """report.md, index.html and figures/ into the folder `staging`."""
    from hypermeta.tracking import NullTracker

    root = repo_root()
    figures = staging / "figures"
    figures.mkdir(parents=True)

    md = [
        "# hypermeta report",
        "",
        f"Profile **{params.profile}** ({params.profiles[params.profile]}); "
        f"git commit `{git_commit(root)}`. Intervals are 95% confidence intervals.",
        "",
    ]
    body = [
        "<h1>hypermeta report</h1>",
        f"<p>Profile <b>{html.escape(params.profile)}</b> "
        f"({html.escape(params.profiles[params.profile])}); git commit "
        f"<code>{html.escape(git_commit(root))}</code>. "
        "Intervals are 95% confidence intervals.</p>",
    ]
    experiments = [resolve(params, name) for name in params.experiments]
    results = {exp.name: read_metrics(exp.name) for exp in experiments}
    manifests = {exp.name: read_manifest(exp) for exp in experiments}
    data = {exp.name: data_note(exp, manifests[exp.name]) for exp in experiments}
    missing = missing_data(params, root)
    md += [f"## {PAPER_SCALE}", "", paper_scale_markdown(params, records, missing), ""]
    body += [
        f"<h2>{PAPER_SCALE}</h2>",
        *_html_blocks(paper_scale_section(params, records, missing)),
    ]
    summary = summary_rows(experiments, results, params.references, data)
    header = ["experiment", "metric", f"ours ({params.profile} profile)", "paper", "our data"]
    title = f"Ours beside the papers ({params.profile} profile)"
    scale = (
        "Ours here come from this run of the pipeline at the paper profile."
        if params.profile == "paper"
        else f"Ours here come from this run of the pipeline at the {params.profile} "
        "profile's scale: they show each method learning and are not paper-scale "
        f'reproductions, which are in "{PAPER_SCALE}" above.'
    )
    md += [f"## {title}", "", scale, "", _markdown_table(header, summary), ""]
    body += [
        f"<h2>{html.escape(title)}</h2><p>{html.escape(scale)}</p>",
        _html_table(header, summary),
    ]
    provenance, groups = [], {}
    for exp in experiments:
        metrics = results[exp.name]
        rows = result_rows(metrics, params.references.get(exp.name, []), exp.dataset)
        header = ["metric", "ours", "paper"]
        title = f"{exp.name}: {exp.method} on {exp.dataset}"
        notes = [
            f"Data: {data[exp.name]}.",
            model_note(exp),
            batchnorm_note(metrics),
            ways_note(metrics),
            paired_note(metrics),
        ]
        note = " ".join(filter(None, notes))
        md += [f"## {title}", "", note, "", _markdown_table(header, rows), ""]
        body += [
            f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>",
            _html_table(header, rows),
        ]
        for png in sorted((PLOTS / exp.name).glob("*.png")):
            target = figures / f"{exp.name}-{png.name}"
            shutil.copyfile(png, target)
            md += [f"![{exp.name} {png.stem}](figures/{target.name})", ""]
            body.append(_embedded(target))
        for text_file in sorted((PLOTS / exp.name).glob("*.txt")):
            heading = text_file.stem.replace("_", " ")
            md += [f"**{heading}**", "", "```", text_file.read_text().rstrip(), "```", ""]
            body.append(
                f"<h3>{html.escape(heading)}</h3><pre>{html.escape(text_file.read_text())}</pre>"
            )
        data_md5 = manifests[exp.name]["tensor_md5"] if manifests[exp.name] else {}
        provenance.append(
            (
                exp.name,
                exp.params_hash,
                ", ".join(f"{k}:{v[:8]}" for k, v in sorted(data_md5.items())),
                str(metrics.get("mlflow_run_id", "")),
            )
        )
        if exp.group:
            groups.setdefault(exp.group, []).append(exp)

    for group, members in groups.items():
        if len(members) < 2:
            continue
        kinds = {exp.kind for exp in members}
        if len(kinds) != 1:
            raise HypermetaError(
                f"params.yaml: group {group!r} mixes engine kinds {sorted(kinds)}."
            )
        kind = kinds.pop()
        engine = get_engine(kind)
        contexts = [stage_context(exp, NullTracker()) for exp in members]
        paths = get_plotter(kind).compare(contexts, figures / group, group)
        if not (paths or engine.compare_columns):
            continue
        md += [f"## Compared: {group}", ""]
        body.append(f"<h2>Compared: {html.escape(group)}</h2>")
        if engine.compare_columns:
            header = ["experiment", *engine.compare_columns]
            rows = comparison_rows(
                engine.compare_columns,
                {exp.name: results[exp.name] for exp in members},
                params.references.get(group, []),
            )
            note = " ".join(filter(None, [engine.compare_note, mixed_data_note(members)]))
            md += [_markdown_table(header, rows), "", note, ""]
            body += [_html_table(header, rows), f"<p>{html.escape(note)}</p>"]
        for png in paths:
            md += [f"![{group} {png.stem}](figures/{group}/{png.name})", ""]
            body.append(_embedded(png))

    augmented, sentences = augmentation_rows(results)
    if len(augmented) > len(AUGMENT_PUBLISHED):  # some experiment augmented
        note = " ".join([AUGMENT_NOTE, *sentences])
        md += ["## Support-set augmentation", "", _markdown_table(AUGMENT_HEADER, augmented), "",
               note, ""]  # fmt: skip
        body += ["<h2>Support-set augmentation</h2>", _html_table(AUGMENT_HEADER, augmented),
                 f"<p>{html.escape(note)}</p>"]  # fmt: skip

    header = ["experiment", "params hash", "data md5 (prepared tensors)", "MLflow run (evaluate)"]
    md += ["## Provenance", "", _markdown_table(header, provenance), ""]
    body += ["<h2>Provenance</h2>", _html_table(header, provenance)]
    write_text(staging / "report.md", "\n".join(md))
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;overflow-wrap:break-word}"
        "img{max-width:100%;display:block;margin:1em 0}"
        # long lines (alphabet lists, text samples) wrap instead of widening the page
        "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:.5em}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>hypermeta report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    write_text(staging / "index.html", page)


def report() -> Path:
    """The report stage (dvc.yaml)."""
    params = load_params()
    with child_run(params, "report", reads=params.model_dump()) as tracker:
        folder = build_report(params, REPORTS)
        tracker.log_artifact(folder, "report")
        return folder


def update_readme(root: Path) -> Path:
    """Rewrite `root`/README.md's paper-scale section from params.yaml and the records."""
    readme = root / "README.md"
    params = load_params(root / "params.yaml")
    section = paper_scale_markdown(params, load_records(root / RESULTS), missing_data(params, root))
    return write_text(readme, readme_with_results(readme.read_text(), section))


def main(argv: list[str] | None = None) -> int:
    """`python -m hypermeta.report --readme`: rewrite README.md's paper-scale section."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hypermeta.report")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="rewrite the section between the README's paper-scale markers from the records",
    )
    if not parser.parse_args(argv).readme:
        parser.error("say what to write: --readme (the report itself is `hypermeta report`)")
    try:
        update_readme(repo_root())
    except HypermetaError as exc:
        print(f"hypermeta: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
