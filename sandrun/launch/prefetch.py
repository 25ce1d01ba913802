"""The cold launch's first step, taken before sandrun's heavier modules are imported: read
the bundle (safefile.read_bundle, as decide() reads it) and start hashing its entries in
a forked child, so that the hashing (most of verifying a small app's bundle) runs on
another CPU while this process imports the launcher and decides.

Only a head start: decide() adopts what is given to it for the same path and verifies
exactly as it would have (verify.PendingVerification); whatever fails here is dropped
and met again there, in decide()'s order and with its messages. The caller cancels it
when the launch ends (a child nobody collected is killed and reaped).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: imported before the fork, every ms delays the child
if TYPE_CHECKING:
    from sandrun.bundle.archive import BackgroundHashes, StrictArchive


class PrefetchedBundle:
    """A bundle read once, parsed, (usually) being hashed entry by entry by a child, and
    as a whole (its store name) by a thread while this process imports."""

    __slots__ = ("_digest", "_digesting", "archive", "hashing", "path")

    def __init__(self, path: str, archive: StrictArchive,
                 hashing: BackgroundHashes | None) -> None:
        import threading

        self.path = path
        self.archive = archive
        self.hashing = hashing
        self._digest: list[str] = []
        # hashlib lets go of the GIL for the whole buffer: this runs beside the imports.
        # Started after the fork above (a child must not copy a running thread).
        self._digesting = threading.Thread(
            target=lambda: self._digest.append(archive.file_sha256()),
            name="sandrun-bundle-sha256", daemon=True)
        self._digesting.start()

    @property
    def sha256(self) -> str:
        """sha256 of the whole bundle (hex), as read_bundle() returns it; joins the thread
        (decide() reads it before anything else forks)."""
        self._digesting.join()
        return self._digest[0] if self._digest else self.archive.file_sha256()

    def cancel(self) -> None:
        """Stop the child if nothing collected its hashes (the launch failed before
        verifying, or took another path), and let go of everything (the shared memory
        goes with the last view of it); a no-op once decide() has them. Joins the
        digest thread: nothing may fork beside it."""
        if self.hashing is not None:
            self.hashing.cancel()
            self.hashing = None
        self._digesting.join()


def prefetch_bundle(path: str) -> PrefetchedBundle | None:
    """Read and parse the bundle at `path` and start hashing it; None when any of it fails
    (decide() then reads it again and says why)."""
    from sandrun.bundle.archive import parse_archive
    from sandrun.errors import SandrunError
    from sandrun.launch.safefile import read_bundle_bytes

    try:
        data = read_bundle_bytes(path)
        archive = parse_archive(data, path)
    except (SandrunError, OSError):
        return None
    hashing = archive.hash_in_background()
    try:
        return PrefetchedBundle(path, archive, hashing)
    except Exception:  # no thread to be had: decide() reads and verifies by itself
        if hashing is not None:
            hashing.cancel()
        return None
