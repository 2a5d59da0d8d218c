"""Omniglot decoding and splits: by character (never by drawing), rotations as classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fewshot_helpers import prepared_omniglot_small
from PIL import Image

from hypermeta.config import SplitConfig
from hypermeta.data.omniglot import ROTATIONS, lake_split, to_model_image, vinyals_split
from hypermeta.data.prepare import load_split
from hypermeta.errors import HypermetaError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))
    splits = {name: load_split(data_dir, name) for name in ("train", "val", "test")}
    return json.loads((data_dir / "manifest.json").read_text()), splits


def test_images_are_decoded_once_to_28x28_uint8_per_class(prepared):
    manifest, splits = prepared
    assert manifest["image_shape"] == [1, 28, 28]
    assert sum(manifest["split_characters"].values()) == 242  # Greek and Latin kept once
    for name, split in splits.items():
        images = split["images"]
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (20, 1, 28, 28)
        assert len(images) == len(ROTATIONS) * manifest["split_characters"][name]
        assert manifest["counts"][name] == len(images)
        # ink is high, paper is 0: most pixels of a character drawing are background
        assert (images == 0).float().mean() > 0.5


def test_quick_split_is_by_alphabet_and_character(prepared):
    manifest, splits = prepared
    alphabets = manifest["split_alphabets"]
    assert not set(alphabets["train"]) & set(alphabets["test"])
    assert not set(alphabets["val"]) & (set(alphabets["train"]) | set(alphabets["test"]))
    characters = {name: set(split["character"].tolist()) for name, split in splits.items()}
    assert not characters["train"] & characters["test"]
    assert not characters["val"] & (characters["train"] | characters["test"])
    for name, split in splits.items():
        for index in split["character"].unique().tolist():
            alphabet = manifest["characters"][index].split("/")[0]
            assert alphabet in alphabets[name]
    assert "by alphabet" in manifest["split_protocol"]


def test_rotated_classes_are_rotations_of_the_same_character(prepared):
    _, splits = prepared
    split = splits["test"]
    for rotation in (90, 180, 270):
        upright = split["images"][(split["rotation"] == 0)]
        turned = split["images"][(split["rotation"] == rotation)]
        assert torch.equal(split["character"][split["rotation"] == rotation],
                           split["character"][split["rotation"] == 0])  # fmt: skip
        assert torch.equal(turned, torch.rot90(upright, rotation // 90, dims=(-2, -1)))


def test_conversion_grayscales_resizes_with_antialiasing_and_puts_ink_high_from_any_look():
    picture = np.full((105, 105, 3), 255, dtype=np.uint8)
    picture[:, 50:55] = 0  # a black vertical bar, 5 of 105 columns wide
    converted = to_model_image(Image.fromarray(picture))
    assert converted.shape == (1, 28, 28) and converted.dtype == torch.uint8
    column = converted[0, 14].float()
    # The bar covers columns 50..55 of 105, i.e. 13.33..14.67 of 28: antialiased, its
    # ink is spread as grey over columns 13 and 14 (nearest sampling would give 255 or 0).
    assert column[13] == column[14]
    assert 128 < column[13] < 255
    assert column[:10].max() == 0 and column[18:].max() == 0  # paper is 0
    # Light ink on dark paper (MNIST's look) and a faint, low-contrast copy are the same
    # picture to the model.
    assert torch.equal(to_model_image(Image.fromarray(255 - picture)), converted)
    faint = (100 + picture.astype(np.int32) * 100 // 255).astype(np.uint8)  # 100..200
    assert torch.equal(to_model_image(Image.fromarray(faint)), converted)
    assert to_model_image(Image.new("L", (30, 40), 200)).max() == 0  # blank stays paper


def test_vinyals_split_holds_1200_training_characters_and_is_seeded():
    keys = [(f"alphabet{i // 40}", f"character{i % 40}") for i in range(1623)]
    archives = ["images_background"] * 964 + ["images_evaluation"] * 659  # ignored here
    chosen, protocol, _ = vinyals_split(keys, archives, SplitConfig(seed=3, val_fraction=0.1))
    assert len(chosen["train"]) + len(chosen["val"]) == 1200
    assert len(chosen["val"]) == 120 and len(chosen["test"]) == 423
    assert sorted(chosen["train"] + chosen["val"] + chosen["test"]) == list(range(1623))
    again, _, _ = vinyals_split(keys, archives, SplitConfig(seed=3, val_fraction=0.1))
    assert again == chosen
    other, _, _ = vinyals_split(keys, archives, SplitConfig(seed=4, val_fraction=0.1))
    assert other["test"] != chosen["test"]
    assert "Vinyals" in protocol


def lake_like_keys() -> tuple[list, list]:
    """30 background alphabets of 10-39 characters, 20 evaluation alphabets of 30."""
    keys, archives = [], []
    for a in range(30):
        keys += [(f"bg{a:02d}", f"character{c:02d}") for c in range(10 + a)]
        archives += ["images_background"] * (10 + a)
    for a in range(20):
        keys += [(f"ev{a:02d}", f"character{c:02d}") for c in range(30)]
        archives += ["images_evaluation"] * 30
    return keys, archives


def test_lake_split_meta_tests_on_the_evaluation_alphabets_only():
    keys, archives = lake_like_keys()
    chosen, protocol, summary = lake_split(keys, archives, SplitConfig(seed=0, val_fraction=0.1))
    alphabets = {name: {keys[i][0] for i in part} for name, part in chosen.items()}
    assert alphabets["test"] == {f"ev{a:02d}" for a in range(20)}
    assert len(chosen["test"]) == 600
    # validation: whole background alphabets, never an evaluation one, about val_fraction
    assert alphabets["val"] and all(a.startswith("bg") for a in alphabets["val"])
    assert not alphabets["val"] & alphabets["train"]
    assert alphabets["train"] | alphabets["val"] == {f"bg{a:02d}" for a in range(30)}
    background = archives.count("images_background")
    assert 0.1 * background <= len(chosen["val"]) < 0.1 * background + 39
    assert sorted(chosen["train"] + chosen["val"] + chosen["test"]) == list(range(len(keys)))
    assert "30 background / 20 evaluation alphabets" in summary and "Lake" in protocol
    again, _, _ = lake_split(keys, archives, SplitConfig(seed=0, val_fraction=0.1))
    other, _, _ = lake_split(keys, archives, SplitConfig(seed=1, val_fraction=0.1))
    assert again == chosen and other["val"] != chosen["val"] and other["test"] == chosen["test"]


def test_lake_split_without_the_evaluation_archive_says_what_to_use():
    keys, archives = lake_like_keys()
    background = archives.count("images_background")
    with pytest.raises(HypermetaError, match="use `split: vinyals` for this experiment instead"):
        lake_split(keys[:background], archives[:background], SplitConfig())


def test_a_dataset_cut_several_ways_is_decoded_once_and_written_once_per_cut(tmp_path, monkeypatch):
    import dataclasses

    from hypermeta.data import omniglot
    from hypermeta.data.prepare import prepare
    from hypermeta.data.registry import DATASETS

    prepared_omniglot_small(tmp_path)  # its raw files, through the download code
    spec = dataclasses.replace(DATASETS["omniglot_small"], split_protocols=("one", "other"))
    monkeypatch.setitem(DATASETS, "omniglot_small", spec)
    monkeypatch.setattr(
        omniglot,
        "PROTOCOLS",
        {
            "one": omniglot.alphabet_split,
            "other": lambda keys, archives, split: omniglot.alphabet_split(
                keys, archives, split.model_copy(update={"seed": split.seed + 1})
            ),
        },
    )
    decoded = []
    read = omniglot.read_characters
    monkeypatch.setattr(omniglot, "read_characters", lambda paths: decoded.append(1) or read(paths))

    manifests = prepare("omniglot_small", tmp_path / "raw", tmp_path / "cuts", SplitConfig())
    assert sorted(manifests) == ["omniglot_small-one", "omniglot_small-other"]
    assert len(decoded) == 1
    on_disk = {
        folder: json.loads((tmp_path / "cuts" / folder / "manifest.json").read_text())
        for folder in manifests
    }
    assert on_disk == manifests
    one, other = (load_split(tmp_path / "cuts" / folder, "test") for folder in sorted(manifests))
    assert not torch.equal(one["character"], other["character"])  # two different cuts
