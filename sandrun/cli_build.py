"""`sandrun bundle`, `verify`, `lock`, `audit`: building bundles and checking them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sandrun.cli_common import progress_printer

if TYPE_CHECKING:
    from sandrun.bundle.manifest import Manifest

QUIET_HELP = "Print nothing on stdout (errors still go to stderr; the exit code is unchanged)."
JSON_HELP = "One JSON document on stdout."


def _warn(msg: str) -> None:
    click.echo(f"sandrun: warning: {msg}", err=True)


def _emit(as_json: bool, quiet: bool, obj: dict[str, Any], text: str) -> None:
    if quiet:
        return
    click.echo(json.dumps(obj, indent=2, sort_keys=True) if as_json else text)


def _main_platform(m: Manifest) -> str:
    return next((p for p in m.target.platforms if p.startswith("manylinux")),
                m.target.platforms[0])


def _dependencies_json(m: Manifest) -> list[dict[str, Any]]:
    return [{**d.to_json(), "publisher": d.provenance.describe_publisher()
             if d.provenance is not None else None} for d in m.dependencies]


@click.command()
@click.argument("requirements", nargs=-1, metavar="[REQ]...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output bundle (.pyz), written atomically with mode 0444.")
@click.option("-e", "--entry-point", metavar="MOD:FUNC", help="Function to run.")
@click.option("-c", "--console-script", metavar="NAME", help="Console script to run.")
@click.option("-r", "--requirement", "requirement_files", multiple=True,
              type=click.Path(path_type=Path), metavar="FILE",
              help="Requirements file (repeatable); --hash pins are enforced.")
@click.option("--find-links", multiple=True, metavar="DIR", help="Extra wheel locations.")
@click.option("--no-index", is_flag=True, help="Do not use the package index.")
@click.option("--index-url", metavar="URL", help="Package index to use.")
@click.option("--use-pip-config", is_flag=True,
              help="Let pip read its configuration files and PIP_* environment variables "
              "(default: ignored, so that only these options decide where wheels come from).")
@click.option("-p", "--profile", default="default", show_default=True, metavar="NAME|FILE",
              help="Profile to validate and embed.")
@click.option("--name", metavar="NAME", help="App name (default: from the script or entry).")
@click.option("--python-version", metavar="X.Y", help="Target Python version.")
@click.option("--platform", "platforms", multiple=True, metavar="TAG",
              help="Target platform tag (repeatable).")
@click.option("--lock", "lock", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PYLOCK", help="PEP 751 pylock.toml: take exactly its wheels for the "
              "target, every hash checked (instead of REQs and -r).")
@click.option("--provenance", "provenance_dir", metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="PEP 740 provenance files (<wheel file name>.provenance) to verify and "
              "embed.")
@click.option("--trust", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Trust policy whose [provenance] table pins publishers and requires "
              "provenance.")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the bundle with this Ed25519 key.")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def bundle(ctx: click.Context, requirements: tuple[str, ...], output: Path,
           entry_point: str | None, console_script: str | None,
           requirement_files: tuple[Path, ...], find_links: tuple[str, ...], no_index: bool,
           index_url: str | None, use_pip_config: bool, profile: str, name: str | None,
           python_version: str | None, platforms: tuple[str, ...], lock: Path | None,
           provenance_dir: Path | None, trust: Path | None, sign_key: Path | None,
           quiet: bool, as_json: bool) -> None:
    """Freeze REQs (wheels only) into a reproducible, verifiable zipapp."""
    from sandrun.build.builder import BundleRequest, build_bundle

    signing_key = None
    if sign_key is not None:  # a bad key fails before the build, not after
        from sandrun.supply.signing import load_private_key

        signing_key = load_private_key(sign_key)  # asks for a passphrase once, if any

    request = BundleRequest(
        output=output, requirements=requirements, requirement_files=requirement_files,
        entry_point=entry_point, console_script=console_script, find_links=find_links,
        no_index=no_index, index_url=index_url, profile=profile, name=name,
        python_version=python_version, platforms=platforms, lock=lock,
        use_pip_config=use_pip_config, provenance_dir=provenance_dir, trust=trust)
    result = build_bundle(request, progress=progress_printer(), warn=_warn)
    sha256 = result.sha256
    signed = ""
    if sign_key is not None:
        import hashlib

        from sandrun.supply.signing import sign_bundle

        assert signing_key is not None
        signed = sign_bundle(result.path, signing_key).describe()
        sha256 = hashlib.sha256(result.path.read_bytes()).hexdigest()
    m = result.manifest
    res = result.resolution
    size = result.path.stat().st_size
    sources = [f"  resolver     {res.resolver}"
               + (" (pip configuration and PIP_* variables read: --use-pip-config)"
                  if res.pip_config else "")
               + (f", lock sha256 {res.lock_sha256}" if res.lock_sha256 else "")]
    if res.resolver != "pylock":
        sources += [f"  indexes      {', '.join(res.indexes) or 'none'}",
                    f"  find-links   {', '.join(res.find_links) or 'none'}"]
    with_provenance = [d for d in m.dependencies if d.provenance is not None]
    text = "\n".join([
        f"{result.path}",
        f"  sha256       {sha256}",
        f"  app          {m.app_name} {m.app_version}",
        f"  entry point  {m.entry_point}"
        + (f" (console script {m.console_script})" if m.console_script else ""),
        f"  target       Python {m.target.python} ({m.target.abi}, {_main_platform(m)})",
        f"  contents     {len(m.dependencies)} wheels, {len(m.entries)} files, "
        f"{m.total_size} bytes uncompressed, {size} bytes on disk",
        *sources,
        *([f"  provenance   {len(with_provenance)} of {len(m.dependencies)} wheels:"]
          + [f"    {d.name} {d.version}: {d.provenance.describe_publisher()}"
             + ("" if d.provenance.pinned else " (not pinned)")
             for d in with_provenance if d.provenance is not None]
          if with_provenance else []),
        *([f"  signature    {signed}"] if signed else []),
    ])
    _emit(as_json, quiet, {
        "bundle": str(result.path), "sha256": sha256, "size": size,
        "app": {"name": m.app_name, "version": m.app_version, "entry_point": m.entry_point,
                "console_script": m.console_script},
        "target": m.target.to_json(), "manifest_sha256": m.digest(),
        "entries": len(m.entries), "total_size": m.total_size,
        "resolution": res.to_json(), "dependencies": _dependencies_json(m),
        "signature": signed or None}, text)


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--trust", metavar="FILE", help="Also check the bundle against this trust "
              "policy, its [provenance] table included (exit 1 if it would be refused).")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def verify(bundle_path: str, trust: str | None, quiet: bool, as_json: bool) -> int:
    """Check a bundle's integrity, signature and provenance; list every problem (exit 1
    if any)."""
    from sandrun.bundle.verify import verify_bundle

    result = verify_bundle(bundle_path)
    problems = list(result.problems)
    m = result.manifest
    checks: list[Any] = []
    if m is not None:
        policy = None
        if trust:
            from sandrun.supply.provenance import load_provenance_policy
            from sandrun.supply.trust import check_trust, load_trust_policy

            problems += check_trust(load_trust_policy(Path(trust)), m,
                                    result.signature_status, bundle_path)
            policy = load_provenance_policy(Path(trust))
        needs_check = any(d.provenance is not None for d in m.dependencies) or (
            policy is not None and not policy.empty)
        if needs_check and not result.problems:  # entries are what the manifest lists
            from sandrun.supply.provenance import check_bundle_provenance

            by_name = {e.name: e for e in result.archive.entries}
            checks, found = check_bundle_provenance(
                m, lambda name: result.archive.read(by_name[name]), policy)
            problems += found
    signature = f"signature: {result.signature_status.describe()}"
    provenance = [f"provenance: {c.name} {c.version}: "
                  + (f"{c.publisher}{'' if c.pinned else ' (not pinned)'}, verified offline"
                     if c.verified else f"INVALID: {c.problem}") for c in checks]
    obj = {"bundle": bundle_path, "ok": not problems,
           "problems": [{"where": p.where, "what": p.what, "hint": p.hint} for p in problems],
           "manifest_sha256": m.digest() if m is not None else None,
           "manifest_format": m.format if m is not None else None,
           "signature": result.signature_status.describe(),
           "trust_policy": trust,
           "provenance": [{"name": c.name, "version": c.version, "publisher": c.publisher,
                           "pinned": c.pinned, "verified": c.verified,
                           "problem": c.problem or None} for c in checks]}
    if m is not None and m.resolution is not None:
        obj["resolution"] = m.resolution.to_json()
    if not problems:
        assert m is not None
        lines = [f"{bundle_path}: OK ({len(m.entries)} entries, manifest {m.digest()[:16]})",
                 f"  {signature}" + (f"; trusted by {trust}" if trust else "")]
        lines += [f"  {line}" for line in provenance]
        _emit(as_json, quiet, obj, "\n".join(lines))
        return 0
    lines = [f"{bundle_path}: {len(problems)} problem(s)"]
    lines += [f"  - {problem}" for problem in problems]
    lines.append(f"  {signature}")
    lines += [f"  {line}" for line in provenance if "INVALID" not in line]
    _emit(as_json, quiet, obj, "\n".join(lines))
    return 1


@click.command()
@click.argument("bundle_path", metavar="[BUNDLE]", required=False)
@click.option("--osv", "osv_path", metavar="PATH", type=click.Path(path_type=Path),
              help="OSV advisories: a directory of JSON files, an ecosystem zip (all.zip) or "
              "an index built by --index.")
@click.option("--index", "index_source", metavar="DB", type=click.Path(path_type=Path),
              help="Build a compact index of the OSV database DB (for `exec --audit-db`) "
              "into -o FILE instead of auditing.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="With --index: the index file to write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
def audit(bundle_path: str | None, osv_path: Path | None, index_source: Path | None,
          output: Path | None, as_json: bool, quiet: bool) -> int:
    """Offline vulnerability audit of a bundle's dependencies (exit 1 if vulnerable), or
    (--index DB -o FILE) build the index `exec --audit-db` reads in milliseconds."""
    from sandrun.errors import UsageError
    from sandrun.supply.audit import (
        audit_bundle,
        load_osv_database,
        render_text,
        report_to_json,
        write_osv_index,
    )

    if index_source is not None:
        if output is None or bundle_path is not None or osv_path is not None:
            raise UsageError("--index DB writes an index: give -o FILE, and no BUNDLE or --osv",
                             "e.g. sandrun audit --index all.zip -o /var/lib/sandrun/osv.idx")
        info = write_osv_index(load_osv_database(index_source), output)
        _emit(as_json, quiet, info,
              f"{output}: index of {info['source']} ({info['advisories']} advisories, "
              f"{info['names']} packages), database sha256 {info['database_sha256']}")
        return 0
    if bundle_path is None or osv_path is None:
        raise UsageError("give BUNDLE and --osv PATH (or --index DB -o FILE)",
                         "e.g. sandrun audit app.pyz --osv all.zip")
    if output is not None:
        raise UsageError("-o is for --index", "the audit report goes to stdout")
    report = audit_bundle(bundle_path, load_osv_database(osv_path))
    _emit(as_json, quiet, report_to_json(report), render_text(report))
    return 1 if report.vulnerable else 0


LOCK_FORMATS = ("requirements", "pylock")


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write here (default: stdout).")
@click.option("--format", "lock_format", type=click.Choice(LOCK_FORMATS),
              help="requirements: name==version --hash lines; pylock: a PEP 751 pylock.toml "
              "(`bundle --lock` takes it). Default: pylock for a -o FILE ending in .toml, "
              "else requirements.")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def lock(bundle_path: str, output: Path | None, lock_format: str | None, quiet: bool,
         as_json: bool) -> None:
    """Pin exactly what BUNDLE contains: hash-pinned requirements or a PEP 751 lock file."""
    from sandrun.build.lockfile import pylock_from_manifest, requirements_from_manifest
    from sandrun.bundle.verify import verify_bundle
    from sandrun.errors import UsageError

    toml_name = output is not None and output.name.endswith(".toml")
    if lock_format is None:
        lock_format = "pylock" if toml_name else "requirements"
    if lock_format == "requirements" and toml_name:
        raise UsageError(f"{output} is a .toml name, but --format requirements writes "
                         "requirements.txt lines", "use --format pylock, or another name")
    if output is None and quiet:
        raise UsageError("-q without -o would print the lock nowhere", "give -o FILE")
    result = verify_bundle(bundle_path)
    result.raise_for_problems(f"bundle {bundle_path}")
    assert result.manifest is not None
    m = result.manifest
    text = (pylock_from_manifest(m, output) if lock_format == "pylock"
            else requirements_from_manifest(m))
    summary = {"bundle": bundle_path, "format": lock_format,
               "output": str(output) if output is not None else None,
               "packages": len(m.dependencies), "manifest_sha256": m.digest()}
    if output is None:
        if as_json:
            click.echo(json.dumps({**summary, "content": text}, indent=2, sort_keys=True))
        else:
            click.echo(text, nl=False)
        return
    _write_atomically(output, text.encode("utf-8"))
    if as_json:
        _emit(True, quiet, summary, "")
    elif not quiet:
        what = "package(s) in a PEP 751 lock file" if lock_format == "pylock" \
            else "pinned requirement(s)"
        click.echo(f"{output}: {len(m.dependencies)} {what}", err=True)


def _write_atomically(path: Path, data: bytes) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
