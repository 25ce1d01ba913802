"""Run pip so that it never builds anything: the wrapper sandrun runs pip through.

    python -I pipguard.py PIP_PARENT_DIR REFUSALS_FILE -- PIP ARGS...
    python -I pipguard.py PIP_PARENT_DIR --builds-allowed -- PIP ARGS...   (local projects)

`--only-binary=:all:` covers only what pip finds on indexes and find-links. A direct
reference (`name @ file:///dir`, `name @ https://.../x.tar.gz`, `git+...`), an editable,
or a `--no-binary` line in a -r file still makes pip prepare a source tree, which runs
its build backend (setup.py) just to read its metadata; no pip option or environment
variable prevents that. So this wrapper patches the places where pip prepares a
requirement: one whose link, or the source of a wheel pip built and cached earlier, is
not a wheel file, and every editable, is refused before it is downloaded, cloned or
built. Each refusal is appended to REFUSALS_FILE (one JSON object a line: parent, name,
url) for sandrun's message. When any patched place is missing (another pip version),
the wrapper refuses to run pip at all (exit GUARD_MISSING) rather than run it unguarded.

Run with -I (no PYTHON* variables, no user site, neither the working directory nor this
file's directory on sys.path) and given pip's own directory, so a `pip.py` in the
working directory is never imported. Standard library and pip only.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any, NoReturn

GUARD_MISSING = 3  # pip lacks a place the guard patches: nothing was run
BUILDS_ALLOWED = "--builds-allowed"
MISSING_PREFIX = "sandrun-pipguard: "

# Where pip prepares a requirement's distribution: (module, class, method), each replaced
# by the guard of the same name below.
PATCHED = (
    ("pip._internal.operations.prepare", "RequirementPreparer",
     "_prepare_linked_requirement"),
    ("pip._internal.operations.prepare", "RequirementPreparer",
     "prepare_editable_requirement"),
    ("pip._internal.distributions.sdist", "SourceDistribution",
     "prepare_distribution_metadata"),
)
LINK_ATTRIBUTES = ("is_wheel", "is_vcs", "is_existing_dir", "url")

def _parent(comes_from: object) -> str:
    """Who asked for the requirement: a dependency (pip's InstallRequirement), a
    requirement file line ("-r FILE (line N)"), or the command line (None)."""
    if comes_from is None:
        return ""
    if isinstance(comes_from, str):
        return comes_from
    name = getattr(comes_from, "name", None) or "?"
    link = getattr(comes_from, "link", None)
    filename = getattr(link, "filename", None)
    return f"{name} ({filename})" if filename else str(name)


def _refuse(refusals: str, error: type[Exception], req: Any, link: Any, why: str) -> NoReturn:
    url = _without_credentials(str(getattr(link, "url", None) or "?"))
    name = str(getattr(req, "name", None) or "")
    entry = {"parent": _parent(getattr(req, "comes_from", None)), "name": name, "url": url,
             "why": why}
    with open(refusals, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
    raise error(f"sandrun refuses {name + ' @ ' if name else ''}{url}: {why}; sandrun "
                "bundles wheels only and never builds dependencies")


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _source_links(req: Any) -> list[Any]:
    return [link for link in (getattr(req, "link", None), getattr(req, "original_link", None),
                              getattr(req, "cached_wheel_source_link", None))
            if link is not None]


def install(refusals: str) -> None:
    """Patch pip; ImportError/AttributeError when a place to patch does not exist."""
    error: type[Exception] = importlib.import_module(
        "pip._internal.exceptions").InstallationError
    link_class = importlib.import_module("pip._internal.models.link").Link
    for attribute in LINK_ATTRIBUTES:
        getattr(link_class, attribute)

    def linked(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def prepare(self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
            links = _source_links(req)
            if not links:
                _refuse(refusals, error, req, None, "it has no link to a wheel")
            for link in links:
                if not link.is_wheel or link.is_vcs or link.is_existing_dir():
                    _refuse(refusals, error, req, link, "it is not a wheel")
            return original(self, req, *args, **kwargs)
        return prepare

    def editable(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def prepare(self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
            _refuse(refusals, error, req, getattr(req, "link", None),
                    "it is an editable requirement, which pip would build")
        return prepare

    def source(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def prepare(self: Any, *args: Any, **kwargs: Any) -> Any:
            req = getattr(self, "req", None)
            _refuse(refusals, error, req, getattr(req, "link", None),
                    "it is a source distribution, which pip would build")
        return prepare

    guards = (linked, editable, source)
    # Look every place up before patching any: all or nothing.
    places = [(getattr(importlib.import_module(module), cls), method)
              for module, cls, method in PATCHED]
    originals = [getattr(cls, method) for cls, method in places]
    for (cls, method), original in zip(places, originals, strict=True):
        if not callable(original):
            raise AttributeError(f"{cls.__name__}.{method} is not callable")
    for (cls, method), original, guard in zip(places, originals, guards, strict=True):
        setattr(cls, method, guard(original))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] != "--":
        sys.stderr.write(f"{MISSING_PREFIX}usage: pipguard.py PIP_PARENT_DIR "
                         f"REFUSALS_FILE|{BUILDS_ALLOWED} -- PIP ARGS\n")
        return 2
    pip_parent, refusals, args = argv[0], argv[1], argv[3:]
    # The pip sandrun chose: already on sys.path in sandrun's venv (then left where it
    # is, after the standard library), else (sandrun imported through PYTHONPATH) first.
    if os.path.realpath(pip_parent) not in map(os.path.realpath, sys.path):
        sys.path.insert(0, pip_parent)
    if refusals != BUILDS_ALLOWED:
        try:
            install(refusals)
        except (ImportError, AttributeError) as exc:
            sys.stderr.write(f"{MISSING_PREFIX}cannot guard this pip against building "
                             f"source distributions ({exc}); not running it\n")
            return GUARD_MISSING
    sys.argv = ["pip", *args]
    pip_main: Callable[[list[str]], int] = importlib.import_module("pip._internal.cli.main").main
    return pip_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
