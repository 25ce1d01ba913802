"""greet: says hello, and checks that it cannot change its own code."""

from importlib.metadata import version

__version__ = version("greet")


def greeting(name: str) -> str:
    return f"hello, {name}"
