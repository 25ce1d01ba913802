"""The smallest sandrun app: say who and where it runs."""

import os
import sys


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "world"
    print(f"hello, {name}: uid={os.getuid()} python={sys.version.split()[0]} "
          f"home={os.environ.get('HOME')}")
    code = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(code, "__init__.py"), "a"):
            pass
        print("my code is writable: not sandboxed")
    except OSError as exc:
        print(f"my code is read-only ({exc.strerror})")
    return 0
