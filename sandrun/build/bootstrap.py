"""sandrun bootstrap: run the app from its read-only store tree.

`sandrun bundle` copies this file into every bundle as `.sandrun/bootstrap.py`, with the
two constants below set for the app (`render`); the launcher starts it as
`python -I -B <tree>/.sandrun/bootstrap.py ARGS`: no environment variables, no user
site, no bytecode writes. Only the interpreter's stdlib and the bundle's site-packages
are importable, so what runs is what was verified. It runs as the app user, inside the
sandbox: standard library only.
"""

import sys

APP_NAME = "app"
ENTRY_POINT = "module:function"


def _run() -> object:
    import os
    import site

    tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Drop the script dir and any system site-/dist-packages: the bundle is the app's only
    # third-party code.
    sys.path[:] = [p for p in sys.path[1:]
                   if not p.endswith(("site-packages", "dist-packages"))]
    site.addsitedir(os.path.join(tree, "site-packages"))
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


def render(app_name: str, entry_point: str) -> bytes:
    """This file's source with the app's name and entry point (validated by the caller)."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    for name, value in (("APP_NAME", app_name), ("ENTRY_POINT", entry_point)):
        default = f'{name} = "app"\n' if name == "APP_NAME" else \
            f'{name} = "module:function"\n'
        if source.count(default) != 1:
            raise RuntimeError(f"bootstrap template: {name} not found once")
        source = source.replace(default, f"{name} = {value!r}\n")
    return source.encode("utf-8")


if __name__ == "__main__":
    sys.exit(_run())  # type: ignore[arg-type]
