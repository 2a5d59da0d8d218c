"""Every dataset the pipeline can use: its files, public URLs and accepted checksums.

A file is valid when the md5 of the file as stored, or of its gunzipped payload, is one
we list. Each file lists the publisher's archive md5 first, then those of known mirrors
that re-packed the same contents (the shared mirror recompressed Fashion-MNIST and
re-zipped the full Omniglot); the payload checksum pins the published bytes of any
other recompression of a .gz.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    name: str
    urls: tuple[str, ...]
    md5: tuple[str, ...]
    payload_md5: tuple[str, ...] = ()
    mirror_name: str | None = None  # the file's name in the mirror when it differs from `name`


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirror_dir: str  # folder of the mirror that holds these files
    reader: str  # how the split stage decodes it (see data/prepare.py)
    files: tuple[RemoteFile, ...]
    description: str
    # The ways the split stage can cut it, each its own prepared folder (`prepared_name`);
    # an experiment picks one with `split:`. Empty: one way, chosen by the reader.
    split_protocols: tuple[str, ...] = ()


def prepared_name(dataset: str, protocol: str | None) -> str:
    """The folder under data/prepared of `dataset` cut by `protocol`."""
    return f"{dataset}-{protocol}" if protocol else dataset


def _idx_files(bases: tuple[str, ...], checksums: dict[str, tuple[str, ...]]) -> tuple:
    payloads = checksums.get("payload", {})
    return tuple(
        RemoteFile(
            name=name,
            urls=tuple(base + name for base in bases),
            md5=md5s,
            payload_md5=payloads.get(name, ()),
        )
        for name, md5s in checksums["files"].items()
    )


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        mirror_dir="mnist",
        reader="idx",
        description="MNIST handwritten digits (LeCun et al.), 60k train / 10k test",
        files=_idx_files(
            (
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            {
                "files": {
                    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
                    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",),
                    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
                    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
                }
            },
        ),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        mirror_dir="fashion-mnist",
        reader="idx",
        description="Fashion-MNIST (Xiao et al. 2017), 60k train / 10k test, same format as MNIST",
        files=_idx_files(
            (
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
            ),
            {
                # publisher's archives, then the Debian-recompressed ones of the shared mirror
                "files": {
                    "train-images-idx3-ubyte.gz": (
                        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                        "cf8536b0aa1a6ac5fa3f23001093305c",
                    ),
                    "train-labels-idx1-ubyte.gz": (
                        "25c81989df183df01b3e8a0aad5dffbe",
                        "10bea18fdb374794d4bb42e356e600c9",
                    ),
                    "t10k-images-idx3-ubyte.gz": (
                        "bef4ecab320f06d8554ea6380940ec79",
                        "f78720b4224f21cce2f2ccf2d7a94c9a",
                    ),
                    "t10k-labels-idx1-ubyte.gz": (
                        "bb300cfdad3c16e7a12a480ee83cd310",
                        "0d30e22e447f3c33dab9ed536400ac01",
                    ),
                },
                "payload": {
                    "train-images-idx3-ubyte.gz": ("f4a8712d7a061bf5bd6d2ca38dc4d50a",),
                    "train-labels-idx1-ubyte.gz": ("9018921c3c673c538a1fc5bad174d6f9",),
                    "t10k-images-idx3-ubyte.gz": ("8181f5470baa50b63fa0f6fddb340f0a",),
                    "t10k-labels-idx1-ubyte.gz": ("15d484375f8d13e6eb1aabb0c3f46965",),
                },
            },
        ),
    ),
    # Few-shot: characters of 50 alphabets, 20 drawings each (Lake et al. 2015). md5s: the
    # publisher's (as torchvision lists them), then the shared mirror's re-zipped archives,
    # whose every PNG is the publisher's (checked against its images_*.md5list.txt).
    "omniglot": DatasetSpec(
        name="omniglot",
        mirror_dir="omniglot",
        reader="omniglot",
        description="Omniglot (Lake et al. 2015), 1623 characters x 20 drawings, 50 alphabets",
        split_protocols=("lake", "vinyals"),
        files=tuple(
            RemoteFile(
                name=f"{name}.zip",
                urls=(
                    f"https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip",
                    f"https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip",
                ),
                md5=md5s,
            )
            for name, md5s in (
                (
                    "images_background",
                    ("68d2efa1b9178cc56df9314c21c6e718", "ed2a2319e5cfaef46acdc907c15c26a8"),
                ),
                (
                    "images_evaluation",
                    ("6b91aef0f799c5bb55b94e3f2daec811", "b2a4228f37e6bd97b1fd51c5cc2512e3"),
                ),
            )
        ),
    ),
    "omniglot_small": DatasetSpec(
        name="omniglot_small",
        mirror_dir="omniglot",
        reader="omniglot",
        description="Omniglot background small1 + small2: 8 alphabets, 242 characters x 20",
        files=tuple(
            RemoteFile(
                name=f"{name}.zip",
                urls=(f"https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip",),
                md5=(md5,),
            )
            for name, md5 in (
                ("images_background_small1", "e704a628b5459e08445c13499850abc4"),
                ("images_background_small2", "b75a71a51d3b13f821f212756fe481fd"),
            )
        ),
    ),
    "sine": DatasetSpec(
        name="sine",
        mirror_dir="sine",
        reader="sine",
        files=(),  # generated from a seeded distribution (data/sine.py): nothing to fetch
        description="MAML's sine regression tasks: A sin(x - phase), A~U[0.1,5], phase~U[0,pi]",
    ),
    "tinyshakespeare": DatasetSpec(
        name="tinyshakespeare",
        mirror_dir="text",
        reader="text_by_position",
        description="tiny-shakespeare (Karpathy's char-rnn), 1.1M characters, 90/5/5 by position",
        files=(
            RemoteFile(
                name="input.txt",
                mirror_name="tinyshakespeare.txt",
                urls=(
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                    "tinyshakespeare/input.txt",
                ),
                md5=("6fb458f1232090904fb40fe944165e91",),
            ),
        ),
    ),
    # md5s of the widely mirrored simple-examples copies (the shared mirror's are identical).
    "ptb_char": DatasetSpec(
        name="ptb_char",
        mirror_dir="ptb",
        reader="ptb_char",
        description="Penn Treebank, character level (Mikolov's simple-examples), standard splits",
        files=tuple(
            RemoteFile(
                name=f"ptb.char.{split}.txt",
                urls=(
                    "https://raw.githubusercontent.com/townie/PTB-dataset-from-Tomas-Mikolov-s-"
                    f"webpage/master/data/ptb.char.{split}.txt",
                ),
                md5=(md5,),
            )
            for split, md5 in (
                ("train", "874909f99060142f6b88cc74c34baaa2"),
                ("valid", "9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
                ("test", "1f9a2d1afe00f76e8bfbe09a65439681"),
            )
        ),
    ),
    # No checksum for enwik8 could be verified offline (no copy reachable here): the
    # download stage accepts it with a warning and the split manifest records its md5.
    # Pin it here once checked against a trusted copy.
    "enwik8": DatasetSpec(
        name="enwik8",
        mirror_dir="enwik8",
        reader="enwik8",
        description="enwik8 (Hutter Prize), first 90M / 5M / 5M bytes as train / valid / test",
        files=(
            RemoteFile(
                name="enwik8.zip",
                urls=("http://mattmahoney.net/dc/enwik8.zip",),
                md5=(),
            ),
        ),
    ),
}
