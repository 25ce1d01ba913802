"""`sandrun bundle`, `verify`, `lock`, `audit`: building bundles and checking them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sandrun.cli_common import progress_printer


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
@click.option("-p", "--profile", default="default", show_default=True, metavar="NAME|FILE",
              help="Profile to validate and embed.")
@click.option("--name", metavar="NAME", help="App name (default: from the script or entry).")
@click.option("--python-version", metavar="X.Y", help="Target Python version.")
@click.option("--platform", "platforms", multiple=True, metavar="TAG",
              help="Target platform tag (repeatable).")
@click.option("--lock", "lock", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PYLOCK", help="PEP 751 pylock.toml: take exactly its wheels for the "
              "target, every hash checked (instead of REQs and -r).")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the bundle with this Ed25519 key.")
@click.pass_context
def bundle(ctx: click.Context, requirements: tuple[str, ...], output: Path,
           entry_point: str | None, console_script: str | None,
           requirement_files: tuple[Path, ...], find_links: tuple[str, ...], no_index: bool,
           index_url: str | None, profile: str, name: str | None, python_version: str | None,
           platforms: tuple[str, ...], lock: Path | None, sign_key: Path | None) -> None:
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
        python_version=python_version, platforms=platforms, lock=lock)
    result = build_bundle(request, progress=progress_printer(),
                          warn=lambda msg: click.echo(f"sandrun: warning: {msg}", err=True))
    sha256 = result.sha256
    signed = ""
    if sign_key is not None:
        import hashlib

        from sandrun.supply.signing import sign_bundle

        assert signing_key is not None
        signed = sign_bundle(result.path, signing_key).describe()
        sha256 = hashlib.sha256(result.path.read_bytes()).hexdigest()
    m = result.manifest
    platform = next((p for p in m.target.platforms if p.startswith("manylinux")),
                    m.target.platforms[0])
    click.echo(f"{result.path}\n"
               f"  sha256       {sha256}\n"
               f"  app          {m.app_name} {m.app_version}\n"
               f"  entry point  {m.entry_point}"
               + (f" (console script {m.console_script})" if m.console_script else "") + "\n"
               f"  target       Python {m.target.python} ({m.target.abi}, "
               f"{platform})\n"
               f"  contents     {len(m.dependencies)} wheels, {len(m.entries)} files, "
               f"{m.total_size} bytes uncompressed, {result.path.stat().st_size} bytes on disk")
    if signed:
        click.echo(f"  signature    {signed}")


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--trust", metavar="FILE", help="Also check the bundle against this trust "
              "policy (exit 1 if it would be refused).")
def verify(bundle_path: str, trust: str | None) -> int:
    """Check a bundle's integrity and signature; list every problem (exit 1 if any)."""
    from sandrun.bundle.verify import verify_bundle

    result = verify_bundle(bundle_path)
    problems = list(result.problems)
    if trust and result.manifest is not None:
        from sandrun.supply.trust import check_trust, load_trust_policy

        problems += check_trust(load_trust_policy(Path(trust)), result.manifest,
                                result.signature_status, bundle_path)
    signature = f"signature: {result.signature_status.describe()}"
    if not problems:
        m = result.manifest
        assert m is not None
        click.echo(f"{bundle_path}: OK ({len(m.entries)} entries, manifest {m.digest()[:16]})")
        click.echo(f"  {signature}" + (f"; trusted by {trust}" if trust else ""))
        return 0
    click.echo(f"{bundle_path}: {len(problems)} problem(s)")
    for problem in problems:
        click.echo(f"  - {problem}")
    click.echo(f"  {signature}")
    return 1


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--osv", "osv_path", required=True, metavar="PATH",
              type=click.Path(path_type=Path),
              help="OSV advisories: a directory of JSON files or an ecosystem zip (all.zip).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def audit(bundle_path: str, osv_path: Path, as_json: bool) -> int:
    """Offline vulnerability audit of a bundle's dependencies (exit 1 if vulnerable)."""
    from sandrun.supply.audit import (
        audit_bundle,
        load_osv_database,
        render_text,
        report_to_json,
    )

    report = audit_bundle(bundle_path, load_osv_database(osv_path))
    if as_json:
        click.echo(json.dumps(report_to_json(report), indent=2, sort_keys=True))
    else:
        click.echo(render_text(report))
    return 1 if report.vulnerable else 0


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write here (default: stdout).")
def lock(bundle_path: str, output: Path | None) -> None:
    """Hash-pinned requirements (name==version --hash) of exactly what BUNDLE contains."""
    from sandrun.build.lockfile import requirements_from_manifest
    from sandrun.bundle.verify import verify_bundle

    result = verify_bundle(bundle_path)
    result.raise_for_problems(f"bundle {bundle_path}")
    assert result.manifest is not None
    text = requirements_from_manifest(result.manifest)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text)
    click.echo(f"{output}: {len(result.manifest.dependencies)} pinned requirement(s)", err=True)
