"""sandrun bootstrap: run the app from its read-only store tree.

`sandrun bundle` copies this file, up to the template marker, into every bundle as
`.sandrun/bootstrap.py`, with the constants below set for the app (`render`). The
launcher starts it as `python -I -B -S <tree>/.sandrun/bootstrap.py ARGS`: no
environment variables, no user site, no bytecode writes, and no processing of the
system's site-/dist-packages (their .pth files and sitecustomize would run system code
in the app before it starts, and cost as much as the rest of the start). Only the
interpreter's stdlib and the bundle's site-packages, with its .pth files processed as
`site` processes an installed wheel's, are importable, so what runs is what was
verified. `_site` gives the app the rest of what `site` gives any program (exit(),
quit(), help()...). It runs as the app user, inside the sandbox: standard library only.

Started without -S (by a launcher that does not look for BOOTSTRAP_API), it works the
same, but the system's site has run first; its directories are dropped from sys.path, so
the app gets the same sys.path.

A development bundle (`sandrun dev`, `sandrun test`) holds only the dependencies: its
DEV_SOURCE names the project's source directory, which goes first on sys.path (the
launch grants it read-only; -B: nothing is compiled into it).
"""

import sys

BOOTSTRAP_API = 2  # 2: made to be started with -S (a launcher looks for this line)
APP_NAME = "app"
ENTRY_POINT = "module:function"
DEV_SOURCE: str | None = None


def _site(tree: str) -> None:
    """The bundle's site-packages and its .pth files (path entries and import lines, as
    for a venv); under -S also what site.main() gives every program besides the system's
    packages and sitecustomize: exit(), quit(), help(), copyright(), credits(),
    license() and the user-site attributes (disabled, as -I disables them)."""
    import site

    if sys.flags.no_site:
        site.ENABLE_USER_SITE = False
        site.getusersitepackages()
        site.setquit()
        site.setcopyright()
        site.sethelper()
    site.addsitedir(tree + "/site-packages")


def _run() -> object:
    import os

    tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Drop the script's directory (-I leaves it out from 3.11 on) and any system site-/
    # dist-packages (present only when site ran): the bundle is the app's only
    # third-party code.
    if not getattr(sys.flags, "safe_path", False):
        del sys.path[0]
    sys.path[:] = [p for p in sys.path if not p.endswith(("site-packages", "dist-packages"))]
    _site(tree)
    if DEV_SOURCE is not None:  # the project's own code wins over anything installed
        sys.path.insert(0, DEV_SOURCE)
    sys.argv[0] = APP_NAME
    # As pip's console-script wrapper for `module:first.rest` does: `from module import
    # first` (which imports the submodule module.first when it is not an attribute, as
    # for granian:cli.entrypoint), then `first.rest()`.
    module, _, attrs = ENTRY_POINT.partition(":")
    first, *rest = attrs.split(".")
    parent = __import__(module, fromlist=[first])
    try:
        func: object = getattr(parent, first)
    except AttributeError:
        raise ImportError(f"cannot import name {first!r} from {module!r}",
                          name=module) from None
    for attr in rest:
        func = getattr(func, attr)
    return func()  # type: ignore[operator]


if __name__ == "__main__":
    sys.exit(_run())  # type: ignore[arg-type]
elif __name__ == "__mp_main__":
    # A multiprocessing spawn (or forkserver) child runs this file again under this name,
    # its sys.path already the app's: the .pth import lines and builtins, as a venv's
    # child gets them from site.
    import os

    _site(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ---- the template's renderer: not copied into bundles (render cuts the file here)
_MARKER = "\n# ---- the template's renderer"


def render(app_name: str, entry_point: str, dev_source: str | None = None) -> bytes:
    """This file's source with the app's name and entry point (validated by the caller)
    and, for a development bundle, the absolute source directory to put on sys.path."""
    if dev_source is not None and (not dev_source.startswith("/") or "\0" in dev_source):
        raise ValueError(f"dev_source must be an absolute path, got {dev_source!r}")
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    if source.count(_MARKER) != 1:
        raise RuntimeError("bootstrap template: the renderer's marker not found once")
    source = source[:source.index(_MARKER)].rstrip("\n") + "\n"
    for name, default, value in (("APP_NAME", '"app"', app_name),
                                 ("ENTRY_POINT", '"module:function"', entry_point),
                                 ("DEV_SOURCE", "None", dev_source)):
        line = f"{name}: str | None = {default}\n" if name == "DEV_SOURCE" else \
            f"{name} = {default}\n"
        if source.count(line) != 1:
            raise RuntimeError(f"bootstrap template: {name} not found once")
        source = source.replace(line, f"{name} = {value!r}\n")
    return source.encode("utf-8")

