"""`sandrun export {systemd,oci,k8s}`: hand the sandbox of a bundle to another engine.

Each exporter lives in sandrun/ops/export/<kind>.py and provides its click command as
`command`; this module only groups them (imported when `export` runs, so other commands
do not pay for them).
"""

from __future__ import annotations

import importlib

import click

EXPORTERS = ("systemd", "oci", "k8s")


class _ExportGroup(click.Group):
    """Loads an exporter's command only when it is asked for (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [k for k in EXPORTERS if self.get_command(ctx, k) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in EXPORTERS:
            return None
        try:
            module = importlib.import_module(f"sandrun.ops.export.{cmd_name}")
        except ModuleNotFoundError:
            return None
        command = getattr(module, "command", None)
        if not isinstance(command, click.Command):
            return None
        prepare = getattr(self, "prepare_command", None)
        if prepare is not None:
            prepare(command)  # cli.py: -v/--verbose on every command
        return command


@click.group(cls=_ExportGroup)
def export() -> None:
    """Export a bundle's sandbox as a systemd unit, an OCI runtime bundle or Kubernetes
    manifests (same consent rule as exec)."""
