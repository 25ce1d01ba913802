"""The `sandrun` command (console script and `python -m sandrun`).

`sandrun exec` first tries the warm path (warm_exec), which imports neither click nor
the cold launch path; everything else, and every exec the warm path declines, goes
to the click CLI.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["exec"]:
        from sandrun.errors import SandrunError
        from sandrun.launch.warm_exec import try_warm_exec

        try:
            code = try_warm_exec(args[1:])
        except SandrunError as exc:
            sys.stderr.write(f"sandrun: error: {exc.diagnostics()}\n")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        if code is not None:
            sys.exit(code)
    from sandrun.cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
