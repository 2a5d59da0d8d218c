"""Character-level text: vocabulary with an explicit unknown symbol, and the preparers
of tiny-shakespeare, Penn Treebank (characters) and enwik8.

Text is read byte by byte (latin-1 maps every byte to one character), which is the
standard unit for enwik8 bpc and changes nothing for ASCII corpora; any file reads
without a decoding error. Token ids are stored as int16 tensors `{"tokens": [N]}`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hypermeta.config import SplitConfig
from hypermeta.data.prepare import Prepared, preparer
from hypermeta.data.registry import DatasetSpec
from hypermeta.errors import HypermetaError

UNKNOWN = "<unk>"  # id 0: characters never seen in training map here


# Bytes that text does not hold: the C0 controls but backspace, tab, newline, vertical tab,
# form feed, carriage return and escape; and DEL. A binary file is full of them (NUL above
# all), a text file has none or a stray few.
CONTROL_BYTES = bytes([*range(0, 8), *range(14, 27), *range(28, 32), 127])
MAX_CONTROL_SHARE = 0.01


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise HypermetaError(f"{path} is not a readable file; pass the path of a text file.")
    data = path.read_bytes()
    control = len(data) - len(data.translate(None, CONTROL_BYTES))
    if control > MAX_CONTROL_SHARE * len(data):
        raise HypermetaError(
            f"{path} is not a text file ({control} of its {len(data)} bytes are control "
            "characters such as NUL); pass a plain-text file (UTF-16 text: convert it to "
            "UTF-8 first)."
        )
    return data.decode("latin-1")


def from_display(text: str) -> str:
    """Text typed by a user (e.g. a prime) as the byte-characters the model reads. Bytes
    of a command line that are not UTF-8 reach Python as surrogates (PEP 383), which
    `surrogateescape` turns back into exactly those bytes."""
    return text.encode("utf-8", errors="surrogateescape").decode("latin-1")


def to_display(text: str) -> str:
    """Byte-characters back to readable text (UTF-8 where the bytes form it)."""
    return text.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Encoded:
    tokens: torch.Tensor
    unknown: int  # how many characters mapped to UNKNOWN


class Vocabulary:
    """Characters of the training text, sorted, after UNKNOWN at id 0."""

    def __init__(self, symbols: list[str]) -> None:
        if not symbols or symbols[0] != UNKNOWN:
            raise ValueError(f"a vocabulary starts with {UNKNOWN!r}")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls([UNKNOWN, *sorted(set(text))])

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> Encoded:
        """Ids of byte-characters (see `read_text`, `from_display`); a table lookup, so
        the 100M bytes of enwik8 encode in seconds."""
        table = torch.zeros(256, dtype=torch.int16)  # everything unseen → UNKNOWN
        for symbol, i in self.index.items():
            if symbol != UNKNOWN:
                table[ord(symbol)] = i
        if not text:
            return Encoded(torch.zeros(0, dtype=torch.int16), 0)
        try:
            codes = torch.frombuffer(bytearray(text.encode("latin-1")), dtype=torch.uint8).long()
        except UnicodeEncodeError:  # characters beyond one byte: all unknown
            wide = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
            codes = wide.long().clamp(max=256)
            table = torch.cat([table, torch.zeros(1, dtype=torch.int16)])
        ids = table[codes]
        return Encoded(ids, int((ids == 0).sum()))

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(
            "\ufffd" if i == 0 else self.symbols[i] for i in torch.as_tensor(ids).tolist()
        )


def split_prepared(parts: dict[str, str], description: str) -> Prepared:
    """Vocabulary from `parts["train"]`; every split encoded with it; `description` says
    where the splits come from."""
    vocab = Vocabulary.from_text(parts["train"])
    encoded = {name: vocab.encode(text) for name, text in parts.items()}
    return Prepared(
        splits={name: {"tokens": e.tokens} for name, e in encoded.items()},
        info={
            "vocab": vocab.symbols,
            "vocab_size": len(vocab),
            "unknown_characters": {name: e.unknown for name, e in encoded.items()},
            "split_summary": description,
        },
    )


def split_by_position(text: str, fractions: tuple[float, float, float]) -> dict[str, str]:
    """Contiguous train / val / test pieces, in reading order (no shuffling of text)."""
    train_end = int(len(text) * fractions[0])
    val_end = train_end + int(len(text) * fractions[1])
    return {"train": text[:train_end], "val": text[train_end:val_end], "test": text[val_end:]}


@preparer("text_by_position")
def prepare_text_by_position(spec: DatasetSpec, raw_dir: Path, split: SplitConfig) -> Prepared:
    text = read_text(raw_dir / spec.files[0].name)
    parts = split_by_position(text, (0.90, 0.05, 0.05))
    return split_prepared(parts, "train / val / test 90/5/5% by position")


def ptb_characters(text: str) -> str:
    """ptb.char.*.txt spells words as space-separated characters with '_' between words;
    the model sees the characters themselves, one sentence per line."""
    return "".join("".join(line.split()) + "\n" for line in text.splitlines() if line.strip())


@preparer("ptb_char")
def prepare_ptb_char(spec: DatasetSpec, raw_dir: Path, split: SplitConfig) -> Prepared:
    files = {"train": "train", "val": "valid", "test": "test"}
    parts = {
        name: ptb_characters(read_text(raw_dir / f"ptb.char.{stem}.txt"))
        for name, stem in files.items()
    }
    return split_prepared(parts, "the standard ptb.char train / valid / test files")


ENWIK8_SPLITS = (90_000_000, 5_000_000, 5_000_000)


@preparer("enwik8")
def prepare_enwik8(spec: DatasetSpec, raw_dir: Path, split: SplitConfig) -> Prepared:
    try:
        with zipfile.ZipFile(raw_dir / "enwik8.zip") as archive:
            data = archive.read("enwik8")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise HypermetaError(
            f"{raw_dir / 'enwik8.zip'} is not the enwik8 archive ({exc}); "
            "delete it and re-download."
        ) from None
    text = data.decode("latin-1")
    train, val, test = ENWIK8_SPLITS
    parts = {
        "train": text[:train],
        "val": text[train : train + val],
        "test": text[train + val : train + val + test],
    }
    return split_prepared(parts, "the first 90M / 5M / 5M bytes as train / valid / test")
