"""The click-free cold launch (sandrun/cli_exec.py, routed by sandrun/__main__.py): when
it hands the launch to the native front, and how it reports what interrupts it.

Pure logic with the exec and the front's check replaced (the real hand-off, as root,
is in test_native_front.py).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import sandrun.__main__ as entry
from sandrun import cli_exec
from sandrun.launch import native_record, warm_exec


class Execd(Exception):
    """What the replaced os.execve raises instead of replacing the process."""


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, list[str], dict[str, str]]]:
    calls: list[tuple[Any, list[str], dict[str, str]]] = []

    def execve(program: Any, argv: list[str], env: dict[str, str]) -> None:
        calls.append((program, argv, env))
        raise Execd

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(native_record, "trusted_front", lambda: 99)
    monkeypatch.setattr(warm_exec, "INVOKED", ["-v", "app.pyz", "--", "x"])
    monkeypatch.delenv(native_record.COLD_ENV, raising=False)
    return calls


def test_the_entry_script_hands_the_launch_to_the_front(
        execs: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/opt/sandrun/bin/sandrun-py"])
    before = signal.getsignal(signal.SIGPIPE)
    with pytest.raises(Execd):
        cli_exec.hand_to_front("0123456789abcdef.native")
    [(program, argv, env)] = execs
    assert program == 99 and argv == ["sandrun", "exec", "-v", "app.pyz", "--", "x"]
    assert env[native_record.COLD_ENV] == "0123456789abcdef.native"
    # the front (and the app) get the dispositions a shell gives: restored on failure
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL
    signal.signal(signal.SIGPIPE, before)


@pytest.mark.parametrize("case", ["python -m", "fell back", "no words", "no front"])
def test_no_hand_off(case: str, execs: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m sandrun` (the front next to the interpreter may be another install's),
    a front that fell back after a hand-off (it would again), a launch not started from
    `exec` words, an untrusted front: Python launches itself."""
    monkeypatch.setattr(sys, "argv", ["/opt/sandrun/bin/sandrun-py"])
    if case == "python -m":
        monkeypatch.setattr(sys, "argv", [str(Path(entry.__file__))])
    elif case == "fell back":
        monkeypatch.setenv(native_record.COLD_ENV, "0123456789abcdef.native")
    elif case == "no words":
        monkeypatch.setattr(warm_exec, "INVOKED", None)
    else:
        monkeypatch.setattr(native_record, "trusted_front", lambda: None)
    cli_exec.hand_to_front("0123456789abcdef.native")
    assert execs == []


def test_a_failed_exec_restores_the_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = []

    def execve(*_: object) -> None:
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(os, "close", closed.append)
    monkeypatch.setattr(native_record, "trusted_front", lambda: 99)
    monkeypatch.setattr(warm_exec, "INVOKED", ["app.pyz"])
    monkeypatch.setattr(sys, "argv", ["/opt/sandrun/bin/sandrun"])
    monkeypatch.delenv(native_record.COLD_ENV, raising=False)
    before = signal.getsignal(signal.SIGPIPE), signal.getsignal(signal.SIGXFSZ)
    cli_exec.hand_to_front("0123456789abcdef.native")
    assert (signal.getsignal(signal.SIGPIPE), signal.getsignal(signal.SIGXFSZ)) == before
    assert closed == [99]


def _parsed() -> warm_exec.ExecArgs:
    parsed = warm_exec.parse_exec_args(["app.pyz"])
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(("raised", "code", "stderr"), [
    (KeyboardInterrupt(), 130, "\nsandrun: aborted\n"),
    (EOFError(), 130, "\nsandrun: aborted\n"),
    (BrokenPipeError(32, "Broken pipe"), 1, ""),
])
def test_the_cold_path_ends_as_the_click_command_does(
        raised: BaseException, code: int, stderr: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """click turns Ctrl-C and EOF into "Aborted" (exit 130) and a closed stdout into
    exit 1; the click-free cold path says the same."""
    def launch() -> int:
        raise raised

    with pytest.raises(SystemExit) as exited:
        entry._reporting_errors(_parsed(), launch, as_click=True)
    assert exited.value.code == code
    assert capsys.readouterr().err == stderr


def test_the_warm_path_keeps_its_own_endings(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    def broken() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(SystemExit) as exited:
        entry._reporting_errors(_parsed(), interrupted)
    assert exited.value.code == 130 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as exited:
        entry._reporting_errors(_parsed(), broken)
    assert exited.value.code == 125
    assert capsys.readouterr().err.startswith("sandrun: internal error: BrokenPipeError")
