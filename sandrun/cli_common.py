"""What every command module of the CLI shares: progress lines, quiet and JSON output."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click


def progress_printer(*, ellipsis: bool = True) -> Callable[[str], None]:
    """Progress lines on a terminal (stderr), nothing otherwise."""
    if sys.stderr.isatty():
        tail = "..." if ellipsis else ""
        return lambda msg: click.echo(f"sandrun: {msg}{tail}", err=True)
    return lambda msg: None


def warn(message: str) -> None:
    click.echo(f"sandrun: warning: {message}", err=True)


def unused(*_: Any) -> None:
    """A sink for reports that -q silences."""
