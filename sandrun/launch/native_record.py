"""The native front's launch record: written by the cold path, read by the C front.

`sandrun` is a C program when a compiler was there at install (native/front.c): a warm
`sandrun exec` as root is served there from <store>/launch/<NAME>.native without
starting Python. This module writes that record, in the format and under the key that
sandrun/launch/native/front.h defines (the contract: any change there is a change here).
It holds what warm_exec's record holds (inputs, tree snapshot, the RunSpec), plus the
cgroup plan (cgroup.native_plan) the front carries out itself.

The cold path writes it right after warm_exec's record (launcher.save_record), for the
words of `sandrun exec` this process was started with (warm_exec.INVOKED), and only when
the warm path would serve exactly those words with that record: the front serves what
the Python warm path serves, nothing else. Best effort: no native record only means the
front starts Python, which serves the launch as before.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from sandrun import __version__
from sandrun.launch import runner, warm_exec
from sandrun.sandbox import cgroup

FORMAT = "1"  # NATIVE_RECORD_FORMAT
SUFFIX = ".native"
MAX_BYTES = 64 << 20  # NATIVE_RECORD_MAX
MAX_ITEMS = 1_000_000  # NATIVE_MAX_ITEMS
KEY_MAGIC = b"sandrun-native-key"
RECORD_MAGIC = b"sandrun-native-record"
END = b"end"
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1

Snapshot = list[tuple[str, int, int, int, int, int]]


def key_bytes(words: list[str], store: str, cwd: str, euid: int) -> bytes:
    """The record's key: the magic, the format, sandrun's version, the euid, the working
    directory and the store root as the warm path takes it, then the words after `exec`
    up to and including the bundle, each followed by a NUL."""
    parts = [KEY_MAGIC, FORMAT.encode(), __version__.encode(), str(euid).encode(),
             os.fsencode(cwd), os.fsencode(store), *(os.fsencode(w) for w in words)]
    for part in parts:
        if b"\0" in part:
            raise ValueError("a NUL in a key word")
    return b"".join(part + b"\0" for part in parts)


def record_name(key: bytes) -> str:
    """16 lowercase hex digits of the key's 64-bit FNV-1a hash (the file is NAME.native)."""
    digest = _FNV_OFFSET
    for byte in key:
        digest = ((digest ^ byte) * _FNV_PRIME) & _MASK64
    return f"{digest:016x}"


class _Netstrings:
    """The record body: "<length>:<bytes>," items one after the other."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        self.parts.append(b"%d:%s," % (len(data), data))

    def text(self, value: str | bytes) -> None:
        """A string the C side uses as a C string: no NUL in it."""
        data = os.fsencode(value)
        if b"\0" in data:
            raise ValueError(f"a NUL in {value!r}")
        self.raw(data)

    def number(self, value: int) -> None:
        if type(value) is not int and type(value) is not bool:
            raise ValueError(f"not an integer: {value!r}")
        self.raw(b"%d" % value)

    def flag(self, value: object) -> None:
        self.raw(b"1" if value else b"0")

    def count(self, items: Any) -> int:
        count = len(items)
        if count > MAX_ITEMS:
            raise ValueError(f"{count} items: more than {MAX_ITEMS}")
        self.number(count)
        return count

    def data(self) -> bytes:
        return b"".join(self.parts)


def encode(*, key: bytes, boot_id: str, not_after: int | None, supervisor: str,
           inputs: list[tuple[str, bool, warm_exec.Identity]], tree_sha: str,
           tree_top_mode: int, snapshot: Snapshot, spec: runner.RunSpec, own_cgroup: str,
           nodes: list[dict[str, Any]]) -> bytes:
    """The record's bytes, in front.h's order. ValueError for what the format cannot
    carry (a NUL in a C string, too many items, an unknown rlimit, a spec that is not a
    privileged launch's)."""
    if not spec.privileged or spec.notify_bpf:
        raise ValueError("only a privileged launch without observe mode has a native record")
    out = _Netstrings()
    out.text(RECORD_MAGIC)
    out.text(FORMAT)
    out.raw(key)
    out.text(boot_id)
    out.text("" if not_after is None else str(int(not_after)))
    out.text(supervisor)
    out.count(inputs)
    for path, follow, identity in inputs:
        out.text(path)
        out.flag(follow)
        out.flag(identity is not None)
        for value in identity or (0,) * 8:
            out.number(value)
    out.text(tree_sha)
    out.number(tree_top_mode)
    out.count(snapshot)
    for name, mode, uid, size, ino, ctime_ns in sorted(snapshot,
                                                        key=lambda e: os.fsencode(e[0])):
        out.text(name)
        for value in (mode, uid, size, ino, ctime_ns):
            out.number(value)
    _encode_spec(out, spec)
    out.text(own_cgroup)
    out.count(nodes)
    for node in nodes:
        out.number(node["version"])
        out.text(node["dir"])
        out.number(node["dev"][0])
        out.number(node["dev"][1])
        out.text(node["delegate"])
        out.flag(node["required"])
        out.count(node["settings"])
        for file, value, required, when in node["settings"]:
            out.text(file)
            out.text(value)
            out.flag(required)
            out.text(when)
    out.text(END)
    return out.data()


def _encode_spec(out: _Netstrings, spec: runner.RunSpec) -> None:
    out.number(spec.uid)
    out.number(spec.gid)
    out.text(spec.user_name)
    out.text(spec.app_name)
    out.text(spec.interpreter)
    out.count(spec.argv)
    for word in spec.argv:
        out.text(word)
    for pairs in (spec.env, None, spec.env_set):
        if pairs is None:
            out.count(spec.env_pass)
            for name in spec.env_pass:
                out.text(name)
            continue
        out.count(pairs)
        for name, value in pairs.items():
            out.text(name)
            out.text(value)
    out.text(spec.cwd)
    out.text(spec.state_dir)
    out.count(spec.rlimits)
    for rlimit, limit in spec.rlimits:
        which = getattr(resource, f"RLIMIT_{rlimit.upper()}", None)
        if type(which) is not int:
            raise ValueError(f"unknown rlimit {rlimit!r}")
        out.number(which)
        out.number(-1 if limit is None else limit)
    out.flag(spec.mdwe)
    out.text(spec.hostname)
    out.number(spec.tmp_size)
    out.count(spec.writable)
    for path in spec.writable:
        out.text(path)
    ruleset = spec.landlock
    out.flag(ruleset is not None)
    if ruleset is not None:
        for field in ("abi", "handled_fs", "handled_net", "scoped", "restrict_flags"):
            out.number(ruleset[field])
        out.count(ruleset["paths"])
        for path, rights, required, label in ruleset["paths"]:
            out.text(path)
            out.number(rights)
            out.flag(required)
            out.text(label)
        for ports in (ruleset["bind_tcp"], ruleset["connect_tcp"]):
            out.count(ports)
            for port in ports:
                out.number(port)
    out.raw(spec.seccomp_bpf)
    out.count(spec.failure_notes)  # the supervisor says them after a failed run
    for note in spec.failure_notes:
        out.text(note)


def words_for(key: tuple[Any, ...]) -> tuple[list[str], str] | None:
    """The key words and the store root (as the front takes them) of the `sandrun exec`
    this process runs (warm_exec.INVOKED), if the warm path would serve those words with
    the record of the cold `key`; else None (another command, `sandrun dev`, a test
    calling the launcher, words only the cold path serves)."""
    if warm_exec.INVOKED is None:
        return None
    split = warm_exec.split_exec_words(warm_exec.INVOKED)
    parsed = warm_exec.parse_exec_args(warm_exec.INVOKED)
    if split is None or parsed is None:
        return None
    store = parsed.store or warm_exec.default_store_root()
    if warm_exec.record_key(parsed, store) != key:
        return None
    return split[0], store


def write(store_fd: int, key: bytes, inputs: list[tuple[str, bool, warm_exec.Identity]],
          tree: str, spec: runner.RunSpec, not_after: int | None = None) -> str | None:
    """Write the native record of a launch the cold path fully checked (after warm_exec's
    record, from the same inputs) into <store>/launch/<record_name(key)>.native, 0600 and
    atomically; return its name, or None when this launch gets none: not root, not
    privileged, observe mode, no verified tree snapshot, or what the format cannot carry.
    Raises what the store raises (OSError, safefile.UnsafePath) and EnforcementError when
    the cgroup limits would be refused now."""
    if os.geteuid() != 0 or not spec.privileged or spec.notify_bpf:
        return None
    tree_sha = os.path.basename(tree)
    # The snapshot the tree was verified against (installed or fully re-hashed), not a
    # walk now: the front must accept only the tree the cold path checked.
    snapshot = warm_exec.load_snapshot(store_fd, tree_sha)
    if snapshot is None:
        return None
    own_cgroup, nodes = cgroup.native_plan(spec.limits)
    try:
        body = encode(key=key, boot_id=warm_exec._boot_id(), not_after=not_after,
                      supervisor=runner.SUPERVISOR, inputs=inputs, tree_sha=tree_sha,
                      tree_top_mode=warm_exec.tree_top_mode(0), snapshot=snapshot,
                      spec=spec, own_cgroup=own_cgroup, nodes=nodes)
    except (ValueError, TypeError, KeyError):
        return None
    if len(body) > MAX_BYTES:
        return None
    name = record_name(key) + SUFFIX
    warm_exec.write_launch_file(store_fd, name, body)
    return name


def save(store_fd: int, key: tuple[Any, ...], inputs: list[tuple[str, bool, Any]],
         tree: str, spec: runner.RunSpec, not_after: int | None = None) -> str | None:
    """launcher.save_record's part: the native record for this process's `sandrun exec`
    words when they are served warm with the cold `key`'s record (words_for)."""
    found = words_for(key)
    if found is None:
        return None
    words, store = found
    if ".." in store.split("/"):
        return None  # the front refuses such a store (has_dotdot): it would fall back
    native_key = key_bytes(words, store, os.getcwd(), os.geteuid())
    return write(store_fd, native_key, inputs, tree, spec, not_after)



def tree_of(data: bytes) -> str | None:
    """The TREE_SHA a native record names (for `sandrun gc` and `rm`, which remove the
    records of removed trees), or None when `data` is not one."""
    items: list[bytes] = []
    wanted, at = 7, 0  # up to the count of inputs; then the inputs and TREE_SHA
    try:
        while len(items) < wanted:
            colon = data.index(b":", at, at + 21)
            length = data[at:colon]
            end = colon + 1 + int(length)
            if not length.isdigit() or data[end:end + 1] != b",":
                return None
            items.append(data[colon + 1:end])
            at = end + 1
            if len(items) == 2 and items != [RECORD_MAGIC, FORMAT.encode()]:
                return None
            if len(items) == 7:
                inputs = int(items[6])
                if not items[6].isdigit() or inputs > MAX_ITEMS:
                    return None
                wanted = 7 + 11 * inputs + 1
    except ValueError:
        return None
    return os.fsdecode(items[-1])


ELF_MAGIC = b"\x7fELF"
# Set by the cold path when it execs the front on the record it just wrote
# (cli_exec.hand_to_front): the front's -v line then says so instead of "warm start".
COLD_ENV = "SANDRUN_FRONT_COLD"


def trusted_front() -> int | None:
    """As root: an fd of this installation's native front (front_path()) to exec, when
    it is the C program and only root can change it or its directories (what the front
    checks of sandrun-py before it execs that); else None."""
    from sandrun.launch import safefile

    if os.geteuid() != 0:
        return None
    fd = safefile.open_trusted_program(front_path(), (0,))
    if fd is not None and os.pread(fd, 4, 0) != ELF_MAGIC:
        os.close(fd)
        return None
    return fd


def started_as_entry_script() -> bool:
    """Whether this process is the installation's `sandrun` command (the entry script,
    maybe as `sandrun-py` exec'd by the front), not `python -m sandrun`, whose front
    next to the interpreter may belong to another installation."""
    script = sys.argv[0] if sys.argv else ""
    return os.path.basename(script) in ("sandrun", "sandrun-py")


def front_path() -> str:
    """Where the `sandrun` command of this installation is: next to the entry script
    that started this process (`sandrun`, or `sandrun-py` when the front execs it), else
    next to the interpreter (`python -m sandrun` in the venv)."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) in ("sandrun", "sandrun-py"):
        return os.path.join(os.path.dirname(os.path.realpath(script)), "sandrun")
    return os.path.join(os.path.dirname(sys.executable), "sandrun")


def front_status(path: str | None = None) -> tuple[bool, str]:
    """For `sandrun -V`: whether `sandrun` (default: front_path()) is the native front
    (True) or the Python entry script (False), and why."""
    path = front_path() if path is None else path
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return False, (f"Python only: {path} cannot be read ({exc.strerror or exc}); "
                       "reinstall sandrun with a C compiler (gcc) present")
    if head == ELF_MAGIC:
        return True, f"native ({path})"
    return False, (f"Python only: {path} is the Python entry script (no C compiler at "
                   "install); reinstall sandrun with a C compiler (gcc) present")
