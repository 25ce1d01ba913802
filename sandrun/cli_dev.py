"""`sandrun dev`, `sandrun test`: the developer's loop under the production sandbox."""

from __future__ import annotations

import click

from sandrun.errors import SandrunError


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dev(args: tuple[str, ...]) -> int:
    """Run a project's source tree under its production sandbox (not built yet)."""
    raise SandrunError("sandrun dev is not built yet", "see issue 15")


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def test(args: tuple[str, ...]) -> int:
    """Run a project's tests inside its production sandbox (not built yet)."""
    raise SandrunError("sandrun test is not built yet", "see issue 15")
