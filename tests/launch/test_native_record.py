"""The native front's record as the cold path writes it (native/front.h is the contract):
the key bytes, the record's name, the netstring body of a small spec, the `exec` words
it is keyed by, and the cgroup plan (cgroup.native_plan) on fake and real layouts.

Pure logic but the last test, which compares native_plan with what create() makes on
this machine (root).
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandrun import __version__
from sandrun.errors import EnforcementError
from sandrun.launch import native_record, runner, warm_exec
from sandrun.sandbox import cgroup

MiB = 1 << 20
FRONT_H = Path(native_record.__file__).parent / "native" / "front.h"


def netstrings(data: bytes) -> list[bytes]:
    """Split a record body into its items, checking the framing exactly."""
    items = []
    at = 0
    while at < len(data):
        colon = data.index(b":", at)
        digits = data[at:colon]
        assert digits.isdigit() and (digits == b"0" or not digits.startswith(b"0")), digits
        end = colon + 1 + int(digits)
        assert data[end:end + 1] == b",", f"no ',' after item at {at}"
        items.append(data[colon + 1:end])
        at = end + 1
    return items


# ---------------------------------------------------------------- the key and the name


def test_the_constants_are_front_h_s() -> None:
    header = FRONT_H.read_text()
    assert f'#define NATIVE_RECORD_FORMAT "{native_record.FORMAT}"' in header
    assert "#define NATIVE_RECORD_MAX (64u << 20)" in header
    assert native_record.MAX_BYTES == 64 << 20
    assert f"#define NATIVE_MAX_ITEMS {native_record.MAX_ITEMS}" in header


def test_key_bytes_exactly() -> None:
    words = ["-v", "--store", "store", "-p", "app.toml", "--", "app.pyz"]
    key = native_record.key_bytes(words, "store", "/work dir", 0)
    assert key == (b"sandrun-native-key\0" b"1\0" + __version__.encode() + b"\0" b"0\0"
                   b"/work dir\0" b"store\0" b"-v\0--store\0store\0-p\0app.toml\0--\0"
                   b"app.pyz\0")
    # Every part counts: the words, their split, the cwd, the store, the euid.
    others = [native_record.key_bytes(["-v", "--store", "store", "-p", "app.toml", "app.pyz"],
                                      "store", "/work dir", 0),
              native_record.key_bytes(words, "store", "/work", 0),
              native_record.key_bytes(words, "/abs/store", "/work dir", 0),
              native_record.key_bytes(words, "store", "/work dir", 1000),
              native_record.key_bytes(["a b"], "s", "/", 0),
              native_record.key_bytes(["a", "b"], "s", "/", 0)]
    assert len({key, *others}) == 1 + len(others)
    # Not a str's UTF-8: the bytes the kernel passed (surrogateescape).
    assert native_record.key_bytes(["caf\udce9.pyz"], "s", "/", 0).endswith(b"caf\xe9.pyz\0")


def test_record_name_is_fnv1a_64() -> None:
    # The published FNV-1a 64 test vectors.
    assert native_record.record_name(b"") == "cbf29ce484222325"
    assert native_record.record_name(b"a") == "af63dc4c8601ec8c"
    assert native_record.record_name(b"foobar") == "85944171f73967e8"
    name = native_record.record_name(native_record.key_bytes(["x.pyz"], "s", "/", 0))
    assert len(name) == 16 and set(name) <= set("0123456789abcdef")


# ---------------------------------------------------------------- which words


@pytest.mark.parametrize(("argv", "expected"), [
    (["app.pyz"], (["app.pyz"], [])),
    (["app.pyz", "-v", "--", "x"], (["app.pyz"], ["-v", "--", "x"])),
    (["app.pyz", "--", "-x"], (["app.pyz"], ["-x"])),
    (["-v", "--store", "s", "-p=x", "app.pyz", "a"], None),  # -p=x: click's own spelling
    (["-v", "--store=s", "--verify", "cheap", "app.pyz", "a"],
     (["-v", "--store=s", "--verify", "cheap", "app.pyz"], ["a"])),
    (["--", "-odd.pyz", "a"], (["--", "-odd.pyz"], ["a"])),
    (["--verify", "full", "app.pyz"], None),
    (["--dry-run", "app.pyz"], None),
    (["--no-such-option", "app.pyz"], None),
    (["--store"], None),
    (["-v"], None),
    (["-v=1", "app.pyz"], None),
])
def test_split_exec_words_follows_parse_exec_args(
        argv: list[str], expected: tuple[list[str], list[str]] | None) -> None:
    assert warm_exec.split_exec_words(argv) == expected
    parsed = warm_exec.parse_exec_args(argv)
    assert (parsed is None) == (expected is None)
    if parsed is not None and expected is not None:
        assert parsed.bundle == expected[0][-1] and parsed.args == expected[1]


@pytest.fixture
def invoked() -> Iterator[None]:
    saved = warm_exec.INVOKED
    yield
    warm_exec.INVOKED = saved


def cold_key(words: list[str]) -> tuple[Any, ...]:
    parsed = warm_exec.parse_exec_args(words)
    assert parsed is not None
    return warm_exec.record_key(parsed, parsed.store or warm_exec.default_store_root())


def test_words_for_the_record_the_warm_path_would_use(invoked: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    words = ["-v", "--store", "rel/store", "app.pyz", "--", "arg"]
    key = cold_key(words)
    warm_exec.INVOKED = None  # a test or `sandrun dev` calling the launcher
    assert native_record.words_for(key) is None
    warm_exec.INVOKED = words
    assert native_record.words_for(key) == (words[:4], "rel/store")
    # Words the warm path would not serve with this record: none.
    warm_exec.INVOKED = ["--store", "rel/store", "other.pyz"]
    assert native_record.words_for(key) is None
    warm_exec.INVOKED = ["--store", "rel/store", "--dry-run", "app.pyz"]
    assert native_record.words_for(key) is None
    # The store from the environment, as given (not made absolute).
    monkeypatch.setenv("SANDRUN_STORE", "env/store")
    warm_exec.INVOKED = ["app.pyz"]
    assert native_record.words_for(cold_key(["app.pyz"])) == (["app.pyz"], "env/store")


# ---------------------------------------------------------------- the body


BPF = bytes(range(16))  # two sock_filter instructions' worth of bytes, NULs included


def small_spec(**changes: Any) -> runner.RunSpec:
    fields: dict[str, Any] = dict(
        privileged=True, uid=998, gid=997, user_name="sandrun-demo",
        interpreter="/usr/bin/python3", argv=["/usr/bin/python3", "-S", "/tree/app"],
        env={"PATH": "/usr/bin", "LANG": "C.UTF-8"}, env_pass=["TZ"],
        env_set={"MODE": "prod"}, cwd="/var/lib/sandrun/state/demo",
        state_dir="/var/lib/sandrun/state/demo", rlimits=[("core", 0), ("nofile", None)],
        mdwe=True,
        landlock={"abi": 7, "handled_fs": 0xFFFF, "handled_net": 3, "scoped": 1,
                  "restrict_flags": 4,
                  "paths": [("/usr", 0x0F, True, "read"), ("/opt/x", 0x1FFF, False, "rw")],
                  "bind_tcp": [8080], "connect_tcp": [443, 5432]},
        seccomp_bpf=BPF, writable=["/var/lib/sandrun/state/demo"], hostname="sandrun-demo",
        tmp_size=64 * MiB, limits={"memory": 64 * MiB}, app_name="demo")
    fields.update(changes)
    return runner.RunSpec(**fields)


SNAPSHOT = [("", 0o40750, 0, 0, 10, 0), ("site-packages", 0o40555, 0, 4096, 11, 5),
            ("site-packages/\udc80x.py", 0o100444, 0, 3, 13, 7),  # b"\x80": before "é"
            ("site-packages/é.py", 0o100444, 0, 2, 12, 6),
            ("site-packages/a.py", 0o100444, 0, 1, 14, 8)]
NODES = [{"version": 1, "dir": "/sys/fs/cgroup/memory/x", "dev": (0, 35), "delegate": "",
          "required": True,
          "settings": [("memory.limit_in_bytes", "67108864", True, ""),
                       ("memory.memsw.limit_in_bytes", "67108864", True,
                        "+memory.memsw.limit_in_bytes"),
                       ("memory.swappiness", "0", True, "-memory.memsw.limit_in_bytes")]},
         {"version": 2, "dir": "/sys/fs/cgroup/unified/x", "dev": (0, 27), "delegate": "",
          "required": False, "settings": []}]


def encode(spec: runner.RunSpec | None = None, **changes: Any) -> bytes:
    fields: dict[str, Any] = dict(
        key=b"sandrun-native-key\0k\0", boot_id="boot-1", not_after=None,
        supervisor="/venv/sandrun/launch/native/sandrun-supervise",
        inputs=[("app.pyz", False, (1, 2, 0o100644, 0, 0, 10, 11, 12)),
                ("/etc/passwd", True, None)],
        tree_sha="ab" * 32, tree_top_mode=0o750, snapshot=SNAPSHOT,
        spec=small_spec() if spec is None else spec, own_cgroup="0::/user.slice\n",
        nodes=NODES)
    fields.update(changes)
    return native_record.encode(**fields)


def test_the_body_of_a_small_spec_item_by_item() -> None:
    items = netstrings(encode())
    expected = [
        b"sandrun-native-record", b"1", b"sandrun-native-key\0k\0", b"boot-1", b"",
        b"/venv/sandrun/launch/native/sandrun-supervise",
        b"2", b"app.pyz", b"0", b"1", b"1", b"2", b"33188", b"0", b"0", b"10", b"11", b"12",
        b"/etc/passwd", b"1", b"0", *[b"0"] * 8,
        b"ab" * 32, b"488",
        b"5", b"", b"16872", b"0", b"0", b"10", b"0",
        b"site-packages", b"16749", b"0", b"4096", b"11", b"5",
        b"site-packages/a.py", b"33060", b"0", b"1", b"14", b"8",
        b"site-packages/\x80x.py", b"33060", b"0", b"3", b"13", b"7",
        "site-packages/é.py".encode(), b"33060", b"0", b"2", b"12", b"6",
        # the spec
        b"998", b"997", b"sandrun-demo", b"demo", b"/usr/bin/python3",
        b"3", b"/usr/bin/python3", b"-S", b"/tree/app",
        b"2", b"PATH", b"/usr/bin", b"LANG", b"C.UTF-8",
        b"1", b"TZ",
        b"1", b"MODE", b"prod",
        b"/var/lib/sandrun/state/demo", b"/var/lib/sandrun/state/demo",
        b"2", b"%d" % resource.RLIMIT_CORE, b"0", b"%d" % resource.RLIMIT_NOFILE, b"-1",
        b"1", b"sandrun-demo", b"67108864",
        b"1", b"/var/lib/sandrun/state/demo",
        b"1", b"7", b"65535", b"3", b"1", b"4",
        b"2", b"/usr", b"15", b"1", b"read", b"/opt/x", b"8191", b"0", b"rw",
        b"1", b"8080", b"2", b"443", b"5432",
        BPF,
        b"0",  # no failure notes
        # the cgroup plan
        b"0::/user.slice\n", b"2",
        b"1", b"/sys/fs/cgroup/memory/x", b"0", b"35", b"", b"1", b"3",
        b"memory.limit_in_bytes", b"67108864", b"1", b"",
        b"memory.memsw.limit_in_bytes", b"67108864", b"1", b"+memory.memsw.limit_in_bytes",
        b"memory.swappiness", b"0", b"1", b"-memory.memsw.limit_in_bytes",
        b"2", b"/sys/fs/cgroup/unified/x", b"0", b"27", b"", b"0", b"0",
        b"end"]
    assert items == expected


def test_body_variants() -> None:
    items = netstrings(encode(small_spec(landlock=None, rlimits=[], env={}, env_set={}),
                              not_after=1700000000, nodes=[], own_cgroup=""))
    spec_at = items.index(b"998")
    assert items[4] == b"1700000000"
    assert items[spec_at + 5:spec_at + 13] == [b"3", b"/usr/bin/python3", b"-S",
                                                b"/tree/app", b"0", b"1", b"TZ", b"0"]
    # landlock absent: one "0", then the seccomp filter right away; no cgroup nodes
    assert items[-6:] == [b"0", BPF, b"0", b"", b"0", b"end"]
    notes = ["sandrun-demo cannot write /srv/x (root:root 0755) (Unix permissions: no "
             "sandbox record shows this)", "é"]
    items = netstrings(encode(small_spec(failure_notes=notes), nodes=[], own_cgroup=""))
    assert items[-7:] == [BPF, b"2", notes[0].encode(), "é".encode(), b"", b"0", b"end"]
    with pytest.raises(ValueError):
        encode(small_spec(failure_notes=["a\0b"]))


@pytest.mark.parametrize("change", [
    {"spec": small_spec(user_name="a\0b")},
    {"spec": small_spec(env={"A": "x\0y"})},
    {"spec": small_spec(rlimits=[("nosuchlimit", 1)])},
    {"spec": small_spec(privileged=False)},
    {"spec": small_spec(notify_bpf=b"x")},
    {"inputs": [("a\0b", True, None)]},
    {"own_cgroup": "0::/\0"},
])
def test_what_the_format_cannot_carry_is_not_encoded(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode(**change)


def test_too_many_items_is_not_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_record, "MAX_ITEMS", 2)
    with pytest.raises(ValueError, match="more than 2"):
        encode()


# ---------------------------------------------------------------- the cgroup plan


class FakeMount:
    """Directories shaped as cgroupfs shows them to sandrun's survey (read only)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        st = os.stat(tmp)
        self.dev = (os.major(st.st_dev), os.minor(st.st_dev))

    def v2(self, ours: str, controllers: str, *, procs: str = "",
           subtree: str = "") -> cgroup.Hierarchy:
        mount = self.tmp / "unified"
        path = mount / ours.strip("/")
        path.mkdir(parents=True)
        for name, text in (("cgroup.controllers", controllers), ("cgroup.procs", procs),
                           ("cgroup.subtree_control", subtree), ("cgroup.type", "domain")):
            (path / name).write_text(text)
        return cgroup.Hierarchy(2, str(mount), ours, self.dev)

    def v1(self, controllers: tuple[str, ...], ours: str) -> cgroup.Hierarchy:
        mount = self.tmp / ",".join(controllers)
        (mount / ours.strip("/")).mkdir(parents=True)
        return cgroup.Hierarchy(1, str(mount), ours, self.dev, controllers)

    def tree(self) -> list[str]:
        return sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*"))


def own_cgroup() -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        return f.read()


def test_plan_on_a_v2_tree(tmp_path: Path) -> None:
    mounts = FakeMount(tmp_path)
    v2 = mounts.v2("/svc", "cpu io memory pids")
    before = mounts.tree()
    own, nodes = cgroup.native_plan(
        {"memory": 64 * MiB, "tasks": 50, "cpu_quota": 50, "cpu_weight": 300,
         "required": ["tasks"]}, cgroup.Layout(v2, {}))
    assert own == own_cgroup()
    assert nodes == [{
        "version": 2, "dir": f"{tmp_path}/unified/svc", "dev": mounts.dev,
        "delegate": "cpu memory pids", "required": True,
        "settings": [("memory.max", str(64 * MiB), False, ""),
                     ("memory.swap.max", "0", False, "+memory.swap.max"),
                     ("memory.oom.group", "1", False, "+memory.oom.group"),
                     ("pids.max", "50", True, ""),
                     ("cpu.max", "50000 100000", False, ""),
                     ("cpu.weight", "300", False, "")]}]
    assert mounts.tree() == before  # nothing made


def test_plan_on_a_hybrid_layout_adds_the_v2_tracking_node(tmp_path: Path) -> None:
    mounts = FakeMount(tmp_path)
    v2 = mounts.v2("/user.slice", "")
    memory = mounts.v1(("memory",), "/user.slice")
    cpu = mounts.v1(("cpu", "cpuacct"), "/")
    pids = mounts.v1(("pids",), "/user.slice/s")
    layout = cgroup.Layout(v2, {"memory": memory, "cpu": cpu, "pids": pids})
    _, nodes = cgroup.native_plan({"memory": 64 * MiB, "tasks": 9, "cpu_quota": 20,
                                   "cpu_weight": 100, "required": ["memory"]}, layout)
    assert [(n["version"], n["dir"], n["required"], n["delegate"]) for n in nodes] == [
        (1, f"{tmp_path}/memory/user.slice", True, ""),
        (1, f"{tmp_path}/pids/user.slice/s", False, ""),
        (1, f"{tmp_path}/cpu,cpuacct", False, ""),
        (2, f"{tmp_path}/unified/user.slice", False, "")]
    assert nodes[0]["settings"] == [
        ("memory.limit_in_bytes", str(64 * MiB), True, ""),
        ("memory.memsw.limit_in_bytes", str(64 * MiB), True, "+memory.memsw.limit_in_bytes"),
        ("memory.swappiness", "0", True, "-memory.memsw.limit_in_bytes")]
    assert nodes[1]["settings"] == [("pids.max", "9", False, "")]
    assert nodes[2]["settings"] == [("cpu.cfs_period_us", "100000", False, ""),
                                    ("cpu.cfs_quota_us", "20000", False, ""),
                                    ("cpu.shares", "1024", False, "")]
    assert nodes[3]["settings"] == []
    # Without v2: no tracking node. Without limits: no node at all.
    assert len(cgroup.native_plan({"tasks": 9}, cgroup.Layout(None, layout.v1))[1]) == 1
    assert cgroup.native_plan({}, layout) == (own_cgroup(), [])
    assert cgroup.native_plan({"tasks": None}, layout)[1] == []


def test_plan_refuses_as_create_refuses(tmp_path: Path) -> None:
    mounts = FakeMount(tmp_path)
    v2 = mounts.v2("/session", "memory pids", procs="1\n2\n")  # shared: cannot delegate
    layout = cgroup.Layout(v2, {})
    before = mounts.tree()
    with pytest.raises(EnforcementError, match="no-internal-processes") as shared:
        cgroup.native_plan({"memory": MiB, "required": ["memory"]}, layout)
    with pytest.raises(EnforcementError) as created:
        cgroup.create("demo-1", {"memory": MiB, "required": ["memory"]}, layout)
    assert str(shared.value) == str(created.value)
    with pytest.raises(EnforcementError, match="no pids controller"):
        cgroup.native_plan({"tasks": 5, "required": ["tasks"]}, cgroup.Layout(None, {}))
    with pytest.raises(EnforcementError, match="invalid memory limit"):
        cgroup.native_plan({"memory": -1}, layout)
    # Not required: skipped, as create() skips it.
    assert cgroup.native_plan({"memory": MiB}, layout)[1] == []
    assert mounts.tree() == before


def test_plan_matches_what_create_makes_here(require_root: None) -> None:
    """On this machine's real hierarchies: the same nodes, the same files and values."""
    limits = {"memory": 96 * MiB, "tasks": 40, "cpu_weight": 200, "required": ["tasks"]}
    _, nodes = cgroup.native_plan(limits)
    made = cgroup.create(f"native-plan-{os.getpid()}", limits)
    try:
        dirs = sorted(made.dirs.values())
        assert dirs == sorted(f"{n['dir'].rstrip('/')}/sandrun/{made.name}" for n in nodes)
        for node in nodes:
            where = Path(node["dir"]) / "sandrun" / made.name
            assert os.stat(node["dir"]).st_dev == os.makedev(*node["dev"])
            for file, value, _required, when in node["settings"]:
                present = (where / when[1:]).exists()
                if when and present != (when[0] == "+"):
                    continue
                text = (where / file).read_text().split()
                assert text[:len(value.split())] == value.split() or \
                    (file == "memory.swappiness" and text == ["0"]), (file, value, text)
    finally:
        made.remove()


def test_front_status_names_the_program(tmp_path: Path) -> None:
    elf = tmp_path / "elf"
    elf.write_bytes(b"\x7fELF\x02\x01\x01")
    script = tmp_path / "script"
    script.write_text("#!python\n")
    assert native_record.front_status(str(elf)) == (True, f"native ({elf})")
    native, why = native_record.front_status(str(script))
    assert not native and "Python entry script" in why and str(script) in why
    native, why = native_record.front_status(str(tmp_path / "missing"))
    assert not native and os.strerror(errno.ENOENT) in why


def test_tree_of_a_record() -> None:
    data = encode()
    assert native_record.tree_of(data) == "ab" * 32
    for broken in (b"", data[:40], b"x" + data, data.replace(b"21:sandrun", b"21:sandrux"),
                   b"1:x,", b"-1:,"):
        assert native_record.tree_of(broken) is None, broken


def test_the_cold_path_execs_only_a_trusted_front(require_root: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """cli_exec.hand_to_front runs what trusted_front() opens: the `sandrun` next to the
    entry script, an ELF of root's nobody else may write, in root's directories; every
    other case is None (Python launches itself)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sandrun-front-trust-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        bin_dir = base / "bin"
        bin_dir.mkdir(mode=0o755)
        front = bin_dir / "sandrun"
        shutil.copyfile("/bin/true", front)
        front.chmod(0o755)
        monkeypatch.setattr("sys.argv", [str(bin_dir / "sandrun-py")])
        assert native_record.front_path() == str(front)

        def opened() -> bool:
            fd = native_record.trusted_front()
            if fd is None:
                return False
            assert os.path.samestat(os.fstat(fd), front.stat())
            os.close(fd)
            return True

        assert opened()
        front.chmod(0o775)  # group-writable
        assert not opened()
        front.chmod(0o755)
        os.chown(front, 65534, -1)  # not root's
        assert not opened()
        os.chown(front, 0, -1)
        bin_dir.chmod(0o777)  # a directory others can write
        assert not opened()
        bin_dir.chmod(0o755)
        front.unlink()
        front.symlink_to("/bin/true")  # a link, even to root's program
        assert not opened()
        front.unlink()
        front.write_text("#!/bin/sh\nexit 0\n")  # the Python entry script (no gcc)
        front.chmod(0o755)
        assert not opened()
        front.unlink()
        assert not opened()  # missing
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_no_front_is_execd_but_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert native_record.trusted_front() is None


def test_the_cold_marker_is_front_c_s() -> None:
    source = (FRONT_H.parent / "front.c").read_text()
    assert f'#define COLD_ENV "{native_record.COLD_ENV}"' in source
    assert f'#define BYTECODE_PENDING_SUFFIX "{warm_exec.BYTECODE_PENDING_SUFFIX}"' in source


def test_no_record_for_a_store_the_front_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store given with a '..' component: the front refuses it (has_dotdot), so no
    native record is written for it (each cold start would hand over and fall back)."""
    monkeypatch.setattr(native_record, "words_for",
                        lambda key: (["app.pyz"], "/var/lib/x/../sandrun"))
    assert native_record.save(-1, ("key",), [], "/tree", None) is None  # type: ignore[arg-type]
