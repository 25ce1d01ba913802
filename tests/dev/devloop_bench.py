"""Measure the `sandrun dev` edit -> result loop (issue 15). Not a test: run it as root,

    sudo .venv/bin/python tests/dev/devloop_bench.py [--runs 21]

It makes a small project (flat layout, no dependencies: one module that prints a line)
under a fresh /srv dir with its own store, warms everything up, then times, interleaved,
after 2 warm-up rounds:

  exec      `sandrun exec` of the project's cached dev bundle with the grants dev gives
            it (--read PROJECT -w PROJECT): the warm exec reference
  dev       `sandrun dev PROJECT`: the quick record, then the warm exec (through click)
  quick     the quick path alone, as `python -m sandrun` would take it before click
            (`sandrun.dev.quick.try_quick_dev`)
  watch     `sandrun dev --watch`: from writing the edited module to reading the app's
            new output line (inotify, settle, fork, warm launch, the app)
  bare      the interpreter running the bundle's bootstrap, no sandrun, no sandbox

and prints medians, p90 and min in ms, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
APP = "t-h15bench"


MISSED = 3  # exit code of the quick path's stand-in when it declined


def timed(argv: list[str], env: dict[str, str], cwd: Path, misses: list[int] | None = None,
          refresh: list[str] | None = None) -> float:
    """Wall time of one run in ms. A declined quick path (a record made stale by another
    process, e.g. /etc/passwd changed by a concurrent useradd) is counted in `misses`,
    refreshed with `refresh` and timed again."""
    began = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, check=False)
    took = (time.perf_counter() - began) * 1000
    if proc.returncode == MISSED and misses is not None and refresh is not None:
        misses.append(1)
        subprocess.run(refresh, env=env, cwd=cwd, capture_output=True, check=False)
        return timed(argv, env, cwd)
    if proc.returncode != 0 or b"tiny" not in proc.stdout:
        raise SystemExit(f"{argv} failed: {proc.returncode}\n{proc.stderr.decode()}")
    return took


def line(fd: int, timeout: float = 30) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        if not select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
            raise SystemExit(f"no output within {timeout} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("watch ended")
        data += chunk
    return data


def row(name: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return (f"| {name} | {statistics.median(values):.1f} | {p90:.1f} | {values[0]:.1f} "
            f"| {len(values)} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    base = Path(tempfile.mkdtemp(prefix="sandrun-bench-dev-", dir="/srv"))
    base.chmod(0o755)
    project = base / "tiny"
    project.mkdir(mode=0o755)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "tiny"\nversion = "1"\ndependencies = []\n'
        '[project.scripts]\ntiny = "tiny:main"\n'
        f'[tool.sandrun]\nname = "{APP}"\n')
    module = project / "tiny.py"
    module.write_text('def main():\n    print("tiny 0")\n')
    for path in (project / "pyproject.toml", module):
        path.chmod(0o644)
    env = {**os.environ, "SANDRUN_STORE": str(base / "store")}
    sandrun = [PY, "-P", "-m", "sandrun"]
    results: dict[str, list[float]] = {k: [] for k in ("exec", "dev", "quick", "watch",
                                                       "bare")}
    load_before = os.getloadavg()
    misses: list[int] = []
    watch = None
    try:
        timed([*sandrun, "dev", "tiny"], env, base)  # builds, installs, records
        bundle = next((base / "store" / "dev").glob("*.pyz"))
        tree = next(p for p in (base / "store" / "apps").iterdir() if p.is_dir())
        argv = {
            "exec": [*sandrun, "exec", "--read", str(project), "-w", str(project),
                     str(bundle)],
            "dev": [*sandrun, "dev", "tiny"],
            "quick": [PY, "-P", "-c", "import sys\nfrom sandrun.dev.quick import "
                      "try_quick_dev\ncode = try_quick_dev(['tiny'])\n"
                      "sys.exit(MISSED if code is None else code)".replace(
                          "MISSED", str(MISSED))],
            "bare": ["/usr/bin/python3", "-I", "-B", str(tree / ".sandrun" / "bootstrap.py")],
        }
        for name in ("exec", "dev", "quick"):
            timed(argv[name], env, base, [], argv["dev"])
        watch = subprocess.Popen([*sandrun, "dev", "--watch", "tiny"], env=env, cwd=base,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
        assert watch.stdout is not None
        out = watch.stdout.fileno()
        line(out, 60)
        for i in range(options.runs + 2):
            for name in ("exec", "dev", "quick", "bare"):
                took = timed(argv[name], env, base, misses, argv["dev"])
                if i >= 2:
                    results[name].append(took)
            time.sleep(0.3)  # the watch loop is idle again
            began = time.perf_counter()
            module.write_text(f'def main():\n    print("tiny {i + 1}")\n')
            got = line(out)
            took = (time.perf_counter() - began) * 1000
            if got != f"tiny {i + 1}\n".encode():
                raise SystemExit(f"watch printed {got!r}")
            if i >= 2:
                results["watch"].append(took)
    finally:
        if watch is not None:
            watch.terminate()
            watch.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", f"sandrun-{APP}"], capture_output=True, check=False)
    print(f"load average before {load_before}, after {os.getloadavg()}; "
          f"{os.cpu_count()} cores; {options.runs} runs each; the quick path declined "
          f"{len(misses)} time(s) (stale record: refreshed, not timed)")
    print("| measurement | median ms | p90 ms | min ms | runs |")
    print("| --- | --- | --- | --- | --- |")
    for name, label in (("watch", "`sandrun dev --watch`: edit -> new output line"),
                        ("dev", "`sandrun dev PROJECT` (quick record + warm exec, via click)"),
                        ("quick", "quick path alone (what `python -m sandrun dev` would take "
                                  "before click)"),
                        ("exec", "`sandrun exec --read P -w P DEV.pyz` (warm exec reference)"),
                        ("bare", "`python3 -I -B bootstrap.py` (no sandrun, no sandbox)")):
        print(row(label, results[name]))


if __name__ == "__main__":
    main()
