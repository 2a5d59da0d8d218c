"""`hypermeta fewshot predict`: classify query images from a support set with any trained
few-shot model, exactly as the evaluator does on an episode.

    hypermeta fewshot predict --model models/<experiment> --support DIR --query DIR \\
        --out preds.csv

DIR of the support set holds one sub-folder of images per class (the folder name is the
class name); the query folder holds images. Any size, common format, polarity and
contrast: each image is converted exactly like the training data (data/omniglot.py's
`to_model_image`: grayscale, ink high whether drawn dark on light or light on dark,
stretched to full contrast, antialiased resize to 28×28). The CSV has one row per query
image: its file name, the predicted class and the softmax score of every class.

Batch norm works as the model was evaluated (`eval.batchnorm`), so the tool answers as
the evaluator does, or in another regime the model supports (`--batchnorm`);
BATCHNORM_NOTES says what each means for a query, in `--help` and in the tool's output.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from hypermeta.errors import HypermetaError

if TYPE_CHECKING:  # torch loads only when a command runs, keeping `hypermeta --help` quick
    import torch

    from hypermeta.methods.fewshot_base import BatchNormRegime

HELP = "few-shot tools: predict the classes of query images from a support set"


# What each batch-norm regime (fewshot_base.BATCHNORM_REGIMES) means for a user's queries
# (no hyphenated words: --help wraps lines there).
ALONE = "each query is classified from the support set alone, whatever else --query holds"
BATCHNORM_NOTES = {
    "transductive": (
        "transductive batch norm: statistics come from the batch of images classified "
        "together, so a query's scores depend on the other images in --query (classify one "
        "image per query folder for scores of its own)"
    ),
    "per_query": f"batch norm over the support set plus one query at a time: {ALONE}",
    "running_stats": f"batch norm with running statistics from training: {ALONE}",
    "per_step_stats": f"batch norm with MAML++'s running statistics per inner step: {ALONE}",
}

SUPPORT_LAYOUT = "one sub-folder per class, each holding that class's images"
CLASS_LAYOUT = "the class's images directly, with no sub-folders"
QUERY_LAYOUT = "the images to classify directly, with no sub-folders"


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder(path: Path, role: str) -> Path:
    if not path.is_dir():
        raise HypermetaError(f"{role} folder {path} does not exist or is not a folder.")
    return path


def _refuse(folder: Path, role: str, what: str, found: list[Path], layout: str) -> None:
    """Entries that the layout has no place for would be silently ignored: say so."""
    if found:
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise HypermetaError(
            f"{role} folder {folder} holds {what} ({names}); it should hold {layout}."
        )


def read_support(folder: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Class names (sorted sub-folder names), images (S, 1, 28, 28) uint8, labels (S,)."""
    import torch

    from hypermeta.data.omniglot import read_image_file

    classes = sub_folders(_folder(folder, "support"))
    _refuse(folder, "support", "files directly", image_files(folder), SUPPORT_LAYOUT)
    if len(classes) < 2:
        raise HypermetaError(
            f"support folder {folder} has {len(classes)} class sub-folders; it needs at least "
            f"2: {SUPPORT_LAYOUT}."
        )
    images, labels = [], []
    for label, class_dir in enumerate(classes):
        _refuse(class_dir, "support class", "sub-folders", sub_folders(class_dir), CLASS_LAYOUT)
        files = image_files(class_dir)
        if not files:
            raise HypermetaError(f"support class folder {class_dir} holds no images; add some.")
        images += [read_image_file(f) for f in files]
        labels += [label] * len(files)
    return [c.name for c in classes], torch.stack(images), torch.tensor(labels)


def read_query(folder: Path) -> tuple[list[str], torch.Tensor]:
    import torch

    from hypermeta.data.omniglot import read_image_file

    files = image_files(_folder(folder, "query"))
    _refuse(folder, "query", "sub-folders", sub_folders(folder), QUERY_LAYOUT)
    if not files:
        raise HypermetaError(f"query folder {folder} holds no images; add the images to classify.")
    return [f.name for f in files], torch.stack([read_image_file(f) for f in files])


def predict(
    model_dir: Path, support: Path, query: Path, batchnorm: str | None = None
) -> tuple[list[str], list[str], torch.Tensor, BatchNormRegime]:
    """(query file names, class names, (queries, classes) softmax scores, the batch-norm
    regime used: `batchnorm`, by default the one the model was evaluated with)."""
    import torch

    from hypermeta.data.episodes import Episodes
    from hypermeta.engine.classification import load_trained
    from hypermeta.engine.fewshot import check_ways, episode_logits
    from hypermeta.methods.fewshot_base import FewShotLearner

    learner, saved = load_trained(Path(model_dir) / "model.pt")
    if not isinstance(learner, FewShotLearner):
        method = saved["experiment"]["method"]
        raise HypermetaError(f"{model_dir} holds a {method} model, not a few-shot one.")
    class_names, support_images, support_labels = read_support(Path(support))
    query_names, query_images = read_query(Path(query))
    check_ways(
        learner,
        len(class_names),
        f"the number of classes in {support}",
        "remove class folders or use a model trained for more ways",
    )
    info = saved["data_info"]
    if list(support_images.shape[1:]) != list(info["image_shape"]):
        raise HypermetaError(
            f"{model_dir} was trained on images of shape {info['image_shape']}, not the "
            f"{list(support_images.shape[1:])} this tool makes; use an Omniglot-style model."
        )

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - info["mean"]) / info["std"]).unsqueeze(0)

    episodes = Episodes(
        support_x=normalise(support_images),
        support_y=support_labels.unsqueeze(0),
        query_x=normalise(query_images),
        query_y=torch.zeros(1, len(query_names), dtype=torch.long),  # never read at test
        n_way=len(class_names),
    )
    if batchnorm is None:
        batchnorm = saved["experiment"]["eval"]["batchnorm"]
        where = f"the eval.batchnorm {model_dir} was evaluated with (--batchnorm overrides it)"
    else:
        where = "--batchnorm"
    learner.check_batchnorm(batchnorm, where)
    logits = episode_logits(learner, episodes, batchnorm)
    return query_names, class_names, logits[0].softmax(-1), batchnorm


def write_predictions(
    out: Path, query_names: list[str], class_names: list[str], scores: torch.Tensor
) -> Path:
    from hypermeta.atomic import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "predicted_class", *(f"score_{name}" for name in class_names)])
    for name, row in zip(query_names, scores.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        writer.writerow([name, class_names[best], *(f"{s:.6f}" for s in row)])
    return write_text(out, buffer.getvalue())


def _predict_command(args: argparse.Namespace) -> None:
    query_names, class_names, scores, batchnorm = predict(
        args.model, args.support, args.query, args.batchnorm
    )
    write_predictions(args.out, query_names, class_names, scores)
    print(f"wrote {len(query_names)} predictions over {len(class_names)} classes to {args.out}")
    print(f"the model uses {BATCHNORM_NOTES[batchnorm]}.")


def setup(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="fewshot_command", required=True)
    sub = commands.add_parser(
        "predict",
        help="classify query images given a support set",
        description="Classify query images given a support set, as the evaluator does. "
        "Images may be dark on light or light on dark, in any contrast: each is normalised "
        "as the training data. Batch norm works as the model was evaluated unless "
        "--batchnorm names another regime it supports: with "
        + "; with ".join(BATCHNORM_NOTES.values())
        + ".",
    )
    sub.add_argument("--model", type=Path, required=True, help="models/<experiment> folder")
    sub.add_argument("--support", type=Path, required=True, help="one sub-folder per class")
    sub.add_argument("--query", type=Path, required=True, help="folder of images to classify")
    sub.add_argument("--out", type=Path, required=True, help="CSV file to write")
    sub.add_argument(
        "--batchnorm",
        choices=list(BATCHNORM_NOTES),
        help="batch-norm regime at meta-test; default: the one the model was evaluated with",
    )
    sub.set_defaults(handler=_predict_command)


TOOL = (HELP, setup)
