"""`sandrun inspect`: what a bundle contains, as text or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandrun.bundle.manifest import MANIFEST_NAME, PROFILE_NAME
from sandrun.errors import BundleError, SandrunError, VerificationError

if TYPE_CHECKING:
    from sandrun.bundle.archive import StrictArchive
    from sandrun.bundle.signature import SignatureStatus


def describe_bundle(path: str) -> dict[str, Any]:
    from sandrun.bundle.verify import verify_bundle
    from sandrun.config.profile import load_profile_text

    result = verify_bundle(path)
    m = result.manifest
    if m is None:
        # Nothing of an invalid manifest is shown as if it were true: say what is wrong.
        about = [p for p in result.problems if p.where.startswith(MANIFEST_NAME)]
        raise VerificationError(
            f"{path} has no valid manifest, so there is nothing trustworthy to show",
            about or result.problems,
            "run `sandrun verify` for every problem; rebuild the bundle with `sandrun bundle`")
    archive = result.archive
    by_name = {e.name: e for e in archive.entries}
    profile_info: dict[str, Any] = {}
    if PROFILE_NAME in by_name:
        text = archive.read(by_name[PROFILE_NAME]).decode("utf-8", "replace")
        try:
            p = load_profile_text(text, f"{path}:{PROFILE_NAME}", None)
            profile_info = profile_to_json(p)
        except SandrunError as exc:  # a bad embedded profile is reported, not fatal here
            profile_info = {"error": exc.diagnostics()}
    return {
        "bundle": path,
        "verified": result.ok,
        "problems": [str(p) for p in result.problems],
        "app": {"name": m.app_name, "version": m.app_version, "entry_point": m.entry_point,
                "console_script": m.console_script},
        "target": m.target.to_json(),
        "source_date_epoch": m.source_date_epoch,
        "sandrun_version": m.sandrun_version,
        "manifest_sha256": m.digest(),
        "manifest_format": m.format,
        "resolution": m.resolution.to_json() if m.resolution is not None else None,
        "dependencies": [{**d.to_json(), "publisher": d.provenance.describe_publisher()
                          if d.provenance is not None else None} for d in m.dependencies],
        "profile": profile_info,
        "manifest": {"entries": len(m.entries), "total_size": m.total_size,
                     "executable_entries": sum(1 for r in m.entries.values()
                                               if r.mode & 0o111)},
        "signature": _signature_info(result.signature_status),
        "sbom": _sbom_info(archive),
    }


def _sbom_info(archive: StrictArchive) -> dict[str, Any]:
    from sandrun.build.sbom import load_sbom, sbom_summary

    try:
        sbom = load_sbom(archive)
    except SandrunError as exc:
        return {"error": exc.diagnostics()}
    return sbom_summary(sbom) if sbom is not None else {}


def embedded_sbom(path: str) -> bytes:
    """The SBOM's exact (signed) bytes, after verifying the bundle."""
    from sandrun.build.sbom import read_sbom
    from sandrun.bundle.verify import verify_bundle

    result = verify_bundle(path)
    result.raise_for_problems(f"bundle {path}")
    data = read_sbom(result.archive)
    if data is None:
        raise BundleError(f"{path} has no embedded SBOM (built by an older sandrun)",
                          "rebuild it with `sandrun bundle`")
    return data


def _signature_info(status: SignatureStatus) -> dict[str, Any]:
    info: dict[str, Any] = {"state": status.state.value, "text": status.describe()}
    if status.info is not None:
        info.update(status.info.to_json())
    return info


def render_text(info: dict[str, Any]) -> str:
    app, target, sbom = info["app"], info["target"], info["sbom"]
    lines = [
        f"bundle        {info['bundle']}",
        f"verified      {'yes' if info['verified'] else 'NO: ' + str(len(info['problems']))}"
        + ("" if info["verified"] else " problem(s); run `sandrun verify`"),
        f"app           {app['name']} {app['version']}",
        f"entry point   {app['entry_point']}"
        + (f" (console script {app['console_script']})" if app["console_script"] else ""),
        f"target        Python {target['python']} {target['abi']} "
        f"({', '.join(target['platforms'][:3])}"
        + (", ..." if len(target["platforms"]) > 3 else "") + ")",
        f"manifest      {info['manifest']['entries']} entries, "
        f"{info['manifest']['total_size']} bytes, sha256 {info['manifest_sha256']}",
        f"signature     {info['signature']['text']}",
        "sbom          " + (f"CycloneDX {sbom['spec_version']}, {sbom['components']} "
                            f"components ({sbom['nested_components']} from wheel SBOMs), "
                            "`sandrun inspect --sbom` prints it" if "components" in sbom
                            else sbom.get("error", "none")),
        "resolution    " + _resolution_text(info.get("resolution")),
        f"dependencies  {len(info['dependencies'])}",
    ]
    for dep in info["dependencies"]:
        lines.append(f"  {dep['name']} {dep['version']}  {dep['wheel']}  sha256:{dep['sha256']}")
        lines.append(f"    from {dep.get('origin') or 'not recorded (manifest format 1)'}")
        prov = dep.get("provenance")
        lines.append("    publisher " + (
            f"{dep['publisher']}: PEP 740 provenance verified at build time"
            + (" against the pinned publisher" if prov["pinned"] else " (not pinned)")
            + "; `sandrun verify` re-checks it" if prov else "unknown (no provenance)"))
    prof = info["profile"]
    if "error" in prof:
        lines.append(f"profile       INVALID: {prof['error']}")
    elif prof:
        lines.append(f"profile       {prof['name']}: {prof['description']} (embedded, "
                     "flattened; a request that the operator approves, see below)")
        lines += [f"  {line}" for line in prof["toml"].splitlines() if line.strip()]
        grants = prof["grants_beyond_default"]
        if grants:
            lines.append(f"  asks for {len(grants)} grant(s) beyond `default` (`sandrun "
                         "approve` records the operator's approval; `!` deserves a look):")
            lines += [f"  {'!' if g['danger'] else ' '} {g['key']}: {g['value']}"
                      + (f"  [{g['danger']}]" if g["danger"] else "") for g in grants]
        else:
            lines.append("  grants nothing beyond `default`: runs without an approval")
    return "\n".join(lines)


def _resolution_text(resolution: dict[str, Any] | None) -> str:
    if resolution is None:
        return "not recorded (manifest format 1, built by an older sandrun)"
    if resolution["resolver"] == "pylock":
        return f"lock file (sha256 {resolution['lock_sha256']}), no resolution"
    return (f"{resolution['resolver']}; indexes: {', '.join(resolution['indexes']) or 'none'}; "
            f"find-links: {', '.join(resolution['find_links']) or 'none'}"
            + ("; pip configuration read (--use-pip-config)" if resolution["pip_config"]
               else ""))


def profile_to_json(profile: Any) -> dict[str, Any]:
    """Every key of the flattened profile, its TOML, and what it asks beyond `default`."""
    from sandrun.config.profile import render_toml
    from sandrun.launch.consent import default_profile, extra_grants

    return {
        "name": profile.name, "description": profile.description,
        "read": list(profile.read), "optional_read": list(profile.optional_read),
        "read_write": list(profile.read_write), "execute": list(profile.execute),
        "bind_tcp": list(profile.bind_tcp), "connect_tcp": list(profile.connect_tcp),
        "dns": profile.dns, "unix_sockets": profile.unix_sockets,
        "subprocess": profile.subprocess, "fork": profile.fork, "mdwe": profile.mdwe,
        "env": {"pass": list(profile.env_pass), "set": dict(profile.env_set)},
        "rlimits": dict(profile.rlimits),
        "syscalls": {"allow": list(profile.syscalls_allow),
                     "deny": list(profile.syscalls_deny)},
        "landlock_min_abi": profile.landlock_min_abi,
        "limits": dict(profile.limits), "limits_required": list(profile.limits_required),
        "toml": render_toml(profile),
        "grants_beyond_default": [
            {"key": g.key, "value": g.value, "danger": g.danger}
            for g in extra_grants(profile, [default_profile()])],
    }
