"""What this kernel can enforce of a profile (for `sandrun profile show`)."""

from __future__ import annotations

from typing import Any


def enforcement_summary(profile: Any) -> list[str]:
    from sandrun.sandbox import landlock, seccomp
    from sandrun.sandbox.kernel import mdwe_supported

    abi = landlock.abi_version()
    lines = [f"this kernel: Landlock ABI {abi or 'unavailable'}; profile requires "
             f">= {profile.landlock_min_abi}"
             + ("" if abi >= profile.landlock_min_abi else "  -> exec would REFUSE (exit 125)")]
    policy = landlock.LandlockPolicy(
        paths=(), bind_tcp=tuple(profile.bind_tcp), connect_tcp=tuple(profile.connect_tcp),
        min_abi=profile.landlock_min_abi)
    for st in landlock.plan(policy, abi):
        lines.append(f"landlock {st.name}: {st.status}" + (f" ({st.detail})" if st.detail else ""))
    sec = seccomp.status()
    lines.append(f"seccomp: {sec.status}" + (f" ({sec.detail})" if sec.detail else ""))
    if profile.mdwe:
        lines.append("memory-deny-write-execute: "
                     + ("enforced" if mdwe_supported() else "NOT available -> exec would REFUSE"))
    return lines


def versions() -> list[tuple[str, str]]:
    """What `sandrun -V` prints after sandrun's own version."""
    import os
    import platform
    import sys

    from sandrun.sandbox import landlock, seccomp
    from sandrun.sandbox.kernel import mdwe_supported

    abi = landlock.abi_version()
    try:
        from importlib.metadata import version

        pyseccomp = version("pyseccomp")
    except Exception:  # metadata missing: a broken install, say so rather than fail
        pyseccomp = "unknown"
    sec = seccomp.status()
    return [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("kernel", f"{platform.release()} {platform.machine()}"),
        ("landlock", f"ABI {abi}" if abi else "not available"),
        ("seccomp", f"{sec.status} ({sec.detail}); libseccomp {libseccomp_version()}, "
                    f"pyseccomp {pyseccomp}"),
        ("mdwe", "available" if mdwe_supported() else "not available (Linux < 6.3)"),
        ("root", "yes" if os.geteuid() == 0 else "no (the app runs as you, without a user "
                 "switch or namespaces)"),
    ]


def libseccomp_version() -> str:
    """The loaded libseccomp's version (seccomp_version(3)), or "unknown"."""
    import ctypes
    import ctypes.util

    class _Version(ctypes.Structure):
        _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                    ("micro", ctypes.c_uint))

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        found = lib.seccomp_version().contents
    except (OSError, AttributeError, ValueError):
        return "unknown"
    return f"{found.major}.{found.minor}.{found.micro}"
