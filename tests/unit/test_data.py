import gzip
import hashlib
import shutil

import pytest
import torch

from hypermeta.atomic import atomic_path, write_text
from hypermeta.config import SplitConfig
from hypermeta.data.download import fetch_file, verify
from hypermeta.data.idx import read_idx
from hypermeta.data.prepare import prepare, seeded_holdout
from hypermeta.data.registry import DATASETS, DatasetSpec, RemoteFile
from hypermeta.errors import HypermetaError


def spec_for(remote: RemoteFile) -> DatasetSpec:
    return DatasetSpec("toy", "toy", "idx", (remote,), "test data")


def test_wrong_checksum_names_every_source_and_leaves_nothing(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "a.bin").write_bytes(b"not the published bytes")
    remote = RemoteFile("a.bin", ("file-that-is-not-there:///nowhere/a.bin",), ("0" * 32,))
    out = tmp_path / "raw"
    out.mkdir()
    with pytest.raises(HypermetaError) as error:
        fetch_file(spec_for(remote), remote, out, str(mirror))
    message = str(error.value)
    assert "checksum mismatch" in message and str(mirror) in message
    assert "nowhere/a.bin" in message and "HYPERMETA_DATA_MIRROR" in message
    assert list(out.iterdir()) == []  # no file left behind as if valid


def test_missing_mirror_file_falls_through_to_the_next_source(tmp_path):
    payload = b"published"
    source = tmp_path / "elsewhere" / "toy"
    source.mkdir(parents=True)
    (source / "a.bin").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    remote = RemoteFile("a.bin", (), (md5,))
    spec = spec_for(remote)
    with pytest.raises(HypermetaError, match="FileNotFoundError"):
        fetch_file(spec, remote, tmp_path / "raw", str(tmp_path / "empty-mirror"))
    got = fetch_file(spec, remote, tmp_path / "raw", str(tmp_path / "elsewhere"))
    assert got.read_bytes() == payload


def test_recompressed_archive_is_accepted_by_its_payload_checksum(tmp_path):
    payload = b"idx payload bytes" * 100
    mirror = tmp_path / "mirror" / "toy"
    mirror.mkdir(parents=True)
    (mirror / "x.gz").write_bytes(gzip.compress(payload, compresslevel=1))
    remote = RemoteFile("x.gz", (), ("f" * 32,), (hashlib.md5(payload).hexdigest(),))
    # through fetch_file, which verifies the download under a temporary name
    got = fetch_file(spec_for(remote), remote, tmp_path / "raw", str(tmp_path / "mirror"))
    assert gzip.decompress(got.read_bytes()) == payload
    bad = RemoteFile("x.gz", (), ("f" * 32,), ("e" * 32,))
    assert "payload" in verify(got, bad)


def test_a_file_without_pinned_checksum_is_accepted_and_its_md5_said(tmp_path, capsys):
    source = tmp_path / "mirror" / "toy"
    source.mkdir(parents=True)
    (source / "a.txt").write_bytes(b"text")
    remote = RemoteFile("a.txt", (), ())
    fetch_file(spec_for(remote), remote, tmp_path / "raw", str(tmp_path / "mirror"))
    assert hashlib.md5(b"text").hexdigest() in capsys.readouterr().out


def test_fashion_mnist_from_the_mirror_verifies_and_decodes(tmp_path, mirror):
    spec = DATASETS["fashion_mnist"]
    raw = tmp_path / "raw" / "fashion_mnist"
    raw.mkdir(parents=True)
    for remote in spec.files:
        if "labels" in remote.name:  # the label files are small; enough to prove the path
            fetch_file(spec, remote, raw, str(mirror))
    labels = read_idx(raw / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,) and labels.dtype == torch.uint8
    assert torch.bincount(labels.long()).tolist() == [1000] * 10


def test_ptb_char_from_the_mirror_matches_its_pinned_checksums(tmp_path, mirror, capsys):
    spec = DATASETS["ptb_char"]
    for remote in spec.files:
        assert len(remote.md5) == 1, remote.name  # pinned: no "accepted with a warning"
        fetch_file(spec, remote, tmp_path / "raw", str(mirror))
    assert "no pinned checksum" not in capsys.readouterr().out


def test_a_ptb_file_that_is_not_the_published_one_is_refused(tmp_path, mirror):
    spec = DATASETS["ptb_char"]
    remote = next(f for f in spec.files if f.name == "ptb.char.valid.txt")
    fake = tmp_path / "mirror" / "ptb"
    fake.mkdir(parents=True)
    published = (mirror / "ptb" / remote.name).read_bytes()
    (fake / remote.name).write_bytes(published.replace(b"_", b" ", 1))  # one character off
    out = tmp_path / "raw"
    with pytest.raises(HypermetaError) as error:
        fetch_file(spec, remote, out, str(tmp_path / "mirror"))
    message = str(error.value)
    assert f"ptb_char/{remote.name}" in message and "checksum mismatch" in message
    assert f"ptb/{remote.name} as published (accepted md5: {remote.md5[0]})" in message
    assert not (out / remote.name).exists()


def test_the_mirrors_rezipped_omniglot_is_accepted_beside_the_publishers_md5(tmp_path, mirror):
    spec = DATASETS["omniglot"]
    remote = next(f for f in spec.files if f.name == "images_evaluation.zip")
    assert remote.md5[0] == "6b91aef0f799c5bb55b94e3f2daec811"  # the publisher's, kept first
    got = fetch_file(spec, remote, tmp_path / "raw", str(mirror))
    assert verify(got, remote) is None
    publisher_only = RemoteFile(remote.name, (), remote.md5[:1])
    assert verify(got, publisher_only) == "md5 b2a4228f37e6bd97b1fd51c5cc2512e3"


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 10, 1, 2]))
    with pytest.raises(HypermetaError, match="truncated; delete it and re-download"):
        read_idx(path)


def test_split_stage_without_downloads_says_what_to_run(tmp_path):
    with pytest.raises(HypermetaError, match="run the download stage first"):
        prepare("mnist", tmp_path / "raw", tmp_path / "prepared", SplitConfig())


def test_seeded_holdout_is_deterministic_and_disjoint():
    kept, held = seeded_holdout(100, 0.2, seed=3)
    again, _ = seeded_holdout(100, 0.2, seed=3)
    other, _ = seeded_holdout(100, 0.2, seed=4)
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    assert len(held) == 20 and set(kept.tolist()).isdisjoint(held.tolist())
    assert sorted(kept.tolist() + held.tolist()) == list(range(100))


def test_prepare_writes_uint8_splits_and_a_manifest(tmp_path, mirror):
    raw = tmp_path / "raw" / "fashion_mnist"
    shutil.copytree(mirror / "fashion-mnist", raw)
    manifests = prepare("fashion_mnist", tmp_path / "raw", tmp_path / "prep", SplitConfig(seed=1))
    assert list(manifests) == ["fashion_mnist"]  # cut one way: one folder, the dataset's name
    manifest = manifests["fashion_mnist"]
    assert manifest["counts"] == {"train": 54_000, "val": 6_000, "test": 10_000}
    assert manifest["split"]["seed"] == 1 and manifest["num_classes"] == 10
    train = torch.load(tmp_path / "prep" / "fashion_mnist" / "train.pt")
    assert train["images"].dtype == torch.uint8 and train["images"].shape[1:] == (1, 28, 28)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
