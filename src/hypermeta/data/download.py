"""The download stage: fetch each file of a dataset, mirror first, verify, then rename
into place. A file already present and verified is kept; nothing unverified stays."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

from hypermeta.data.registry import DATASETS, DatasetSpec, RemoteFile
from hypermeta.errors import HypermetaError
from hypermeta.progress import progress

MIRROR_ENV = "HYPERMETA_DATA_MIRROR"
CHUNK = 1 << 20


def md5_of(path: Path, gunzip: bool = False) -> str:
    digest = hashlib.md5()
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, remote: RemoteFile) -> str | None:
    """None when `path` (holding `remote`, maybe under a temporary name) matches an
    accepted checksum, or when none is pinned yet; else what was found."""
    found = md5_of(path)
    if found in remote.md5 or not (remote.md5 or remote.payload_md5):
        return None
    if remote.payload_md5 and remote.name.endswith(".gz"):
        try:
            payload = md5_of(path, gunzip=True)
        except (OSError, EOFError) as exc:
            return f"md5 {found}, and it does not decompress ({exc})"
        if payload in remote.payload_md5:
            return None
        return f"md5 {found} (payload {payload})"
    return f"md5 {found}"


def mirror_location(configured: str | None, root: Path) -> str | None:
    mirror = os.environ.get(MIRROR_ENV) or configured
    if not mirror or "://" in mirror:
        return mirror
    path = Path(mirror)
    return str(path if path.is_absolute() else (root / path).resolve())


def missing_from_mirror(spec: DatasetSpec, mirror: str | None) -> list[str]:
    """The files of `spec` a local mirror folder lacks, as `<mirror_dir>/<name>` (none
    when the mirror is a URL or unset: nothing here can tell what a web server holds)."""
    if not mirror or "://" in mirror:
        return []
    return [
        f"{spec.mirror_dir}/{name}"
        for name in (remote.mirror_name or remote.name for remote in spec.files)
        if not (Path(mirror) / spec.mirror_dir / name).exists()
    ]


def sources(spec: DatasetSpec, remote: RemoteFile, mirror: str | None) -> list[str]:
    found = []
    if mirror:
        sep = "" if mirror.endswith("/") else "/"
        found.append(f"{mirror}{sep}{spec.mirror_dir}/{remote.mirror_name or remote.name}")
    return found + list(remote.urls)


def _copy(source: str, destination: Path, label: str) -> None:
    if "://" in source:
        request = urllib.request.Request(source, headers={"User-Agent": "hypermeta"})
        stream = urllib.request.urlopen(request, timeout=60)
        total = int(stream.headers.get("Content-Length") or 0) or None
    else:
        if not Path(source).is_file():
            raise FileNotFoundError("no such file")
        stream = open(source, "rb")  # noqa: SIM115 - closed below
        total = Path(source).stat().st_size
    with (
        stream,
        open(destination, "wb") as out,
        progress(total=total, unit="B", unit_scale=True, desc=label, leave=False) as bar,
    ):
        while chunk := stream.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def fetch_file(spec: DatasetSpec, remote: RemoteFile, folder: Path, mirror: str | None) -> Path:
    """A verified copy of `remote` in `folder`; the first source that verifies wins."""
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / remote.name
    if destination.exists() and verify(destination, remote) is None:
        return destination
    destination.unlink(missing_ok=True)
    tried = []
    for source in sources(spec, remote, mirror):
        tmp = destination.with_name(f".{remote.name}.partial")
        try:
            _copy(source, tmp, f"{spec.name}/{remote.name}")
            problem = verify(tmp, remote)
            if problem is None:
                if not remote.md5:
                    print(
                        f"warning: {spec.name}/{remote.name} has no pinned checksum; "
                        f"accepted with md5 {md5_of(tmp)} (recorded in the split manifest)"
                    )
                os.replace(tmp, destination)
                return destination
            tried.append(f"{source} (checksum mismatch: {problem})")
        except Exception as exc:  # network and file errors alike: try the next source
            tried.append(f"{source} ({type(exc).__name__}: {exc})")
        finally:
            tmp.unlink(missing_ok=True)
    mismatched = any("checksum mismatch" in attempt for attempt in tried)
    raise HypermetaError(
        f"could not get a verified copy of {spec.name}/{remote.name}; tried: "
        + "; ".join(tried)
        + f"; set {MIRROR_ENV} (or data.mirror) to a folder holding "
        f"{spec.mirror_dir}/{remote.mirror_name or remote.name}"
        + (" as published (accepted md5: " + ", ".join(remote.md5) + ")" if mismatched else "")
        + ", or check your network."
    )


def download(dataset: str, raw_root: Path, mirror: str | None) -> Path:
    spec = DATASETS[dataset]
    folder = raw_root / dataset
    for remote in spec.files:
        fetch_file(spec, remote, folder, mirror)
    return folder
