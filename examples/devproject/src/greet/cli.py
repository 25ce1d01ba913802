"""The `greet` command."""

import os

import click

from greet import __version__, greeting


def code_check() -> str:
    """Try to change this very file: under sandrun it must fail."""
    try:
        with open(__file__, "a"):
            pass
    except OSError as exc:
        return f"my code is read-only ({exc.strerror})"
    return "my code is writable: not sandboxed"


@click.command()
@click.argument("name", default="world")
@click.option("--shout", is_flag=True, help="Say it louder.")
@click.option("--check", is_flag=True, help="Also say who runs me and whether my code "
              "is writable.")
@click.version_option(__version__)
def main(name: str, shout: bool, check: bool) -> None:
    """Greet NAME."""
    message = greeting(name)
    click.echo(message.upper() if shout else message)
    if check:
        click.echo(f"uid={os.getuid()} cwd={os.getcwd()}")
        click.echo(code_check())
