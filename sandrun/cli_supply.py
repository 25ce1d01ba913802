"""`sandrun keygen`, `sign`, `trust`, `inspect`: keys, signatures and trust policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sandrun.errors import UsageError


def _emit(as_json: bool, quiet: bool, document: dict[str, Any], text: str) -> None:
    """One JSON document, the text for people, or nothing (-q)."""
    if quiet:
        return
    click.echo(json.dumps(document, indent=2, sort_keys=True) if as_json else text)


_json_option = click.option("--json", "as_json", is_flag=True,
                            help="Print one JSON document on stdout.")
_quiet_option = click.option("-q", "--quiet", is_flag=True,
                             help="Print nothing on stdout (errors still go to stderr).")


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="KEY", help="Private key to write (0600); the public key goes to KEY.pub.")
@click.option("--identity", metavar="TEXT", help="Signer identity, stored as the comment in "
              "KEY.pub (default user@hostname).")
@_json_option
@_quiet_option
def keygen(output: Path, identity: str | None, as_json: bool, quiet: bool) -> None:
    """Create an Ed25519 signing key (OpenSSH format); never overwrites."""
    from sandrun.bundle.signature import parse_public_key
    from sandrun.supply.signing import generate_key

    private, public = generate_key(output, identity)
    key = parse_public_key(public.read_text().strip(), str(public))
    _emit(as_json, quiet,
          {"private_key": str(private), "public_key_file": str(public),
           "public_key": key.openssh(), "fingerprint": key.fingerprint},
          f"{private} (private, 0600)\n{public}\n  {key.fingerprint}\n"
          f"  trust it: sandrun trust add {public} --apps APP")


@click.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-k", "--key", "key_path", metavar="KEY",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Private key (OpenSSH Ed25519); with --agent, the public key (KEY.pub) "
              "of the agent's key to use.")
@click.option("--agent", is_flag=True, help="Sign with a key held by ssh-agent "
              "($SSH_AUTH_SOCK); -k KEY.pub chooses among several.")
@click.option("--sshsig", "sshsig_path", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Attach a signature made by `ssh-keygen -Y sign -n sandrun -f KEY "
              "DIR/message` over the message `sandrun inspect --sshsig DIR BUNDLE` wrote.")
@_json_option
@_quiet_option
def sign(bundle_path: Path, key_path: Path | None, agent: bool, sshsig_path: Path | None,
         as_json: bool, quiet: bool) -> None:
    """Sign BUNDLE (an SSHSIG signature, namespace "sandrun"; replaces an earlier one)."""
    from sandrun.supply.signing import (
        agent_key,
        attach_signature,
        load_private_key,
        sign_bundle,
    )

    if sshsig_path is not None:
        if agent or key_path is not None:
            raise UsageError("--sshsig attaches a signature made elsewhere: it takes no -k or "
                             "--agent", "give one of: -k KEY, --agent [-k KEY.pub], --sshsig FILE")
        info = attach_signature(bundle_path, sshsig_path)
        how = f"attached {sshsig_path}"
    elif agent:
        info = sign_bundle(bundle_path, agent_key(key_path))
        how = "signed by ssh-agent"
    elif key_path is not None:
        info = sign_bundle(bundle_path, load_private_key(key_path))
        how = f"signed with {key_path}"
    else:
        raise UsageError("say how to sign", "give one of: -k KEY (a private key), --agent "
                         "(ssh-agent), --sshsig FILE (made by `ssh-keygen -Y sign`)")
    _emit(as_json, quiet, {"bundle": str(bundle_path), "how": how, "signature": info.to_json()},
          f"{bundle_path}: {info.describe()} ({how})")


@click.group()
def trust() -> None:
    """Trust policies: which keys may sign which apps (check, add, export)."""


@trust.command(name="check")
@click.argument("policy_file", metavar="[FILE]", required=False)
@_json_option
@_quiet_option
def trust_check(policy_file: str | None, as_json: bool, quiet: bool) -> None:
    """Validate a trust policy (default /etc/sandrun/trust.toml); list its signers.
    Warns (stderr) about times without Z: local time, read in each process's TZ."""
    from sandrun.cli_common import warn
    from sandrun.supply.trust import DEFAULT_TRUST_PATH, load_trust_policy, local_time_warnings

    policy = load_trust_policy(Path(policy_file) if policy_file else DEFAULT_TRUST_PATH)
    warnings = local_time_warnings(policy)
    for warning in warnings:
        warn(str(warning))
    lines = [f"{policy.path}: OK ({len(policy.signers)} signer(s))"]
    for signer in policy.signers:
        extra = [f"namespaces: {', '.join(signer.namespaces)}"] \
            if signer.namespaces != ("sandrun",) else []
        extra += [f"valid after {signer.valid_after.describe()}"] if signer.valid_after else []
        extra += [f"valid before {signer.valid_before.describe()}"] \
            if signer.valid_before else []
        lines.append(f"  {signer.name}  {signer.fingerprint}  apps: {', '.join(signer.apps)}"
                     + "".join(f"; {e}" for e in extra))
    lines += [f"  {app} >= {minimum.text}" for app, minimum in sorted(policy.min_versions.items())]
    _emit(as_json, quiet, {"ok": True, **policy.to_json(),
                           "warnings": [{"where": w.where, "what": w.what, "hint": w.hint}
                                        for w in warnings]}, "\n".join(lines))


@trust.command(name="add")
@click.argument("public_key_file", metavar="KEY.pub",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--apps", "apps", multiple=True, required=True, metavar="GLOB",
              help="App names or globs (*, ?, [...]) the key may sign; repeat or separate "
              "with commas.")
@click.option("--name", metavar="NAME", help="How messages name the signer (default: the "
              "key's comment).")
@click.option("--valid-after", metavar="TIME", help="Valid from TIME on: YYYYMMDD[HHMM[SS]], "
              "Z for UTC (ssh-keygen's form); without Z, local time, written converted to "
              "UTC.")
@click.option("--valid-before", metavar="TIME", help="Valid until TIME (same form).")
@click.option("--namespaces", metavar="LIST", help="SSHSIG namespace patterns, comma-"
              "separated (default: sandrun).")
@click.option("--policy", "policy_file", metavar="FILE", type=click.Path(path_type=Path),
              help="Policy to write (default /etc/sandrun/trust.toml); created if missing.")
@_json_option
@_quiet_option
def trust_add(public_key_file: Path, apps: tuple[str, ...], name: str | None,
              valid_after: str | None, valid_before: str | None, namespaces: str | None,
              policy_file: Path | None, as_json: bool, quiet: bool) -> None:
    """Trust the key in KEY.pub for apps matching --apps: add a [[signer]] to the policy."""
    from sandrun.supply.trust import DEFAULT_TRUST_PATH, add_signer

    globs = [g.strip() for a in apps for g in a.split(",") if g.strip()]
    if not globs:
        raise UsageError("--apps is empty", "give app names or globs, e.g. --apps 'web-*'")
    added = add_signer(policy_file or DEFAULT_TRUST_PATH, public_key_file, globs, name=name,
                       namespaces=namespaces.split(",") if namespaces else None,
                       valid_after=valid_after, valid_before=valid_before)
    signer = added.signer
    _emit(as_json, quiet,
          {"policy": str(added.policy.path), "created": added.created,
           "added": signer.to_json(), "notes": list(added.notes)},
          f"{added.policy.path}: {'created, ' if added.created else ''}added signer "
          f"{signer.name!r} ({signer.fingerprint}) for apps {', '.join(signer.apps)} "
          f"({signer.where})" + "".join(f"\n  note: {note}" for note in added.notes))


@trust.command(name="export-allowed-signers")
@click.argument("policy_file", metavar="[FILE]", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT", help="Write to OUT instead of stdout: a new file (0644), never "
              "through a symbolic link; an existing OUT is refused unless --force.")
@click.option("--force", is_flag=True, help="Replace an existing regular file OUT (atomically).")
def trust_export(policy_file: str | None, output: Path | None, force: bool) -> None:
    """Print the policy as an ssh-keygen allowed_signers file (principals: app names),
    to cross-check with `ssh-keygen -Y verify -f FILE -I APP -n sandrun`."""
    from sandrun.supply.trust import DEFAULT_TRUST_PATH, export_allowed_signers, load_trust_policy

    text = export_allowed_signers(load_trust_policy(Path(policy_file) if policy_file
                                                    else DEFAULT_TRUST_PATH))
    if output is None:
        click.echo(text, nl=False)
        return
    from sandrun.supply.signing import write_output

    write_output(output, text.encode("utf-8"), replace=force)


@click.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--sbom", is_flag=True, help="Print the embedded CycloneDX SBOM (JSON).")
@click.option("--sshsig", "sshsig_dir", metavar="DIR", type=click.Path(path_type=Path),
              help="Write DIR/message (the bytes a signature signs) and, if signed, "
              "DIR/message.sig (the SSHSIG signature), for ssh-keygen -Y verify / -Y sign. "
              "Refreshes regular files there; never writes through a symbolic link.")
@_quiet_option
def inspect(bundle_path: str, as_json: bool, sbom: bool, sshsig_dir: Path | None,
            quiet: bool) -> None:
    """Show a bundle's metadata, dependencies, signature, SBOM, profile and manifest."""
    from sandrun.inspect import describe_bundle, embedded_sbom, render_text

    if sshsig_dir is not None:
        _write_sshsig(bundle_path, sshsig_dir, as_json, quiet)
        return
    if sbom:
        if not quiet:
            click.echo(embedded_sbom(bundle_path).decode("utf-8"), nl=False)
        return
    info = describe_bundle(bundle_path)
    _emit(as_json, quiet, info, render_text(info))


def _write_sshsig(bundle_path: str, directory: Path, as_json: bool, quiet: bool) -> None:
    from sandrun.supply.signing import write_sshsig_files

    files = write_sshsig_files(Path(bundle_path), directory)
    status = files.status
    lines = [f"{files.message}  the signed message (app, version, manifest sha256)"]
    if files.signature is not None:
        lines.append(f"{files.signature}  {status.describe()}")
        lines.append(f"  check: ssh-keygen -Y verify -f ALLOWED_SIGNERS -I APP -n sandrun "
                     f"-s {files.signature} < {files.message}")
    else:
        if files.removed_stale:
            lines.append(f"{directory / 'message.sig'}  removed: it was not this bundle's")
        lines.append(f"  unsigned; sign: ssh-keygen -Y sign -n sandrun -f KEY {files.message}"
                     f" && sandrun sign --sshsig {directory / 'message.sig'} {bundle_path}")
    _emit(as_json, quiet,
          {"bundle": bundle_path, "message": str(files.message),
           "signature": str(files.signature) if files.signature else None,
           "removed_stale_signature": files.removed_stale,
           "signature_state": status.state.value, "signature_text": status.describe()},
          "\n".join(lines))
