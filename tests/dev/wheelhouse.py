"""Wheels for the dev tests without network: pure-Python distributions installed in this
venv (pytest and its dependencies, click) repacked as wheels, and tiny made-up ones."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

# What a test bundle needs (pytest 9 on Python 3.11) and the example app's dependency.
PYTEST_DISTS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments")
EXAMPLE_DISTS = ("click",)
SKIPPED = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


def _digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def repack(name: str, directory: Path) -> Path:
    """The installed distribution `name` as a py3-none-any wheel in `directory` (its
    files as RECORD lists them, without bytecode and scripts outside site-packages)."""
    dist = importlib.metadata.distribution(name)
    version = dist.version
    project = dist.metadata["Name"].replace("-", "_").lower()
    content: dict[str, bytes] = {}
    for file in dist.files or []:
        rel = str(file)
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        if ".dist-info/" in rel and rel.rsplit("/", 1)[-1] in SKIPPED:
            continue
        content[rel] = Path(file.locate()).read_bytes()
    dist_info = next(r.split("/")[0] for r in content if r.split("/")[0].endswith(".dist-info"))
    record = "".join(f"{n},{_digest(d)},{len(d)}\n" for n, d in sorted(content.items()))
    content[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{project}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in sorted(content.items()):
            zf.writestr(zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0)), d)
    return path


def local_wheelhouse(directory: Path, *names: str) -> Path:
    """pytest's wheels (and `names`) repacked into `directory`."""
    for name in (*PYTEST_DISTS, *names):
        repack(name, directory)
    return directory
