"""`sandrun list`, `sandrun gc`, `sandrun rm`: the store's lifecycle (sandrun/ops)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

_STORE = click.option("--store", metavar="DIR", envvar="SANDRUN_STORE",
                      help="Store (default /var/lib/sandrun as root, ~/.cache/sandrun "
                      "otherwise; env SANDRUN_STORE).")


_QUIET = click.option("-q", "--quiet", is_flag=True,
                      help="Print nothing on stdout (errors still go to stderr; same exit "
                      "code).")
_JSON = click.option("--json", "as_json", is_flag=True,
                     help="Print the report as one JSON document on stdout.")


def _one_output(quiet: bool, as_json: bool) -> None:
    if quiet and as_json:
        raise click.UsageError("-q prints nothing and --json prints JSON: choose one")


def _store(path: str | None) -> object:
    from sandrun.launch.store import Store, default_store_path

    return Store(Path(path) if path else default_store_path(), os.geteuid())


@click.command(name="list")
@_STORE
@_QUIET
@_JSON
def list_(store: str | None, quiet: bool, as_json: bool) -> None:
    """Installed apps: version, signer, tree, size, installed / last used, running."""
    from sandrun.ops.store_admin import installed, render_list

    _one_output(quiet, as_json)
    infos = installed(_store(store))  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps([t.to_json() for t in infos], indent=2, sort_keys=True))
    elif not quiet:
        click.echo(render_list(infos))


@click.command()
@_STORE
@click.option("--keep", default=1, show_default=True, metavar="N",
              help="Trees to keep per app, newest first (the newest always stays).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_QUIET
@_JSON
def gc(store: str | None, keep: int, dry_run: bool, quiet: bool, as_json: bool) -> None:
    """Remove old trees (never one in use, never an app's newest) and stale records."""
    from sandrun.ops.store_admin import plan_gc, run_gc

    _one_output(quiet, as_json)
    the_store = _store(store)
    plan = plan_gc(the_store, keep)  # type: ignore[arg-type]
    if not dry_run:
        run_gc(the_store, plan)  # type: ignore[arg-type]
    verb = "would remove" if dry_run else "removed"
    if as_json:
        click.echo(json.dumps({
            "dry_run": dry_run,
            "removed": [t.to_json() for t in plan.remove],
            "kept": [{**t.to_json(), "why": why} for t, why in plan.keep],
            "records_removed": plan.records}, indent=2, sort_keys=True))
        return
    if quiet:
        return
    for info in plan.remove:
        click.echo(f"{verb} {info.app} {info.version} ({info.sha256[:12]}, {info.size} bytes)")
    for info, why in plan.keep:
        click.echo(f"kept    {info.app} {info.version} ({info.sha256[:12]}): {why}")
    if plan.records:
        click.echo(f"{verb} {len(plan.records)} stale launch record(s)")
    if not plan.remove and not plan.records:
        click.echo("nothing to remove")


@click.command()
@_STORE
@click.argument("app")
@click.option("--state", is_flag=True, help="Also remove its state dir, owner record and "
              "approval (its data is gone).")
@click.option("--user", is_flag=True, help="Also remove its system user sandrun-APP (only "
              "an account of the kind sandrun creates).")
@_QUIET
@_JSON
def rm(store: str | None, app: str, state: bool, user: bool, quiet: bool,
       as_json: bool) -> None:
    """Remove an app's trees (refused while it runs); --state, --user: the rest of it."""
    from sandrun.ops.store_admin import describe_removal, remove_app

    _one_output(quiet, as_json)
    the_store = _store(store)
    removed = remove_app(the_store, app, state=state, user=user)  # type: ignore[arg-type]
    root = the_store.root  # type: ignore[attr-defined]
    if as_json:
        click.echo(json.dumps(removed.to_json(app, root), indent=2, sort_keys=True))
    elif not quiet:
        for line in describe_removal(app, removed, root):
            click.echo(line)
