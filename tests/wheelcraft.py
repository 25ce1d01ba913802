"""Make small wheels (and sdists) for tests, without network or build backends."""

from __future__ import annotations

import base64
import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import Path


def _digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str | bytes], *,
               console_scripts: dict[str, str] | None = None, requires: list[str] = (),
               tag: str = "py3-none-any", tamper: str | None = None,
               modes: dict[str, int] | None = None) -> Path:
    """Write `{name}-{version}-{tag}.whl` with a correct RECORD (unless `tamper` names a
    file whose content is changed after RECORD was written). `modes` gives the Unix
    permission bits stored for some of the files (as a build tool stores 0755 for an
    executable); the others carry zipfile's default."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    content: dict[str, bytes] = {k: v.encode() if isinstance(v, str) else v
                                 for k, v in files.items()}
    content[f"{dist_info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    content[f"{dist_info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: wheelcraft\n"
                                     f"Root-Is-Purelib: true\nTag: {tag}\n").encode()
    if console_scripts:
        eps = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in console_scripts.items())
        content[f"{dist_info}/entry_points.txt"] = eps.encode()
    record = "".join(f"{n},{_digest(d)},{len(d)}\n" for n, d in sorted(content.items()))
    record += f"{dist_info}/RECORD,,\n"
    content[f"{dist_info}/RECORD"] = record.encode()
    if tamper:
        content[tamper] = content[tamper] + b"\n# tampered\n"
    path = directory / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in sorted(content.items()):
            if modes and n in modes:
                info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | modes[n]) << 16
                zf.writestr(info, d)
            else:
                zf.writestr(n, d)
    return path


def make_sdist(directory: Path, name: str, version: str, marker: Path) -> Path:
    """An sdist whose setup.py would write `marker` if anything ever ran it."""
    directory.mkdir(parents=True, exist_ok=True)
    setup = (f"from pathlib import Path\nPath({str(marker)!r}).write_text('setup.py ran')\n"
             f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n")
    path = directory / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for fname, data in ((f"{name}-{version}/setup.py", setup),
                            (f"{name}-{version}/PKG-INFO",
                             f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")):
            raw = data.encode()
            info = tarfile.TarInfo(fname)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


HELLO_SOURCE = '''\
import os, sys

def main():
    print("hello", " ".join(sys.argv[1:]), "uid", os.getuid())
    return int(os.environ.get("HELLO_EXIT", "0"))
'''


def hello_wheelhouse(directory: Path) -> Path:
    """A wheelhouse with `hellopkg` (console script `hello`) depending on `helperlib`."""
    make_wheel(directory, "hellopkg", "1.2.0", {"hellopkg/__init__.py": HELLO_SOURCE},
               console_scripts={"hello": "hellopkg:main"}, requires=["helperlib"])
    make_wheel(directory, "helperlib", "0.3", {"helperlib.py": "VALUE = 42\n"})
    return directory
