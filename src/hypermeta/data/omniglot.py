"""Omniglot (Lake et al. 2015): PNGs decoded once, here, into 28×28 uint8 tensors.

Splits are by character, never by drawing, so meta-test characters are never seen in
meta-training. Each split is stored as `images` (classes, 20 drawings, 1, 28, 28) — the
shape the episodic sampler indexes — with `character` (index into the manifest's
`characters`) and `rotation` (degrees) per class. Drawing d of every class is by drawer
d + 1: the files are `<character id>_<drawer>.png`, drawers 01..20, read in that order and
checked (the manifest's `drawings_by_drawer`; Lake's one-shot trials, data/one_shot.py,
rely on it).

Protocols (written to the manifest and the report), each prepared to its own folder
(`data/prepared/omniglot-<protocol>`); an experiment picks one with `split:` (default
`data.split.omniglot`):
- `omniglot`, `split: vinyals`: Vinyals et al. (2016): a seeded
  shuffle of all 1623 characters, 1200 for meta-training (the last `val_fraction` of them
  carved out for validation), the remaining 423 for meta-test; rotations by 90/180/270°
  are new classes.
- `omniglot`, `split: lake`: Lake et al. (2015): the background
  set's 30 alphabets for meta-training, the evaluation set's 20 alphabets for meta-test;
  validation takes seeded whole background alphabets until `val_fraction` of the
  background characters, so no evaluation alphabet is seen before meta-test. Same rotations.
- `omniglot_small` (unit tests): a seeded split by alphabet (seeded alphabets to test
  until it holds a quarter of the characters, then the smallest remaining alphabets to
  validation until `val_fraction`, the rest to meta-training), same rotations.
"""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hypermeta.config import SplitConfig
from hypermeta.data.prepare import Prepared, preparer
from hypermeta.data.registry import DatasetSpec, prepared_name
from hypermeta.errors import HypermetaError

IMAGE_SIZE = 28
DRAWINGS_PER_CHARACTER = 20
ROTATIONS = (0, 90, 180, 270)
VINYALS_TRAIN_CHARACTERS = 1200
SMALL_TEST_FRACTION = 0.25  # the full protocol tests on 423 / 1623 ≈ 26% of characters
LAKE_ARCHIVES = ("images_background", "images_evaluation")  # meta-train, meta-test


def to_model_image(image: Image.Image) -> torch.Tensor:
    """Any picture → (1, 28, 28) uint8 with paper 0 and the strongest ink 255, as the
    models see Omniglot; Omniglot's drawings and a user's images alike go through it.

    Grayscale, then in Omniglot's look, dark ink on light paper: the paper is most of a
    picture, so one with a dark median (light ink on dark, as MNIST) is inverted. Then
    stretched so the paper is 255 and the darkest ink 0, resized (antialiased, Lanczos)
    and inverted, ink high on a zero background that suits the conv layers' zero padding.
    So neither polarity nor contrast changes what a model sees, and an Omniglot drawing
    (pure black on white) is only resized and inverted."""
    gray = np.asarray(image.convert("L"), dtype=np.int32)
    if np.median(gray) < 127.5:
        gray = 255 - gray
    paper, ink = gray.max(), gray.min()
    span = max(paper - ink, 1)  # a blank picture stays blank paper
    look = Image.fromarray((255 - ((paper - gray) * 255 + span // 2) // span).astype(np.uint8))
    if look.size != (IMAGE_SIZE, IMAGE_SIZE):
        look = look.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return torch.from_numpy(255 - np.asarray(look, dtype=np.uint8)).unsqueeze(0)


def read_image_file(path: Path) -> torch.Tensor:
    """`to_model_image` of a file, with one clear sentence when it is not a readable image."""
    try:
        with Image.open(path) as image:
            return to_model_image(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HypermetaError(
            f"{path} is not a readable image ({type(exc).__name__}); remove or replace it."
        ) from None


Key = tuple[str, str]  # (alphabet, character)


def read_characters(zip_paths: list[Path]) -> tuple[dict[Key, torch.Tensor], dict[Key, str]]:
    """(alphabet, character) → (20, 1, 28, 28) uint8, drawing d by drawer d + 1 (checked),
    and (alphabet, character) → the stem of the archive it came from (Lake's split reads it).

    A character present in several archives (small1 and small2 share Greek and Latin,
    byte-identical) is kept once."""
    characters: dict[Key, torch.Tensor] = {}
    archives: dict[Key, str] = {}
    for zip_path in zip_paths:
        drawings: dict[Key, list[torch.Tensor]] = defaultdict(list)
        drawers: dict[Key, list[str]] = defaultdict(list)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for name in sorted(archive.namelist()):
                    parts = PurePosixPath(name).parts
                    if len(parts) != 4 or not name.endswith(".png"):
                        continue
                    with Image.open(io.BytesIO(archive.read(name))) as image:
                        drawings[(parts[1], parts[2])].append(to_model_image(image))
                    drawers[(parts[1], parts[2])].append(PurePosixPath(name).stem.split("_")[-1])
        except (zipfile.BadZipFile, UnidentifiedImageError) as exc:
            raise HypermetaError(
                f"{zip_path} is damaged ({exc}); delete it and run the download stage again."
            ) from None
        for key, images in drawings.items():
            if len(images) != DRAWINGS_PER_CHARACTER:
                raise HypermetaError(
                    f"{zip_path}: {key[0]}/{key[1]} has {len(images)} drawings, expected "
                    f"{DRAWINGS_PER_CHARACTER}; delete the archive and download it again."
                )
            if drawers[key] != [f"{d:02d}" for d in range(1, DRAWINGS_PER_CHARACTER + 1)]:
                raise HypermetaError(
                    f"{zip_path}: {key[0]}/{key[1]}'s files are not named <id>_01.png to "
                    f"<id>_{DRAWINGS_PER_CHARACTER}.png, one per drawer; delete the archive "
                    "and download it again."
                )
            if key not in characters:
                characters[key] = torch.stack(images)
                archives[key] = PurePosixPath(zip_path.name).stem
    return characters, archives


Protocol = Callable[[list[Key], list[str], SplitConfig], tuple[dict[str, list[int]], str, str]]


def vinyals_split(
    keys: list[Key], archives: list[str], split: SplitConfig
) -> tuple[dict[str, list[int]], str, str]:
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(split.seed)).tolist()
    trainval, test = order[:VINYALS_TRAIN_CHARACTERS], order[VINYALS_TRAIN_CHARACTERS:]
    n_val = max(1, int(round(len(trainval) * split.val_fraction)))
    chosen = {"train": trainval[: len(trainval) - n_val], "val": trainval[-n_val:], "test": test}
    protocol = (
        f"Vinyals et al. 2016: seeded shuffle (seed {split.seed}) of {len(keys)} characters; "
        f"first {VINYALS_TRAIN_CHARACTERS} meta-train ({n_val} of them held out for "
        f"validation), remaining {len(test)} meta-test; rotations {list(ROTATIONS)} are classes"
    )
    summary = (
        f"Vinyals split: {VINYALS_TRAIN_CHARACTERS} / {len(test)} characters "
        f"(seed {split.seed}), rotations as classes"
    )
    return chosen, protocol, summary


def alphabet_split(
    keys: list[Key], archives: list[str], split: SplitConfig
) -> tuple[dict[str, list[int]], str, str]:
    alphabets = sorted({alphabet for alphabet, _ in keys})
    order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(split.seed))
    by_alphabet = {a: [i for i, key in enumerate(keys) if key[0] == a] for a in alphabets}
    chosen: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    remaining = [alphabets[i] for i in order.tolist()]
    while remaining and len(chosen["test"]) < SMALL_TEST_FRACTION * len(keys):
        chosen["test"].extend(by_alphabet[remaining.pop(0)])
    # Validation takes the smallest remaining alphabets, leaving meta-training the most.
    remaining.sort(key=lambda a: len(by_alphabet[a]))
    while remaining and len(chosen["val"]) < split.val_fraction * len(keys):
        chosen["val"].extend(by_alphabet[remaining.pop(0)])
    for alphabet in remaining:
        chosen["train"].extend(by_alphabet[alphabet])
    if not chosen["train"]:
        raise HypermetaError(
            f"{len(alphabets)} alphabets are too few to split by alphabet; lower "
            "data.split.val_fraction in params.yaml."
        )
    protocol = (
        f"by alphabet, seeded (seed {split.seed}): test until ≥{SMALL_TEST_FRACTION:.0%} of "
        f"characters, then the smallest remaining alphabets for validation until "
        f"≥{split.val_fraction:.0%}, the rest meta-train; "
        f"rotations {list(ROTATIONS)} are classes"
    )
    summary = (
        f"split by alphabet (seed {split.seed}): {len(alphabets)} alphabets, "
        f"{len(keys)} characters, rotations as classes"
    )
    return chosen, protocol, summary


def lake_split(
    keys: list[Key], archives: list[str], split: SplitConfig
) -> tuple[dict[str, list[int]], str, str]:
    sets = {stem: [i for i, a in enumerate(archives) if a == stem] for stem in LAKE_ARCHIVES}
    if not all(sets.values()):
        raise HypermetaError(
            f"the Lake split needs both {' and '.join(LAKE_ARCHIVES)}; only "
            f"{sorted(set(archives))} were read; use `split: vinyals` for this experiment instead."
        )
    background, evaluation = sets.values()
    by_alphabet: dict[str, list[int]] = defaultdict(list)
    for i in background:
        by_alphabet[keys[i][0]].append(i)
    alphabets = sorted(by_alphabet)
    order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(split.seed))
    val: list[int] = []
    held_out = []
    for alphabet in (alphabets[i] for i in order.tolist()):
        if len(val) >= split.val_fraction * len(background):
            break
        val.extend(by_alphabet[alphabet])
        held_out.append(alphabet)
    chosen = {"train": sorted(set(background) - set(val)), "val": val, "test": evaluation}
    test_alphabets = {keys[i][0] for i in evaluation}
    protocol = (
        f"Lake et al. 2015: the background set's {len(alphabets)} alphabets "
        f"({len(background)} characters) meta-train, {len(held_out)} of them (seeded, seed "
        f"{split.seed}; {len(val)} characters) held out for validation; the evaluation set's "
        f"{len(test_alphabets)} alphabets ({len(evaluation)} characters) meta-test; "
        f"rotations {list(ROTATIONS)} are classes"
    )
    summary = (
        f"Lake split: {len(alphabets)} background / {len(test_alphabets)} evaluation "
        f"alphabets ({len(held_out)} background ones for validation), rotations as classes"
    )
    return chosen, protocol, summary


PROTOCOLS: dict[str, Protocol] = {"lake": lake_split, "vinyals": vinyals_split}


@preparer("omniglot")
def prepare_omniglot(spec: DatasetSpec, raw_dir: Path, split: SplitConfig) -> dict[str, Prepared]:
    """The full set cut by each of its protocols (decoded once); omniglot_small, a subset
    of the background set, by alphabet."""
    characters, archive_of = read_characters([raw_dir / f.name for f in spec.files])
    keys = sorted(characters)  # canonical order, so a seed always means the same split
    archives = [archive_of[key] for key in keys]
    if not spec.split_protocols:
        return {spec.name: cut(characters, keys, *alphabet_split(keys, archives, split))}
    return {
        prepared_name(spec.name, protocol): cut(
            characters, keys, *PROTOCOLS[protocol](keys, archives, split)
        )
        for protocol in spec.split_protocols
    }


def cut(
    characters: dict[Key, torch.Tensor],
    keys: list[Key],
    chosen: dict[str, list[int]],
    protocol: str,
    summary: str,
) -> Prepared:
    """The splits `chosen` (split → character indices into `keys`) as tensors."""
    splits, alphabets = {}, {}
    for name, indices in chosen.items():
        indices = sorted(indices)
        images = torch.stack([characters[keys[i]] for i in indices])
        # Each rotation of a character is a class of its own (Santoro et al. 2016).
        splits[name] = {
            "images": torch.cat([torch.rot90(images, r // 90, dims=(-2, -1)) for r in ROTATIONS]),
            "character": torch.tensor(indices * len(ROTATIONS)),
            "rotation": torch.tensor(ROTATIONS).repeat_interleave(len(indices)),
        }
        alphabets[name] = sorted({keys[i][0] for i in indices})
    pixels = splits["train"]["images"].float() / 255
    return Prepared(
        splits=splits,
        info={
            "image_shape": [1, IMAGE_SIZE, IMAGE_SIZE],
            "drawings_per_class": DRAWINGS_PER_CHARACTER,
            "drawings_by_drawer": True,  # drawing d of each class is by drawer d + 1
            "characters": [f"{alphabet}/{character}" for alphabet, character in keys],
            "split_protocol": protocol,
            "split_summary": summary,
            "split_characters": {name: len(indices) for name, indices in chosen.items()},
            "split_alphabets": alphabets,
            "rotations": list(ROTATIONS),
            "mean": pixels.mean().item(),
            "std": pixels.std().item(),
        },
    )
