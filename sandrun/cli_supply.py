"""`sandrun keygen`, `sign`, `trust`, `inspect`: keys, signatures and trust policies."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="KEY", help="Private key to write (0600); the public key goes to KEY.pub.")
@click.option("--identity", metavar="TEXT", help="Signer identity, stored as the comment in "
              "KEY.pub and in signatures (default user@hostname).")
def keygen(output: Path, identity: str | None) -> None:
    """Create an Ed25519 signing key (OpenSSH format); never overwrites."""
    from sandrun.bundle.signature import fingerprint, parse_public_key
    from sandrun.supply.signing import generate_key

    private, public = generate_key(output, identity)
    key = parse_public_key(public.read_text().strip(), str(public))
    click.echo(f"{private} (private, 0600)\n{public}\n  {fingerprint(key)}\n"
               f"  add to a trust policy: public_key = \"{key.openssh()}\"")


@click.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-k", "--key", "key_path", required=True, metavar="KEY",
              type=click.Path(dir_okay=False, path_type=Path), help="Private key.")
def sign(bundle_path: Path, key_path: Path) -> None:
    """Sign BUNDLE's manifest digest (replaces an earlier signature)."""
    from sandrun.supply.signing import sign_bundle

    info = sign_bundle(bundle_path, key_path)
    click.echo(f"{bundle_path}: {info.describe()}")


@click.group()
def trust() -> None:
    """Check trust policies (which keys may sign which apps)."""


@trust.command(name="check")
@click.argument("policy_file", metavar="[FILE]", required=False)
def trust_check(policy_file: str | None) -> None:
    """Validate a trust policy (default /etc/sandrun/trust.toml); list its signers."""
    from sandrun.supply.trust import DEFAULT_TRUST_PATH, load_trust_policy

    policy = load_trust_policy(Path(policy_file) if policy_file else DEFAULT_TRUST_PATH)
    click.echo(f"{policy.path}: OK ({len(policy.signers)} signer(s))")
    for signer in policy.signers:
        click.echo(f"  {signer.name}  {signer.fingerprint}  apps: {', '.join(signer.apps)}")
    for app, minimum in sorted(policy.min_versions.items()):
        click.echo(f"  {app} >= {minimum.text}")


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--sbom", is_flag=True, help="Print the embedded CycloneDX SBOM (JSON).")
def inspect(bundle_path: str, as_json: bool, sbom: bool) -> None:
    """Show a bundle's metadata, dependencies, signature, SBOM, profile and manifest."""
    from sandrun.inspect import describe_bundle, embedded_sbom, render_text

    if sbom:
        click.echo(embedded_sbom(bundle_path).decode("utf-8"), nl=False)
        return
    info = describe_bundle(bundle_path)
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else render_text(info))
