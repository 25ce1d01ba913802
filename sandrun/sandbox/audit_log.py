"""Kernel audit records, read as root over NETLINK_AUDIT without auditd.

`sandrun exec --explain` (launch/explain.py) lists a run's denials from them: Landlock
ABI 7 logs its denials to audit (records 1423 and 1424), seccomp those of a filter loaded
with SECCOMP_FILTER_FLAG_LOG (1326). Landlock logs only while kernel audit is enabled,
and it is disabled by default, so a `Capture`:

- reads the audit status (AUDIT_GET). If an audit daemon is registered, it changes
  nothing and only listens (and hears nothing if that daemon keeps audit disabled);
- otherwise enables audit for the run if it is off (AUDIT_SET enabled=1), and turns it
  off again when the last capture that needed it ends. Captures of concurrent launches
  register in /run/sandrun/audit-captures; one that died is pruned by the next, which
  then restores. Audit enabled by someone else is never disabled;
- listens on the multicast group AUDIT_NLGRP_READLOG, where the kernel copies every
  record whoever else receives it, from a thread that asks the caller, while the
  process is still there, whether each record's pid belongs to the sandbox;
- at the end, logs one user message ("sandrun: end of an explained run") and stops
  when it arrives: the queue is delivered in order, so every record of the run is in.

While audit is enabled without a daemon the kernel also prints each record to its log
(rate-limited), and every process forked from then on, on the whole host, gets an audit
context (its syscalls take the audited path until reboot, even after audit is disabled
again): that is the price of an explained run, and why capture is opt-in.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable

NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_STATUS_ENABLED = 0x0001
AUDIT_NLGRP_READLOG = 1  # multicast group of every record (needs CAP_AUDIT_READ)
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
SO_RCVBUFFORCE = 33  # root may go beyond net.core.rmem_max

# Record types (uapi/linux/audit.h).
AUDIT_SYSCALL = 1300
AUDIT_EOE = 1320
AUDIT_SECCOMP = 1326
AUDIT_LANDLOCK_ACCESS = 1423
AUDIT_LANDLOCK_DOMAIN = 1424
AUDIT_TRUSTED_APP = 1121  # a user-space message: the end-of-run barrier below
WANTED = frozenset({AUDIT_SYSCALL, AUDIT_SECCOMP, AUDIT_LANDLOCK_ACCESS,
                    AUDIT_LANDLOCK_DOMAIN})

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_STATUS = struct.Struct("=11I")  # struct audit_status, as far as Linux 5.16
STATE_DIR = "/run/sandrun"
CAPTURES_FILE = "audit-captures"
RECEIVE_BUFFER = 8 << 20  # bytes: records of a burst of denials wait here for the thread
MAX_RECORDS = 20_000  # kept per capture; more are counted, not kept


class AuditUnavailable(Exception):
    """Why the run's records cannot be read (the message says it for the user)."""


class AuditStatus:
    """struct audit_status: `enabled` 0 off, 1 on, 2 on and locked; `pid` of the
    registered audit daemon (0: none); `lost` records the kernel dropped since boot."""

    __slots__ = ("backlog", "backlog_limit", "enabled", "failure", "lost", "pid",
                 "rate_limit")

    def __init__(self, data: bytes) -> None:
        fields = _STATUS.unpack_from(data.ljust(_STATUS.size, b"\0"))
        (_mask, self.enabled, self.failure, self.pid, self.rate_limit, self.backlog_limit,
         self.lost, self.backlog) = fields[:8]


def _message(kind: int, payload: bytes, flags: int, seq: int) -> bytes:
    return _HEADER.pack(_HEADER.size + len(payload), kind, flags, seq, 0) + payload


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one datagram."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        found.append((kind, data[offset + _HEADER.size:offset + length]))
        offset += (length + 3) & ~3
    return found


class Control:
    """The audit control socket (unicast to the kernel): AUDIT_GET and AUDIT_SET."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_AUDIT)
        self.sock.settimeout(2.0)
        self.seq = 0
        try:
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def _request(self, kind: int, payload: bytes, ack: bool) -> list[tuple[int, bytes]]:
        self.seq += 1
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.send(_message(kind, payload, flags, self.seq))
        return _messages(self.sock.recv(65536))

    def status(self) -> AuditStatus:
        for kind, payload in self._request(AUDIT_GET, b"", ack=False):
            if kind == AUDIT_GET:
                return AuditStatus(payload)
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                raise OSError(code, os.strerror(code))
        raise OSError(errno.EPROTO, "no audit status in the kernel's answer")

    def send_user_message(self, kind: int, text: bytes) -> None:
        """Log a user-space message (CAP_AUDIT_WRITE; dropped while audit is off)."""
        for answer_kind, answer in self._request(kind, text + b"\0", ack=True):
            if answer_kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", answer)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                return

    def set_enabled(self, value: int) -> None:
        payload = _STATUS.pack(AUDIT_STATUS_ENABLED, value, *([0] * 9))
        for kind, answer in self._request(AUDIT_SET, payload, ack=True):
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", answer)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                return


def read_status() -> AuditStatus:
    """The kernel's audit status (root: CAP_AUDIT_CONTROL); OSError when unreadable."""
    control = Control()
    try:
        return control.status()
    finally:
        control.close()


# ---------------------------------------------------------------- records


class Record:
    """One audit record: its type, the event's serial (records of one event share it),
    and its fields as the kernel wrote them (values still quoted or hex-encoded)."""

    __slots__ = ("fields", "kind", "serial", "text")

    def __init__(self, kind: int, text: str) -> None:
        self.kind = kind
        self.text = text
        head, _, body = text.partition("): ")
        self.serial = head.rpartition(":")[2] if head.startswith("audit(") else ""
        self.fields = parse_fields(body)

    def __repr__(self) -> str:
        return f"Record({self.kind}, {self.text!r})"

    def number(self, name: str, base: int = 10) -> int | None:
        value = self.fields.get(name)
        try:
            return int(value, base) if value is not None else None
        except ValueError:
            return None

    def untrusted(self, name: str) -> str | None:
        """A string field the kernel logged as untrusted (path, comm, exe): quoted when
        plain, hex when it holds a quote, space, control or non-ASCII byte."""
        value = self.fields.get(name)
        if value is None:
            return None
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        try:
            return bytes.fromhex(value).decode("utf-8", "surrogateescape")
        except ValueError:
            return value  # "(null)", "?" and other markers


def parse_fields(body: str) -> dict[str, str]:
    """key=value pairs of a record body; a value is "quoted", 'quoted' or a word."""
    fields: dict[str, str] = {}
    i, size = 0, len(body)
    while i < size:
        while i < size and body[i] == " ":
            i += 1
        eq = body.find("=", i)
        if eq < 0:
            break
        key = body[i:eq]
        i = eq + 1
        if i < size and body[i] in "\"'":
            end = body.find(body[i], i + 1)
            end = size - 1 if end < 0 else end
            value = body[i:end + 1]
            i = end + 1
        else:
            end = body.find(" ", i)
            end = size if end < 0 else end
            value = body[i:end]
            i = end
        if key and " " not in key:
            fields.setdefault(key, value)
    return fields


# ---------------------------------------------------------------- who enabled audit


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): tells a pid apart from a
    later process that reuses it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


class _Registry:
    """/run/sandrun/audit-captures, under flock: whether sandrun enabled audit, and the
    captures (pid, start time) that rely on it. Root's file in root's 0700 directory,
    never reached through a link."""

    def __init__(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(STATE_DIR, 0o700)
        dir_fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        try:
            st = os.fstat(dir_fd)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise AuditUnavailable(f"{STATE_DIR} is not root's alone (owner uid "
                                       f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
            self.fd = os.open(CAPTURES_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1:
            os.close(self.fd)
            raise AuditUnavailable(f"{STATE_DIR}/{CAPTURES_FILE} is not a file of root's")

    def __enter__(self) -> _Registry:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock

    def read(self) -> tuple[bool, dict[int, str]]:
        """(sandrun enabled audit, the live captures: pid -> start time)."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        lines = os.read(self.fd, 1 << 16).decode("ascii", "replace").splitlines()
        enabled_by_us = bool(lines) and lines[0] == "enabled-by-sandrun=1"
        holders: dict[int, str] = {}
        for line in lines[1:]:
            pid, _, started = line.partition(" ")
            if pid.isdigit() and _start_time(int(pid)) == started:
                holders[int(pid)] = started
        return enabled_by_us, holders

    def write(self, enabled_by_us: bool, holders: dict[int, str]) -> None:
        text = f"enabled-by-sandrun={int(enabled_by_us)}\n" + "".join(
            f"{pid} {started}\n" for pid, started in sorted(holders.items()))
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, text.encode("ascii"))


# ---------------------------------------------------------------- the capture


class CaptureResult:
    """What a capture saw: the records kept (types in WANTED, in arrival order),
    `owned`: pid -> True (the sandbox's), False (not), None (gone before it could be
    asked), and what may be missing."""

    __slots__ = ("dropped", "lost", "notes", "owned", "records")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.owned: dict[int, bool | None] = {}
        self.lost = 0  # the kernel's count of records it dropped meanwhile
        self.dropped = 0  # records our socket or MAX_RECORDS had no room for
        self.notes: list[str] = []


class Capture:
    """Read the audit records of one run (see the module doc). `owns(pid)` runs in the
    reader thread as each record arrives: True if the process is the sandbox's, False if
    not, None if it is already gone."""

    def __init__(self, owns: Callable[[int], bool | None]) -> None:
        self.owns = owns
        self.result = CaptureResult()
        self.restore = False  # this capture registered itself (release it at the end)
        self.status: AuditStatus | None = None
        self.sock: socket.socket | None = None
        self.wake_r = self.wake_w = -1
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.last_kept = 0.0  # monotonic time of the last record kept
        self.open_domains: set[str] = set()  # allocated by the sandbox, not yet freed
        self.barrier = b""  # the end-of-run message stop() sends
        self.barrier_seen = threading.Event()

    # -- start and stop, in the launching thread

    def start(self) -> None:
        """Make audit records flow and listen; AuditUnavailable says why not."""
        if os.geteuid() != 0:
            raise AuditUnavailable("reading kernel audit records needs root")
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW
                                      | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            self.sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
            self._enable()
        except OSError as exc:
            self.close()
            raise AuditUnavailable(f"the kernel's audit interface refused: "
                                   f"{exc.strerror or exc}") from None
        except AuditUnavailable:
            self.close()
            raise
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._read_loop, name="sandrun-audit",
                                       daemon=True)
        # The thread takes no signal: the launcher waits for them with sigwaitinfo, and
        # one delivered to this thread would be lost to it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _enable(self) -> None:
        control = Control()
        try:
            with _Registry() as registry:
                enabled_by_us, holders = registry.read()
                status = control.status()
                self.status = status
                if status.pid:
                    if not status.enabled:
                        raise AuditUnavailable(
                            f"an audit daemon (pid {status.pid}) keeps kernel audit "
                            "disabled; sandrun does not change its settings")
                    return  # listen only: the daemon's settings are its own
                if not status.enabled:
                    control.set_enabled(1)
                    enabled_by_us = True
                    self.result.notes.append(
                        "kernel audit was enabled for this run (sandrun disables it again "
                        "once no explained run needs it)")
                if enabled_by_us:
                    holders[os.getpid()] = _start_time(os.getpid()) or "?"
                    self.restore = True
                registry.write(enabled_by_us, holders)
        finally:
            control.close()

    def _release(self) -> None:
        """Unregister; the last capture turns audit off again if sandrun turned it on
        and no audit daemon took over meanwhile."""
        if not self.restore:
            return
        self.restore = False
        control = Control()
        try:
            with _Registry() as registry:
                enabled_by_us, holders = registry.read()
                holders.pop(os.getpid(), None)
                if enabled_by_us and not holders:
                    status = control.status()
                    if status.pid == 0 and status.enabled == 1:
                        control.set_enabled(0)
                    enabled_by_us = False
                registry.write(enabled_by_us, holders)
        finally:
            control.close()

    def stop(self, *, limit: float = 1.0) -> CaptureResult:
        """Wait until every record of the run has arrived, stop listening, restore audit,
        return what was seen.

        Call it once the sandbox's processes are gone: each logged its records before
        returning from the syscall, so they are all in the kernel's audit queue, which
        is delivered in order. A message sent to that queue now (AUDIT_TRUSTED_APP: one
        line in the audit log) arrives after them. Should it never come (a user filter
        rule drops it), wait instead until every Landlock domain of the sandbox is freed
        (its last record) and nothing came for a moment; `limit` seconds at most.
        """
        started = time.monotonic()
        if self.thread is not None:
            if not (self._send_barrier() and self.barrier_seen.wait(limit / 2)):
                self._wait_for_silence(started, limit)
            os.write(self.wake_w, b"x")
            self.thread.join(2.0)
        try:
            if self.status is not None:
                with contextlib.suppress(OSError):
                    self.result.lost = max(0, read_status().lost - self.status.lost)
        finally:
            self.close()
        return self.result

    def _send_barrier(self) -> bool:
        self.barrier = (f"sandrun: end of an explained run ({os.getpid()}-"
                        f"{time.time_ns()})").encode()
        try:
            control = Control()
            try:
                control.send_user_message(AUDIT_TRUSTED_APP, self.barrier)
            finally:
                control.close()
        except OSError:
            return False
        return True

    def _wait_for_silence(self, started: float, limit: float) -> None:
        while time.monotonic() - started < limit:
            with self.lock:
                waiting = bool(self.open_domains)
                quiet = time.monotonic() - max(self.last_kept, started) >= 0.05
            if quiet and not waiting:
                return
            time.sleep(0.005)
        self.result.notes.append("some records may have arrived after sandrun stopped "
                                 "listening")

    def close(self) -> None:
        """Release audit and every resource (idempotent; stop() calls it)."""
        try:
            self._release()
        except (OSError, AuditUnavailable) as exc:
            self.result.notes.append(f"could not restore the audit setting: {exc}")
        finally:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            for fd in (self.wake_r, self.wake_w):
                if fd >= 0:
                    os.close(fd)
            self.wake_r = self.wake_w = -1

    # -- the reader thread

    def _read_loop(self) -> None:
        assert self.sock is not None
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        kept_serials: set[str] = set()
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self.wake_r in ready:
                self._drain(kept_serials)
                return
            self._receive(kept_serials)

    def _drain(self, kept_serials: set[str]) -> None:
        while self._receive(kept_serials):
            pass

    def _receive(self, kept_serials: set[str]) -> bool:
        """Take one waiting datagram; False when none was waiting."""
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the socket overflowed: records were lost
                self.result.dropped += 1
                return True
            return False
        for kind, payload in _messages(data):
            if kind == AUDIT_TRUSTED_APP and self.barrier and self.barrier in payload:
                self.barrier_seen.set()
            elif kind in WANTED:
                self._keep(Record(kind, payload.rstrip(b"\0").decode("utf-8", "replace")),
                           kept_serials)
        return True

    def _keep(self, record: Record, kept_serials: set[str]) -> None:
        # A SYSCALL record matters only as the companion of a Landlock one (same event).
        if record.kind == AUDIT_SYSCALL and record.serial not in kept_serials:
            return
        kept_serials.add(record.serial)
        pid = record.number("pid")
        result = self.result
        if pid is not None and pid not in result.owned:
            try:
                result.owned[pid] = self.owns(pid)
            except Exception:  # a question that fails answers "unknown", never kills us
                result.owned[pid] = None
        with self.lock:
            if len(result.records) >= MAX_RECORDS:
                result.dropped += 1
                return
            result.records.append(record)
            self.last_kept = time.monotonic()
            if record.kind == AUDIT_LANDLOCK_DOMAIN:
                domain = record.fields.get("domain", "")
                if record.fields.get("status") == "allocated":
                    if pid is not None and result.owned.get(pid) is not False:
                        self.open_domains.add(domain)
                elif record.fields.get("status") == "deallocated":
                    self.open_domains.discard(domain)
