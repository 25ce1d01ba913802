"""Shared test helpers.

Tests that prove enforcement need root, Landlock and seccomp. Outside CI they
skip when those are missing; with CI=true they fail, so a green CI run always
means the kernel really enforced what the tests claim.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, why: str) -> None:
    """Skip (or fail under CI=true) when an enforcement prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}: enforcement tests must run in CI", pytrace=False)
    pytest.skip(why)


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
