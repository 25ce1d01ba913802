"""The warm exec path: a launch record is used only while every input is unchanged.

Each test changes one input the cold path depends on and checks that the record is
no longer accepted (so the cold path re-checks everything), then that the app still
runs — or is refused for the right reason. Run on the real kernel as root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, run_sandrun, users_removed_after
from wheelcraft import make_wheel

from sandrun.dev import quick
from sandrun.launch import runner, warm_exec
from sandrun.sandbox import kernel

APP = '''\
import os, sys

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    print("hi", os.getuid(), sys.argv[1:], os.environ.get("TZ")); return 0
'''


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    with users_removed_after("sandrun-warmapp"):
        yield


@pytest.fixture
def world(require_root: None, require_landlock: int, require_seccomp: None
          ) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-warm-", dir="/var/lib"))
    base.chmod(0o755)
    make_wheel(base / "wheels", "warmapp", "1.0", {"warmapp.py": APP})
    bundle = base / "warmapp.pyz"
    proc = run_sandrun("bundle", "warmapp", "--no-index", "--find-links", str(base / "wheels"),
                       "-e", "warmapp:main", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    profile = base / "app.toml"
    profile.write_text('extends = "default"\n[process]\nenv = { pass = ["TZ"] }\n')
    yield {"base": base, "bundle": bundle, "store": base / "store", "profile": profile}
    shutil.rmtree(base, ignore_errors=True)


def exec_argv(world: dict[str, Path], *app_args: str) -> list[str]:
    return ["--store", str(world["store"]), "-p", str(world["profile"]),
            str(world["bundle"]), *app_args]


def run_exec(world: dict[str, Path], *app_args: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_sandrun("exec", *exec_argv(world, *app_args), env=env)


def warm_spec(world: dict[str, Path]) -> runner.RunSpec | None:
    args = warm_exec.parse_exec_args(exec_argv(world))
    assert args is not None
    return warm_exec.load_record(args)


def test_record_is_written_and_used(world: dict[str, Path]) -> None:
    assert warm_spec(world) is None
    cold = run_exec(world, "a", "b", env={"TZ": "UTC"})
    assert cold.returncode == 0, cold.stderr
    spec = warm_spec(world)
    assert spec is not None and spec.privileged and spec.uid != 0
    records = list((world["store"] / "launch").iterdir())
    assert records and all(p.stat().st_mode & 0o777 == 0o600 for p in records)
    assert (world["store"] / "launch").stat().st_mode & 0o777 == 0o700
    # Arguments and passed variables are per launch, not cached.
    warm = run_exec(world, "c", env={"TZ": "Europe/Paris"})
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.split(" ", 2)[2].strip() == "['c'] Europe/Paris"


def test_changed_inputs_invalidate_the_record(world: dict[str, Path]) -> None:
    assert run_exec(world).returncode == 0
    assert warm_spec(world) is not None

    def invalidated_then_rewritten(change: object) -> None:
        assert warm_spec(world) is None, f"record still used after: {change}"
        proc = run_exec(world)
        assert proc.returncode == 0, proc.stderr
        assert warm_spec(world) is not None

    time.sleep(0.01)  # distinct ctimes on file systems with coarse timestamps
    world["profile"].write_text(world["profile"].read_text() + "# edited\n")
    invalidated_then_rewritten("profile edited")
    os.utime(world["bundle"])
    invalidated_then_rewritten("bundle touched")
    state = world["store"] / "state" / "warmapp"
    state.chmod(0o750)
    invalidated_then_rewritten("state dir mode")
    assert state.stat().st_mode & 0o777 == 0o700  # the cold path repaired it


def test_changed_tree_is_refused_not_run(world: dict[str, Path]) -> None:
    assert run_exec(world).returncode == 0
    tree = next(p for p in (world["store"] / "apps").iterdir() if p.is_dir())
    target = tree / "site-packages" / "warmapp.py"
    top_mode = tree.stat().st_mode & 0o7777  # 0750: root and the app's group
    for directory in (tree, tree / "site-packages"):
        directory.chmod(0o755)
    target.chmod(0o644)
    target.write_text(target.read_text().replace("hi", "HI"))  # same size
    target.chmod(0o444)
    (tree / "site-packages").chmod(0o555)
    tree.chmod(top_mode)
    assert warm_spec(world) is None
    proc = run_exec(world)
    assert proc.returncode == 125
    assert "warmapp.py: content differs from manifest" in proc.stderr


@pytest.mark.parametrize("tamper", ["group-readable", "foreign-owner", "wrong-key"])
def test_untrustworthy_records_are_ignored(world: dict[str, Path], tamper: str) -> None:
    assert run_exec(world).returncode == 0
    record = next(p for p in (world["store"] / "launch").iterdir()
                  if not p.name.endswith((".tree", ".native")))
    if tamper == "group-readable":
        record.chmod(0o640)
    elif tamper == "foreign-owner":
        os.chown(record, 65534, 65534)
    else:  # a record moved to another key's name is not that key's record
        other = warm_exec.parse_exec_args(["--store", str(world["store"]), "-p", "default",
                                           str(world["bundle"])])
        assert other is not None
        key = warm_exec.record_key(other, str(world["store"]))
        record.rename(warm_exec._record_path(str(world["store"]), key))
        assert warm_exec.load_record(other) is None
        return
    assert warm_spec(world) is None


@pytest.mark.parametrize("argv", [
    ["--dry-run", "app.pyz"], ["--verify", "full", "app.pyz"], ["--verify=full", "app.pyz"],
    ["--help"], ["--audit-db"], ["-x", "app.pyz"], ["--store"], [],
    ["--dryrun", "app.pyz"], ["-pweb", "app.pyz"], ["-v=1", "app.pyz"], ["--json", "app.pyz"],
])
def test_options_the_warm_path_leaves_to_the_cli(argv: list[str]) -> None:
    assert warm_exec.parse_exec_args(argv) is None


def test_option_parsing() -> None:
    args = warm_exec.parse_exec_args(["-p", "web", "--user=svc", "--verify", "cheap", "-v",
                                      "--store", "/s", "app.pyz", "--", "-b", "x"])
    assert args is not None
    assert (args.profile, args.user, args.store, args.verbose, args.bundle, args.args) == \
        ("web", "svc", "/s", True, "app.pyz", ["-b", "x"])
    args = warm_exec.parse_exec_args(["--trust", "t.toml", "--", "-app.pyz", "--", "--"])
    assert args is not None
    assert (args.trust, args.verbose, args.bundle, args.args) == \
        ("t.toml", False, "-app.pyz", ["--"])


def test_verbose_is_served_warm(world: dict[str, Path]) -> None:
    """-v only chooses how errors are reported: the record of the same launch serves it."""
    assert run_exec(world).returncode == 0
    args = warm_exec.parse_exec_args(["-v", *exec_argv(world)])
    assert args is not None and args.verbose
    assert warm_exec.load_record(args) is not None
    proc = run_sandrun("exec", "-v", *exec_argv(world, "x"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 2)[2].strip().startswith("['x']")


def test_warm_path_imports_stay_light() -> None:
    """What every warm start pays for: none of the heavy modules of the cold path."""
    heavy = ["click", "tomllib", "dataclasses", "typing", "pyseccomp", "sandrun.config.profile",
             "sandrun.launch.launcher", "cryptography", "re", "json", "pathlib", "ctypes",
             "types", "struct", "sandrun.dev", "resource", "site"]
    root = str(Path(warm_exec.__file__).parent.parent.parent)  # holds the sandrun package
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            "import sandrun.__main__, sandrun.launch.warm_exec, sandrun.launch.runner; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True, cwd="/")
    assert proc.stdout.strip() == "[]"


def test_dev_quick_path_skips_the_cli(world: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`sandrun dev WORDS` with a quick record goes to the warm launch before click."""
    assert run_exec(world).returncode == 0
    monkeypatch.setenv("SANDRUN_STORE", str(world["store"]))
    monkeypatch.chdir(ROOT)  # where run_sandrun runs it: part of the quick key
    exec_args = warm_exec.ExecArgs()
    exec_args.store, exec_args.profile = str(world["store"]), str(world["profile"])
    exec_args.bundle = str(world["bundle"])
    quick.save(["proj"], str(world["base"]), exec_args, ("recorded",), str(world["store"]))
    env = {**os.environ, "SANDRUN_STORE": str(world["store"]), "TZ": "UTC"}
    for _attempt in range(3):  # another test's useradd changes /etc/passwd: cold again
        proc = subprocess.run([sys.executable, "-P", "-X", "importtime", "-m", "sandrun",
                               "dev", "proj", "--", "x"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120, check=False)
        if " click" not in proc.stderr:
            break
        assert run_exec(world).returncode == 0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 2)[2].strip() == "['recorded', 'x'] UTC"
    assert " click" not in proc.stderr and "sandrun.cli" not in proc.stderr
    # Another project dir (the quick record's inputs) or other words: the CLI decides.
    assert quick.load(["other"]) is None


def test_kernel_ctypes_subset_matches_ctypes() -> None:
    """kernel.py makes its ctypes types from _ctypes (the package costs ~1.5 ms per warm
    start): the same sizes, alignments, layouts and calls as ctypes' own."""
    for name in ("c_int", "c_int32", "c_long", "c_ulong", "c_ushort", "c_uint64", "c_void_p",
                 "c_char"):
        ours, theirs = getattr(kernel, name), getattr(ctypes, name)
        assert ours is not theirs
        assert (ctypes.sizeof(ours), ctypes.alignment(ours)) == \
            (ctypes.sizeof(theirs), ctypes.alignment(theirs)), name

    def layout(struct: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
        return [(field[0], getattr(struct, field[0]).offset, getattr(struct, field[0]).size)
                for field in struct._fields_]

    for struct in (kernel._RulesetAttr, kernel._PathBeneathAttr, kernel._NetPortAttr,
                   kernel._SockFprog, kernel.MountAttr):
        attrs: dict[str, object] = {"_pack_": struct._pack_} if "_pack_" in vars(struct) else {}
        attrs["_fields_"] = [(n, getattr(ctypes, t.__name__)) for n, t in struct._fields_]
        twin = type("Twin", (ctypes.Structure,), attrs)
        assert ctypes.sizeof(struct) == ctypes.sizeof(twin), struct.__name__
        assert layout(struct) == layout(twin), struct.__name__
    assert ctypes.sizeof(kernel._PathBeneathAttr) == 12  # packed, as the uapi struct
    assert kernel.string_buffer(b"a\0b", 3).raw == b"a\0b"
    assert kernel.string_buffer(b"ab").raw == b"ab\0"
    assert kernel.libc.getpid() == os.getpid()
    assert kernel.libc.close(-1) == -1 and kernel.last_errno() == errno.EBADF
    assert kernel.syscall(kernel.SYS_SECCOMP, 99, 0, 0) == (-1, errno.EINVAL)
    assert kernel.prctl(kernel.PR_GET_NO_NEW_PRIVS) in (0, 1)
    assert kernel.libc.syscall is kernel.libc.syscall  # one object: its restype stays
