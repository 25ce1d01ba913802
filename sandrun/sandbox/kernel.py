"""The kernel interface of the sandbox: constants, raw syscalls, and the calls that apply
Landlock and seccomp, plus the path walk root uses for everything it opens on the app's
behalf.

One definition of every number (linux/prctl.h, sched.h, mount.h, landlock.h, seccomp.h)
for the whole package. The warm exec path imports this module, so it imports only what
loads in microseconds (os, errno, stat, the C core of ctypes): no typing, dataclasses, re,
nor the ctypes package itself (see below).
"""

from __future__ import annotations

import errno
import os
import stat

from sandrun.errors import EnforcementError

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from ctypes import (
        CDLL,
        Array,
        Structure,
        c_char,
        c_int,
        c_int32,
        c_long,
        c_uint64,
        c_ulong,
        c_ushort,
        c_void_p,
        get_errno,
        set_errno,
    )
    from ctypes import addressof as addressof  # for runner.py too
    from ctypes import sizeof as sizeof
    from typing import Any
else:
    # The few ctypes names used here and on the launch path, made from its C core
    # (_ctypes) as ctypes/__init__.py makes them: importing the ctypes package (its ~40
    # types, struct, types, _endian) costs ~1.5 ms more CPU on every warm start. Type
    # checkers see ctypes' own; tests/launch/test_warm_exec.py compares the two.
    from _ctypes import (
        FUNCFLAG_CDECL,
        FUNCFLAG_USE_ERRNO,
        CFuncPtr,
        Structure,
        _SimpleCData,
        dlopen,
        get_errno,
        set_errno,
    )
    from _ctypes import addressof as addressof  # for runner.py too
    from _ctypes import sizeof as sizeof

    class c_int(_SimpleCData):
        _type_ = "i"

    class c_long(_SimpleCData):
        _type_ = "l"

    class c_ulong(_SimpleCData):
        _type_ = "L"

    class c_ushort(_SimpleCData):
        _type_ = "H"

    class c_uint64(_SimpleCData):
        _type_ = "Q"  # unsigned long long: 64 bits wherever Linux runs

    class c_void_p(_SimpleCData):
        _type_ = "P"

    class c_char(_SimpleCData):
        _type_ = "c"

    c_int32 = c_int

    class CDLL:
        """ctypes.CDLL(None, use_errno=True): the process's C library; each function
        returns a C int unless its restype says otherwise."""

        class _FuncPtr(CFuncPtr):
            _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        def __init__(self, name, use_errno):
            if name is not None or not use_errno:
                raise ValueError("only CDLL(None, use_errno=True)")
            self._handle = dlopen(None)

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            function = self._FuncPtr((name, self))
            setattr(self, name, function)  # one object per name: its restype stays set
            return function


def string_buffer(data: bytes, size: int | None = None) -> Array[c_char]:
    """ctypes.create_string_buffer(data, size): a writable copy of `data` (NUL-ended
    unless `size` leaves no room)."""
    buffer = (c_char * (len(data) + 1 if size is None else size))()
    buffer.value = data  # copies every byte, NULs too
    return buffer


# prctl(2) and unshare(2) constants (linux/prctl.h, linux/sched.h, linux/mount.h).
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 16384, 1 << 18

# The fd-based mount API (Linux 5.2; mount_setattr 5.12): mounts are made on fds from
# open_trusted_path, so no path is resolved twice. Same numbers on every architecture.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 2, 4, 8
NO_EXEC_SUID_DEV = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC

MAX_SYMLINKS = 40  # as the kernel's path walk

# Landlock (uapi/linux/landlock.h). The syscalls share one number on every architecture
# but alpha (added after the syscall tables were unified).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1
# Rights that apply to files (the kernel rejects directory-only rights on a file rule);
# landlock.FS_FILE_RIGHTS spells it out by name (a test keeps the two equal).
FS_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
# Size of landlock_ruleset_attr up to the last field an ABI knows: older kernels reject
# a larger struct unless the extra bytes are zero, so pass only what is filled in.
_RULESET_ATTR_SIZE_FS = 8
_RULESET_ATTR_SIZE_NET = 16
_RULESET_ATTR_SIZE_SCOPED = 24

# seccomp
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 2  # log every action but ALLOW (to audit; Linux >= 4.14)
BPF_MAXINSNS = 4096
# The first instruction of every sandrun filter: load seccomp_data.arch.
BPF_LOAD_ARCH = bytes((0x20, 0, 0, 0, 4, 0, 0, 0))

libc = CDLL(None, use_errno=True)
libc.syscall.restype = c_long
libc.prctl.restype = c_int


class _RulesetAttr(Structure):
    _fields_ = (("handled_access_fs", c_uint64),
                ("handled_access_net", c_uint64),
                ("scoped", c_uint64))


class _PathBeneathAttr(Structure):
    _pack_ = 1  # the uapi struct is __attribute__((packed)): 12 bytes
    _fields_ = (("allowed_access", c_uint64), ("parent_fd", c_int32))


class _NetPortAttr(Structure):
    _fields_ = (("allowed_access", c_uint64), ("port", c_uint64))


class _SockFprog(Structure):
    _fields_ = (("len", c_ushort), ("filter", c_void_p))


class MountAttr(Structure):
    _fields_ = (("attr_set", c_uint64), ("attr_clr", c_uint64),
                ("propagation", c_uint64), ("userns_fd", c_uint64))


def syscall(number: int, *args: int) -> tuple[int, int]:
    """Call a raw syscall; return (result, errno) with errno read right after the call."""
    set_errno(0)
    result = libc.syscall(c_long(number), *(c_long(a) for a in args))
    return int(result), get_errno()


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    set_errno(0)
    return int(libc.prctl(c_int(option), c_ulong(arg2), c_ulong(arg3), c_ulong(arg4),
                          c_ulong(arg5)))


def last_errno() -> int:
    """The errno of the last libc call made through `libc` (ctypes.get_errno)."""
    return int(get_errno())


def errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, f'errno {code}')} ({os.strerror(code)})"


PR_GET_MDWE = 66


def mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux >= 6.3)."""
    return prctl(PR_GET_MDWE) >= 0


# ---------------------------------------------------------------- paths root acts on

PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def open_trusted_path(path: str, *, directory: bool | None = None) -> int:
    """An O_PATH fd of `path`, resolved so that nobody but root can redirect it.

    Walks from / one component at a time. A symbolic link is followed only while every
    directory so far is owned by root and not writable by group or others, and the
    link is root's (a symlinked /etc/resolv.conf works). From the first directory that
    another user or the app owns or can write (sticky or not), no link is followed: one
    there refuses the launch (EnforcementError). `..` is refused in `path` (and accepted
    in a trusted link's target only). `directory` True/False requires a directory /
    anything else. A missing component raises FileNotFoundError or NotADirectoryError.
    """
    if not path.startswith("/"):
        raise EnforcementError(f"{path!r} is not an absolute path",
                               "sandrun resolves only absolute paths (a sandrun bug)")
    todo = [part for part in reversed(path.split("/")) if part not in ("", ".")]
    if ".." in todo:
        raise EnforcementError(f"{path!r} contains '..'", "write the path without '..'")
    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    parents: list[int] = []  # fds of the directories above `current`, for a link's '..'
    walked = [""]  # the path as resolved so far, for messages
    trusted = True
    links = 0
    try:
        st = os.fstat(current)
        while todo:
            name = todo.pop()
            if st.st_uid != 0 or st.st_mode & 0o022:
                trusted = False  # and stays so: what follows is another user's choice
            if name == "..":  # only from a trusted link's target (refused in `path`)
                if not trusted:
                    raise EnforcementError(
                        f"{path!r}: a link's target leads back out of "
                        f"{'/'.join(walked) or '/'!r}, which another user can change",
                        "point the link straight at its target")
                if parents:
                    os.close(current)
                    current = parents.pop()
                    walked.pop()
                    st = os.fstat(current)
                continue
            fd = os.open(name, PATH_FLAGS, dir_fd=current)
            link_st = os.fstat(fd)
            if stat.S_ISLNK(link_st.st_mode):
                where = "/".join([*walked, name])
                try:
                    if not trusted:
                        raise EnforcementError(
                            f"{path!r}: {where} is a symbolic link inside a directory the "
                            "app or another user can write: sandrun does not follow it; "
                            "remove it",
                            f"replace {where} by the real directory or file (sandrun follows "
                            "links only in root-owned directories nobody else can write)")
                    if link_st.st_uid != 0:
                        raise EnforcementError(
                            f"{path!r}: {where} is a symbolic link owned by uid "
                            f"{link_st.st_uid}: sandrun does not follow it; remove it",
                            "sandrun follows only root's links in root's directories")
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                todo.extend(part for part in reversed(target.split("/"))
                            if part not in ("", "."))
                if target.startswith("/"):
                    for old in (current, *parents):
                        os.close(old)
                    parents = []
                    current = -1
                    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    walked = [""]
                    st = os.fstat(current)
                continue
            parents.append(current)
            current, st = fd, link_st
            walked.append(name)
        if directory is True and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if directory is False and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        result, current = current, -1
        return result
    finally:
        for fd in (current, *parents):
            if fd >= 0:
                os.close(fd)


# ---------------------------------------------------------------- Landlock (kernel side)


def _landlock_error(what: str, err: int, meanings: dict[int, str], hint: str
                    ) -> EnforcementError:
    return EnforcementError(f"{what}: {errno_text(err)}: {meanings.get(err, 'unexpected error')}",
                            hint)


def build_ruleset(spec: dict[str, Any]) -> int:
    """Create the ruleset of a `landlock.ruleset_spec` and add its rules; return its fd.

    Runs as root (privileged: in the namespace's init, after the private mounts, so
    each path is what the app will see): it opens the paths, which the app user may not
    be able to open, with open_trusted_path. A missing required path refuses the
    launch; a missing optional one is skipped.
    """
    attr = _RulesetAttr(handled_access_fs=spec["handled_fs"],
                        handled_access_net=spec["handled_net"], scoped=spec["scoped"])
    size = (_RULESET_ATTR_SIZE_SCOPED if spec["scoped"] else
            _RULESET_ATTR_SIZE_NET if spec["handled_net"] else _RULESET_ATTR_SIZE_FS)
    ruleset_fd, err = syscall(SYS_LANDLOCK_CREATE_RULESET, addressof(attr), size, 0)
    if ruleset_fd < 0:
        raise _landlock_error("cannot create the Landlock ruleset", err, {
            errno.EOPNOTSUPP: "Landlock is supported by the kernel but disabled at boot",
            errno.ENOSYS: "the kernel has no Landlock",
            errno.EINVAL: "a handled right or scope is unknown to this kernel",
            errno.E2BIG: "the attribute struct is larger than this kernel knows",
            errno.ENOMSG: "the ruleset handles nothing",
            errno.EMFILE: "too many open files",
        }, "check that the kernel enables Landlock (lsm=...,landlock)")
    try:
        for path, rights, required, label in spec["paths"]:
            path_fd = _open_rule_path(path, required, label)
            if path_fd is None:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
                    # The kernel rejects directory rights on files and devices (EINVAL).
                    rights &= FS_FILE_RIGHTS
                if rights:
                    _add_rule(ruleset_fd, LANDLOCK_RULE_PATH_BENEATH,
                              _PathBeneathAttr(allowed_access=rights, parent_fd=path_fd),
                              f"{path!r} ({label})")
            finally:
                os.close(path_fd)
        if spec["handled_net"]:
            for right, verb, ports in ((ACCESS_NET_BIND_TCP, "bind", spec["bind_tcp"]),
                                       (ACCESS_NET_CONNECT_TCP, "connect", spec["connect_tcp"])):
                for port in ports:
                    _add_rule(ruleset_fd, LANDLOCK_RULE_NET_PORT,
                              _NetPortAttr(allowed_access=right, port=port),
                              f"TCP {verb} port {port}")
    except BaseException:
        os.close(ruleset_fd)
        raise
    return ruleset_fd


def _open_rule_path(path: str, required: bool, label: str) -> int | None:
    """O_PATH fd of a rule's path (open_trusted_path), or None for an absent optional."""
    try:
        return open_trusted_path(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not required:
            return None
        raise EnforcementError(f"required path {path!r} ({label}) does not exist",
                               "create it, or remove it from the profile's [filesystem] "
                               "lists") from exc
    except OSError as exc:
        raise EnforcementError(f"cannot open {path!r} for a Landlock rule: "
                               f"{errno_text(exc.errno or 0)}",
                               "check the path and its parent directories") from exc


def _add_rule(ruleset_fd: int, rule_type: int, attr: Structure, what: str) -> None:
    result, err = syscall(SYS_LANDLOCK_ADD_RULE, ruleset_fd, rule_type, addressof(attr), 0)
    if result != 0:
        raise _landlock_error(f"cannot add the Landlock rule for {what}", err, {
            errno.EINVAL: "rights not handled by the ruleset or not applicable to this "
                          "file type",
            errno.ENOMSG: "the rule grants no right",
            errno.EBADF: "the ruleset or path fd is not open",
            errno.EBADFD: "the ruleset fd is not a ruleset, or the path fd is not "
                          "O_PATH-opened",
            errno.EPERM: "the ruleset fd was not opened for writing",
            errno.EFAULT: "bad rule address (a bug in sandrun)",
        }, "report this as a sandrun bug, with the profile and kernel version")


def restrict_self(ruleset_fd: int, flags: int) -> None:
    """Enforce a ruleset on the calling thread, then close its fd.

    no_new_privs must already be set: this refuses without it (root with
    CAP_SYS_ADMIN could otherwise skip it by mistake).
    """
    if ruleset_fd < 0:
        return  # Landlock absent and accepted (min_abi 0); the plan already says so
    try:
        if prctl(PR_GET_NO_NEW_PRIVS) != 1:
            raise EnforcementError(
                "no_new_privs is not set: refusing to enforce Landlock",
                "call prctl(PR_SET_NO_NEW_PRIVS, 1) after dropping privileges (a sandrun bug)")
        result, err = syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, flags)
        if result != 0:
            raise _landlock_error("cannot enforce the Landlock ruleset", err, {
                errno.EPERM: "no_new_privs is not set and the caller lacks CAP_SYS_ADMIN",
                errno.E2BIG: "the process already has 16 nested Landlock domains",
                errno.EBADF: "the ruleset fd was closed before restrict_self",
                errno.EBADFD: "the fd is not a Landlock ruleset",
                errno.EINVAL: "unknown restrict_self flags for this kernel",
                errno.EOPNOTSUPP: "Landlock is disabled",
            }, "report this as a sandrun bug, with the profile and kernel version")
    finally:
        try:
            os.close(ruleset_fd)
        except OSError:  # never hide the real error behind EBADF
            pass


# ---------------------------------------------------------------- seccomp (kernel side)


# Flags of every seccomp filter this process (and the children it forks) loads. 0, or
# SECCOMP_FILTER_FLAG_LOG set by `sandrun exec --explain` (sandrun/launch/explain.py) for
# its one cold launch: the denials of that run then reach the audit multicast group. Not
# on by default: the kernel logs flagged denials even with audit disabled (to the kernel
# log, rate-limited), and glibc's clone3 probe would log one per thread created. The
# filter's bytes, and so the warm records, are the same either way.
seccomp_load_flags = 0


def load_seccomp_filter(bpf: bytes) -> None:
    """Install `bpf` on the calling thread with seccomp(SECCOMP_SET_MODE_FILTER).

    no_new_privs must already be set. Flags: `seccomp_load_flags` (no TSYNC: the child
    is single-threaded at this point).
    """
    count, rest = divmod(len(bpf), 8)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise EnforcementError(
            f"not a seccomp BPF program: {len(bpf)} bytes (need 1..{BPF_MAXINSNS} "
            "instructions of 8 bytes)", "recompile the filter with compile_filter()")
    if bpf[:8] != BPF_LOAD_ARCH:
        raise EnforcementError("refusing a seccomp program that does not check the "
                               "architecture first", "recompile the filter with compile_filter()")
    if prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise EnforcementError(
            "no_new_privs is not set: refusing to load the seccomp filter",
            "call prctl(PR_SET_NO_NEW_PRIVS, 1) first (the launch order sets it before "
            "Landlock and seccomp)")
    program = string_buffer(bpf, len(bpf))
    fprog = _SockFprog(count, addressof(program))
    result, code = syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, seccomp_load_flags,
                           addressof(fprog))
    if result != 0:
        hints = {
            errno.EINVAL: "the kernel rejected the BPF program or a flag; recompile it"
                          + (" (or drop --explain: SECCOMP_FILTER_FLAG_LOG needs Linux >= "
                             "4.14)" if seccomp_load_flags else ""),
            errno.EACCES: "set no_new_privs first",
            errno.ENOSYS: "the kernel has no seccomp() (CONFIG_SECCOMP_FILTER)",
            errno.ENOMEM: "too many filters are already stacked on this process",
        }
        raise EnforcementError(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {errno_text(code)}",
                               hints.get(code, "check the kernel's seccomp support"))
