"""Lake et al.'s (2015) within-alphabet one-shot benchmark, as Koch et al. (2015) also ran
it: the trials built from a prepared Omniglot meta-test split.

A run is one alphabet of the split: 20 of its characters (unrotated classes only), one
drawer's drawing of each as the support, another drawer's drawing of each as the queries;
each of the 20 queries is one trial, classified against the 20 supports. A run is a
20-way 1-shot episode with one query per class, so the episode sampler gathers it and
any few-shot learner classifies it unchanged. Run r of seed s depends on (s, r) alone:
fewer runs are a prefix of more, and every method sees the same runs.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from hypermeta.data.episodes import EpisodeIndex, EpisodeSetting, seeded_generator
from hypermeta.errors import HypermetaError

LAKE_WAYS = 20  # characters per run, and so trials per run


def lake_setting(n_way: int = LAKE_WAYS) -> EpisodeSetting:
    """A run as an episode: n_way classes, one support and one query each."""
    return EpisodeSetting(n_way=n_way, k_shot=1, query=1)


def class_alphabets(character: torch.Tensor, characters: list[str]) -> list[str]:
    """The alphabet of each class of a split: its `character` index into the manifest's
    `characters` ("alphabet/character")."""
    return [characters[i].split("/")[0] for i in character.tolist()]


def within_alphabet_runs(
    alphabets: list[str],
    rotation: torch.Tensor,
    drawers: int,
    runs: int,
    seed: int,
    n_way: int = LAKE_WAYS,
) -> EpisodeIndex:
    """`runs` seeded runs over a split whose class c is of alphabet `alphabets[c]` at
    `rotation[c]` degrees, drawing d of every class by drawer d (0..drawers-1).

    classes (runs, n_way): unrotated characters of one alphabet, the alphabet drawn
    uniformly among those with at least n_way of them; drawings (runs, n_way, 2): the
    support drawer's drawing, then the query drawer's, the same two drawers for every
    character of a run."""
    members: dict[str, list[int]] = defaultdict(list)
    for index, (alphabet, degrees) in enumerate(zip(alphabets, rotation.tolist(), strict=True)):
        if degrees == 0:
            members[alphabet].append(index)
    eligible = sorted(a for a, classes in members.items() if len(classes) >= n_way)
    if not eligible:
        raise HypermetaError(
            f"Lake's one-shot runs need an alphabet with {n_way} unrotated characters in the "
            "meta-test split, and it has none; turn eval.lake_runs off (0) for this dataset."
        )
    if drawers < 2:
        raise HypermetaError(
            f"Lake's one-shot runs need two drawers per character; this split has {drawers}."
        )
    classes, drawings = [], []
    for run in range(runs):
        generator = seeded_generator("lake", seed, run, n_way)
        alphabet = eligible[int(torch.randint(len(eligible), (1,), generator=generator))]
        pool = torch.tensor(members[alphabet])
        classes.append(pool[torch.randperm(len(pool), generator=generator)[:n_way]])
        pair = torch.randperm(drawers, generator=generator)[:2]  # support drawer, query drawer
        drawings.append(pair.expand(n_way, 2))
    return EpisodeIndex(torch.stack(classes), torch.stack(drawings))
