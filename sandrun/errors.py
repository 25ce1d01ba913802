"""The one error family of sandrun.

Core modules raise these and never print or exit; the CLI turns them into
`sandrun: error: ...` lines and an exit code (sigstore-python's pattern).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms on every warm exec
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Exit codes fixed by DESIGN.md.
EXIT_USAGE = 2
EXIT_REFUSED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class Problem:
    """One finding of a check that reports everything at once.

    `where` names the place: a file (with line), a dotted key or an entry name. A plain
    immutable class rather than a dataclass: every warm `sandrun exec` imports this
    module, and `dataclasses` alone costs ~20 ms of imports.
    """

    __slots__ = ("hint", "what", "where")
    where: str
    what: str
    hint: str

    def __init__(self, where: str, what: str, hint: str = "") -> None:
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "what", what)
        object.__setattr__(self, "hint", hint)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Problem is immutable (cannot set {name})")

    def _key(self) -> tuple[str, str, str]:
        return (self.where, self.what, self.hint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Problem(where={self.where!r}, what={self.what!r}, hint={self.hint!r})"

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text} ({self.hint})" if self.hint else text


class SandrunError(Exception):
    """Root of every error sandrun raises on purpose."""

    exit_code: int = EXIT_REFUSED

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def diagnostics(self) -> str:
        """What went wrong and how to fix it, for a human."""
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ProblemsError(SandrunError):
    """An error that carries several findings, all reported at once."""

    def __init__(self, message: str, problems: Iterable[Problem], hint: str = "",
                 *, exit_code: int | None = None) -> None:
        self.problems: Sequence[Problem] = tuple(problems)
        super().__init__(message, hint, exit_code=exit_code)

    def diagnostics(self) -> str:
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class UsageError(SandrunError):
    """The command line is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class BundleError(SandrunError):
    """A bundle cannot be built or read."""


class ResolveError(BundleError):
    """A requirement cannot be satisfied by wheels for the target."""


class ArchiveError(BundleError):
    """The file is not a zip archive sandrun's strict parser accepts at all."""


class VerificationError(ProblemsError):
    """A bundle or installed tree differs from its manifest."""


class ProfileError(ProblemsError):
    """A profile is invalid; every problem is listed."""


class StoreError(SandrunError):
    """The store cannot be used or an installed tree was tampered with."""


class UserError(SandrunError):
    """The app user is missing, privileged or cannot be created."""


class EnforcementError(SandrunError):
    """A protection the profile requires cannot be applied: refuse to start."""


class InterpreterNotFound(SandrunError):
    exit_code = EXIT_NOT_FOUND


class InterpreterNotExecutable(SandrunError):
    exit_code = EXIT_CANNOT_EXECUTE


class KeyFileError(SandrunError):
    """A signing key or public key cannot be read, written or used."""


class SignatureError(BundleError):
    """A bundle's signature is missing, malformed or does not verify."""


class TrustError(ProblemsError):
    """A bundle does not satisfy the trust policy; every failing rule is listed."""


class AuditError(SandrunError):
    """A vulnerability database cannot be read, or a bundle has known vulnerabilities."""


class LockFileError(ProblemsError):
    """A lock file (pylock.toml) is invalid or does not fit the target."""


class ConsentError(ProblemsError):
    """The operator has not approved what a bundle asks for, or the bundle claims an app
    name that belongs to another signer."""


class LaunchRefused(SandrunError):
    """A launch was refused for several reasons at once; each keeps its own diagnostics."""

    def __init__(self, bundle: str, reasons: Sequence[SandrunError]) -> None:
        self.reasons = tuple(reasons)
        super().__init__(f"refusing to run {bundle} ({len(self.reasons)} reasons)",
                         "fix each reason; `sandrun exec --dry-run` lists them without "
                         "changing anything")

    def diagnostics(self) -> str:
        lines = [self.message]
        for reason in self.reasons:
            for i, line in enumerate(reason.diagnostics().splitlines()):
                lines.append(f"  {'*' if i == 0 else ' '} {line}")
        lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class VulnerabilityError(ProblemsError):
    """A bundle has known vulnerabilities at or above the refused severity."""
