"""`hypermeta lm train|eval|generate`: character language models on any text file.

Flag names follow the HyperLSTM reference project's `hyperlstm_train.py`. `train` holds
out the last `--val-split` of the file for validation, builds the vocabulary from the
rest, and saves `<save-dir>/model.pt` (weights + vocabulary), resuming from
`<save-dir>/checkpoint.pt` when run again with the same flags and file content (a
larger `--epochs` continues the run). `eval` and `generate` work on any text file (a
binary one is refused): characters the model never saw count as unknown and are
reported, with a warning when they are most of the text. Bytes of `--prime-text` that
are not UTF-8 reach the model as the bytes they are.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hypermeta.config import params_hash
from hypermeta.errors import HypermetaError

if TYPE_CHECKING:  # torch loads only when a command runs
    import torch

METHODS = {"lstm": "lstm", "ln-lstm": "lnlstm", "hyperlstm": "hyperlstm"}


# Flags only some models read: config field → (the flag's default, the models reading it).
# Set away from its default for any other model, a flag is refused, never ignored.
MODEL_FLAGS: dict[str, tuple[object, tuple[str, ...]]] = {
    "hyper_num_units": (128, ("hyperlstm",)),
    "hyper_embedding_size": (4, ("hyperlstm",)),
    "use_layer_norm": (False, ("hyperlstm",)),  # ln-lstm always normalises, lstm never
    "use_recurrent_dropout": (False, ("ln-lstm", "hyperlstm")),
    "dropout_keep_prob": (0.9, ("ln-lstm", "hyperlstm")),
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _model_section(args: argparse.Namespace) -> dict:
    """The `model:` section of the chosen method, from the flags (unused flags refused)."""
    model = {
        "embedding_size": args.embedding_size,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "dropout": args.dropout,
    }
    for field, (default, models) in MODEL_FLAGS.items():
        if args.model in models:
            model[field] = getattr(args, field)
        elif getattr(args, field) != default:
            raise HypermetaError(
                f"{_flag(field)} applies only to --model {' or '.join(models)}; "
                f"drop it for --model {args.model}."
            )
    default_keep_prob, _ = MODEL_FLAGS["dropout_keep_prob"]
    if args.dropout_keep_prob != default_keep_prob and not args.use_recurrent_dropout:
        raise HypermetaError(
            "--dropout-keep-prob applies only with --use-recurrent-dropout; add that or drop it."
        )
    return model


def _device(args: argparse.Namespace) -> torch.device:
    from hypermeta.engine.device import resolve_device

    return resolve_device(args.device, "--device")


def train(args: argparse.Namespace) -> None:
    from hypermeta.config import validate_section
    from hypermeta.data.text import Vocabulary, read_text
    from hypermeta.engine.checkpoint import Checkpointer
    from hypermeta.engine.classification import build_model
    from hypermeta.engine.language_model import LanguageModelTrain, fit, load_trained, save_model

    text = read_text(args.data_path)
    if not 0 < args.val_split < 1:
        raise HypermetaError(f"--val-split must lie in (0, 1), got {args.val_split}.")
    cut = int(len(text) * (1 - args.val_split))
    section = {"method": METHODS[args.model], "model": _model_section(args)}
    cfg = validate_section(
        LanguageModelTrain,
        {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seq_length": args.seq_length,
            "lr": args.lr,
            "lr_decay": args.lr_decay,
            "patience": args.patience,
            "clip": args.clip,
            "seed": args.seed,
            "device": args.device,
            "cpu_threads": args.threads,
        },
        "lm train flags",
    )
    import torch

    device = _device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.load_model:  # continue from a saved model: its vocabulary and its weights
        model, vocab, saved = load_trained(Path(args.load_model), device)
        section = saved["experiment"]
    else:
        vocab = Vocabulary.from_text(text[:cut])
        model = build_model(section, {"vocab_size": len(vocab)}).to(device)
    train_tokens, val = vocab.encode(text[:cut]).tokens, vocab.encode(text[cut:])
    if val.unknown:
        print(f"[hypermeta] {val.unknown} validation characters are unknown to the vocabulary.")
    save_dir = Path(args.save_dir)
    # The resume key is what the run learns from, not how long it runs (a larger --epochs
    # continues), and the file's content, not its path (an edited file starts afresh).
    run_hash = params_hash(
        {
            "section": section,
            "train": cfg.model_dump(exclude={"epochs"}),
            "data_sha256": hashlib.sha256(text.encode("latin-1")).hexdigest(),
            "val_split": args.val_split,
        }
    )
    history, best = fit(
        model,
        train_tokens,
        val.tokens,
        cfg,
        Checkpointer(save_dir / "checkpoint.pt", run_hash),
        f"lm {args.model}",
    )
    save_model(save_dir / "model.pt", section, vocab, best, history)
    best_val = min(row["val_bpc"] for row in history)
    print(f"[hypermeta] saved {save_dir / 'model.pt'} (best val bpc {best_val:.4f})")


def _load(args: argparse.Namespace):
    import torch

    from hypermeta.engine.language_model import load_trained

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_trained(Path(args.load_model or Path(args.save_dir) / "model.pt"), _device(args))


def evaluate(args: argparse.Namespace) -> None:
    from hypermeta.data.text import read_text
    from hypermeta.engine.text_scoring import bits_per_char, block_means, token_bits
    from hypermeta.stats import mean_interval

    model, vocab, _ = _load(args)
    encoded = vocab.encode(read_text(args.data_path))
    if len(encoded.tokens) < 2:
        raise HypermetaError(f"{args.data_path} has fewer than 2 characters; nothing to score.")
    if encoded.unknown > len(encoded.tokens) / 2:  # on stderr: stdout keeps the numbers
        print(
            f"[hypermeta] warning: {encoded.unknown} of the {len(encoded.tokens)} characters "
            f"({encoded.unknown / len(encoded.tokens):.0%}) are unknown to the model: this "
            "text is unlike what it was trained on, so its bpc says little.",
            file=sys.stderr,
        )
    bits, real = token_bits(model, encoded.tokens, args.batch_size, args.seq_length)
    bpc = bits_per_char(bits, real)
    _, half = mean_interval(block_means(bits, real, 1000))
    print(f"bpc {bpc:.4f} ± {half:.4f} (95% CI over 1000-character blocks)")
    print(f"characters scored {int(real.sum())}, unknown to the model {encoded.unknown}")
    print(f"uniform model would score {math.log2(len(vocab)):.4f}")


def generate(args: argparse.Namespace) -> None:
    from hypermeta.engine.text_generation import generate as sample

    model, vocab, _ = _load(args)
    text, unknown = sample(
        model, vocab, args.prime_text, args.gen_length, args.temperature, args.seed
    )
    if unknown:  # on stderr: stdout is the generated text alone
        print(
            f"[hypermeta] characters of --prime-text unknown to the model: {unknown} "
            "(read as the unknown symbol).",
            file=sys.stderr,
        )
    print(text)


def setup(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="lm_command", required=True)
    for name, handler, help_text in (
        ("train", train, "train a character model on a text file"),
        ("eval", evaluate, "bits per character of a saved model on a text file"),
        ("generate", generate, "sample text from a saved model"),
    ):
        sub = actions.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--load-model", help="a model.pt saved by `lm train`")
        sub.add_argument("--save-dir", default="lm_model", help="where model.pt lives")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        if name in ("train", "eval"):
            sub.add_argument("--data-path", required=True, help="a plain-text file")
            sub.add_argument("--seq-length", type=int, default=100)
            sub.add_argument("--batch-size", type=int, default=32)
        if name == "train":
            sub.add_argument("--val-split", type=float, default=0.05)
            sub.add_argument("--model", choices=sorted(METHODS), default="hyperlstm")
            sub.add_argument("--embedding-size", type=int, default=128)
            sub.add_argument("--hidden-size", type=int, default=512)
            sub.add_argument("--num-layers", type=int, default=1)
            sub.add_argument("--dropout", type=float, default=0.0)
            for field, (default, _) in MODEL_FLAGS.items():
                if isinstance(default, bool):
                    sub.add_argument(_flag(field), action="store_true")
                else:
                    sub.add_argument(_flag(field), type=type(default), default=default)
            sub.add_argument("--epochs", type=int, default=10)
            sub.add_argument("--lr", type=float, default=1e-3)
            sub.add_argument("--lr-decay", type=float, default=1.0)
            sub.add_argument("--patience", type=int, default=3)
            sub.add_argument("--clip", type=float, default=1.0)
        if name == "generate":
            sub.add_argument("--prime-text", default="The ")
            sub.add_argument("--gen-length", type=int, default=500)
            sub.add_argument("--temperature", type=float, default=1.0)


TOOL = ("character language models: train, eval, generate", setup)
