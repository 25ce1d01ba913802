"""Shared fixtures (the helpers themselves are in tests/helpers.py).

Tests that prove enforcement need root, Landlock and seccomp. Outside CI they
skip when those are missing; with CI=true they fail, so a green CI run always
means the kernel really enforced what the tests claim.

Every sandrun-* user or group that appears during the session is removed at its end;
ones that existed before are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import (
    IN_CI,
    app_accounts,
    need,
    other_test_sessions,
    remove_app_accounts_made_since,
    wait_for_background_compiles,
)

__all__ = ["IN_CI", "need"]  # older tests import them from here


@pytest.fixture(scope="session")
def require_root() -> None:
    need(os.geteuid() == 0, "this test needs root")


@pytest.fixture(scope="session")
def require_landlock() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    need(abi >= 1, "Landlock is not available on this kernel")
    return int(abi)


@pytest.fixture(scope="session")
def require_seccomp() -> None:
    need(os.path.exists("/proc/sys/kernel/seccomp/actions_avail"), "seccomp is not available")


# What the session's user cleanup did, for the terminal summary (fixture teardown output
# is captured).
_user_cleanup_notes: list[tuple[str, str]] = []


@pytest.fixture(scope="session", autouse=True)
def no_app_users_left() -> Iterator[None]:
    """Remove, at the end of the session, the sandrun-* users and groups made during it
    (launches create `sandrun-<app>`; some tests useradd). Module fixtures remove their
    own; this catches the rest. Skipped, with a note, while another pytest session runs
    on the machine: its users may still be in use."""
    if os.geteuid() != 0:
        yield
        return
    users, groups = app_accounts()
    yield
    others = other_test_sessions()
    if others:
        now_users, now_groups = app_accounts()
        left = sorted((now_users - users) | (now_groups - groups))
        if left:
            _user_cleanup_notes.append(
                ("yellow", f"left sandrun-* users/groups made during this session, as other "
                           f"test sessions run (pids {others}): {', '.join(left)}"))
        return
    removed, failures = remove_app_accounts_made_since(users, groups)
    if removed:
        _user_cleanup_notes.append(("", f"removed sandrun-* users/groups that tests left: "
                                        f"{', '.join(removed)}"))
    _user_cleanup_notes.extend(("red", f"could not remove {failure}") for failure in failures)


@pytest.fixture(autouse=True)
def no_background_compile_left() -> Iterator[None]:
    """After each test, wait for the bytecode compiles its cold starts left running
    (they outlive `sandrun exec` by design): the next test, and this module's teardown
    removing its store, must not race them."""
    yield
    wait_for_background_compiles()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for color, note in _user_cleanup_notes:
        terminalreporter.write_line(note, **({color: True} if color else {}))
