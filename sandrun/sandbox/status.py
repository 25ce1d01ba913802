"""One answer to "is this protection enforced?", for Landlock, seccomp and the launcher.

Every protection is reported as enforced, partial or not enforced, never silently
degraded; the dry run prints these rows and `require_kernel_support` refuses on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Enforcement = Literal["enforced", "partial", "not enforced"]

ENFORCED: Final = "enforced"
PARTIAL: Final = "partial"
NOT_ENFORCED: Final = "not enforced"
LEVELS: Final[tuple[Enforcement, ...]] = (ENFORCED, PARTIAL, NOT_ENFORCED)


def enforcement(word: str) -> Enforcement:
    """`word` as an Enforcement, for rows built where this module cannot be imported
    (cgroup.py is on the warm exec path, which imports no dataclasses or typing)."""
    for level in LEVELS:
        if word == level:
            return level
    raise ValueError(f"unknown enforcement status {word!r} (expected one of "
                     + ", ".join(LEVELS) + ")")


@dataclass(frozen=True)
class ProtectionStatus:
    """Whether one protection (a Landlock feature, the seccomp filter, a limit...) is
    enforced on this host, and how or why not."""

    name: str
    status: Enforcement
    detail: str = ""

    def __post_init__(self) -> None:
        enforcement(self.status)  # a typo would read as "not enforced" to a caller
