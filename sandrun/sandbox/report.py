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
