"""sandrun bootstrap: run the app from its read-only store tree.

`sandrun bundle` copies this file into every bundle as `.sandrun/bootstrap.py`, with the
constants below set for the app (`render`); the launcher starts it as
`python -I -B <tree>/.sandrun/bootstrap.py ARGS`: no environment variables, no user
site, no bytecode writes. Only the interpreter's stdlib and the bundle's site-packages
are importable, so what runs is what was verified. It runs as the app user, inside the
sandbox: standard library only.

A development bundle (`sandrun dev`, `sandrun test`) holds only the dependencies: its
DEV_SOURCE names the project's source directory, which goes first on sys.path (the
launch grants it read-only; -B: nothing is compiled into it).
"""

import sys

APP_NAME = "app"
ENTRY_POINT = "module:function"
DEV_SOURCE: str | None = None


def _run() -> object:
    import os
    import site

    tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Drop the script dir and any system site-/dist-packages: the bundle is the app's only
    # third-party code.
    sys.path[:] = [p for p in sys.path[1:]
                   if not p.endswith(("site-packages", "dist-packages"))]
    site.addsitedir(os.path.join(tree, "site-packages"))
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


def render(app_name: str, entry_point: str, dev_source: str | None = None) -> bytes:
    """This file's source with the app's name and entry point (validated by the caller)
    and, for a development bundle, the absolute source directory to put on sys.path."""
    if dev_source is not None and (not dev_source.startswith("/") or "\0" in dev_source):
        raise ValueError(f"dev_source must be an absolute path, got {dev_source!r}")
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    for name, default, value in (("APP_NAME", '"app"', app_name),
                                 ("ENTRY_POINT", '"module:function"', entry_point),
                                 ("DEV_SOURCE", "None", dev_source)):
        line = f"{name}: str | None = {default}\n" if name == "DEV_SOURCE" else \
            f"{name} = {default}\n"
        if source.count(line) != 1:
            raise RuntimeError(f"bootstrap template: {name} not found once")
        source = source.replace(line, f"{name} = {value!r}\n")
    return source.encode("utf-8")


if __name__ == "__main__":
    sys.exit(_run())  # type: ignore[arg-type]
