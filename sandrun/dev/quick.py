"""The quick `sandrun dev`: straight to the warm launch when nothing it depends on changed.

A plain `sandrun dev` run (no --watch, --dry-run, --explain or --rebuild) leaves a
record in <store>/dev/quick/: the words of its command line before `--`, the launch
options it decided (the cached bundle, the read grant of the tree, the working dir,
the profile), and the identity (inode, size, mtime, ctime) of what those decisions were
made from: pyproject.toml, pylock.toml, src/, the project's profile file and the
bundle. The next run with the same words, from the same directory, finds the record,
checks those identities by stat and hands the options to the warm exec path
(warm_exec.try_warm_exec), which checks everything a launch depends on as it does for
`sandrun exec`. Anything else (no record, any difference): None, and the full
`sandrun dev` runs.

Source edits change none of these inputs: an edit -> result loop costs one warm exec.
Like the warm path this module imports only what loads in microseconds.
"""

from __future__ import annotations

import marshal
import os

from sandrun import __version__
from sandrun.launch import safefile, warm_exec

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

QUICK_FORMAT = 2  # 2: the project profile is no longer recorded as the operator's -p
CACHE_DIR = "dev"
QUICK_DIR = "quick"
INPUT_NAMES = ("pyproject.toml", "pylock.toml", "src")


def quick_key(words: list[str] | tuple[str, ...]) -> tuple[Any, ...]:
    """What a record is for: the words before `--`, where and as whom they were given."""
    return (QUICK_FORMAT, __version__, os.geteuid(), os.getcwd(),
            os.environ.get("SANDRUN_STORE"), os.environ.get("XDG_CACHE_HOME"), tuple(words))


def _name(key: tuple[Any, ...]) -> str:
    try:
        from _sha256 import sha256  # builtin: hashlib would load OpenSSL
    except ImportError:
        from hashlib import sha256
    # repr, not marshal: marshal's bytes depend on interning and sharing, not only value.
    digest: str = sha256(repr(key).encode()).hexdigest()
    return digest[:32]


def inputs(root: str, bundle: str, names: tuple[str, ...] = INPUT_NAMES
           ) -> list[tuple[str, Any]]:
    paths = [os.path.join(root, name) for name in names]
    # The metadata files as read (through a link, if one is); the bundle itself.
    return [(path, warm_exec.identity(path)) for path in paths] + [
        (bundle, warm_exec.identity(bundle, follow=False))]


def inputs_now(recorded: list[tuple[str, Any]]) -> list[Any]:
    """The identities of recorded inputs now (the last one, the bundle, not followed)."""
    last = len(recorded) - 1
    return [warm_exec.identity(path, follow=i != last) for i, (path, _) in enumerate(recorded)]


def split_words(argv: list[str]) -> tuple[list[str], list[str]]:
    """The words before `--` and those after it."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def save(words: list[str] | tuple[str, ...], root: str, exec_args: Any, args: tuple[str, ...],
         store_root: str, names: tuple[str, ...] = INPUT_NAMES) -> None:
    """Record a plain run (best effort: without it the next run is only slower).
    `exec_args` is the warm_exec.ExecArgs of the launch, `args` the app's arguments
    that came before `--`, `names` the project's files it was decided from."""
    fields = {slot: getattr(exec_args, slot) for slot in warm_exec.ExecArgs.__slots__
              if slot not in ("args", "verbose")}
    record: dict[str, Any] = {"key": quick_key(words),
                              "inputs": inputs(root, exec_args.bundle, names),
                              "exec": fields, "args": list(args)}
    store_fd = warm_exec.open_store(store_root)
    if store_fd is None:
        return
    try:
        cache = safefile.open_private_dir(CACHE_DIR, dir_fd=store_fd, create=True)
        try:
            quick = safefile.open_private_dir(QUICK_DIR, dir_fd=cache, create=True)
            try:
                safefile.write_private(_name(record["key"]), marshal.dumps(record),
                                       dir_fd=quick)
            finally:
                os.close(quick)
        finally:
            os.close(cache)
    except (safefile.UnsafePath, OSError):
        pass
    finally:
        os.close(store_fd)


def load(argv: list[str]) -> Any:
    """The warm_exec.ExecArgs a record gives for `sandrun dev ARGV`, or None."""
    words, after = split_words(argv)
    key = quick_key(words)
    store_fd = warm_exec.open_store(warm_exec.default_store_root())
    if store_fd is None:
        return None
    try:
        cache = safefile.open_private_dir(CACHE_DIR, dir_fd=store_fd)
        try:
            quick = safefile.open_private_dir(QUICK_DIR, dir_fd=cache)
            try:
                data = safefile.read_private(_name(key), dir_fd=quick)
            finally:
                os.close(quick)
        finally:
            os.close(cache)
    except (safefile.UnsafePath, OSError):
        return None
    finally:
        os.close(store_fd)
    record = warm_exec.decode_record(data, key)
    if record is None:
        return None
    if [expected for _path, expected in record["inputs"]] != inputs_now(record["inputs"]):
        return None
    exec_args = warm_exec.ExecArgs()
    for slot, value in record["exec"].items():
        setattr(exec_args, slot, value)
    exec_args.args = [*record["args"], *after]
    return exec_args


def try_quick_dev(argv: list[str]) -> int | None:
    """Run `sandrun dev ARGV` from its records, or None (the full command runs)."""
    exec_args = load(argv)
    if exec_args is None:
        return None
    return warm_exec.try_warm_exec(exec_args, explain_failure=False)
