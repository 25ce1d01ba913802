"""One option contract for `sandrun exec`: the click command and the warm path's parser
are both made from options.EXEC_OPTIONS and read every argv the same way; an unknown
option is a usage error, -v works on every subcommand, a non-file bundle is refused."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click
import pytest
from helpers import run_sandrun

import sandrun.__main__
from sandrun.cli import cli, exec_
from sandrun.errors import EnforcementError
from sandrun.launch import options, warm_exec
from sandrun.launch.launcher import ExecOptions
from sandrun.launch.options import EXEC_OPTIONS, VERBOSE


def click_params(argv: list[str]) -> dict[str, Any]:
    """What the click exec command parses from argv (parsing only, nothing runs)."""
    with exec_.make_context("exec", list(argv), obj={"verbose": False}) as ctx:
        return dict(ctx.params)


def click_options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params
            if isinstance(p, click.Option) and p.name is not None}


# The table and the click command


def test_click_command_is_the_table() -> None:
    declared = click_options(exec_)
    assert set(declared) == {option.dest for option in EXEC_OPTIONS}
    for option in EXEC_OPTIONS:
        param = declared[option.dest]
        assert tuple(param.opts + param.secondary_opts) == option.names
        assert param.is_flag == option.flag, option
        assert param.help == option.help
        assert param.envvar == option.envvar
        assert param.multiple == option.multiple, option
        if not option.flag:
            assert param.metavar == option.metavar
            if not option.multiple:  # click's default of a repeatable option is ()
                assert param.default == option.default
            choices = tuple(param.type.choices) if isinstance(param.type, click.Choice) \
                else None
            assert choices == option.choices
    names = [name for option in EXEC_OPTIONS for name in option.names]
    assert len(names) == len(set(names)) == len(options.BY_NAME)


def test_table_fills_exactly_the_exec_options() -> None:
    fields = {f.name for f in dataclasses.fields(ExecOptions)} - {"bundle", "args"}
    filled = [option.field for option in EXEC_OPTIONS if option.field is not None]
    assert sorted(filled) == sorted(fields)
    defaults = ExecOptions(bundle="b", **options.exec_option_fields({}))
    assert defaults == ExecOptions(bundle="b")
    full = options.exec_option_fields({"verify": "full", "dry_run": True, "profile": "web"})
    assert (full["verify_full"], full["dry_run"], full["profile"]) == (True, True, "web")


def test_every_warm_option_has_a_slot() -> None:
    for option in EXEC_OPTIONS:
        if option.warm is not False:
            assert option.dest in warm_exec.ExecArgs.__slots__, option
    served = {o.dest for o in EXEC_OPTIONS if o.warm is not False}
    assert served == {"profile", "user", "python", "store", "trust", "verify", "verbose",
                      # operator grants (issue 13): part of the record's key
                      "env", "env_file", "read", "rw", "bind_tcp", "connect_tcp", "workdir",
                      # issue 16: the audit index is a record input, db and severity in the key
                      "audit_db", "audit_severity"}


def test_record_key_of_a_cold_launch_is_the_warm_parse() -> None:
    """launcher.save_record keys the record by ExecArgs.for_options(options): the warm
    parse of the same command line must find it."""
    argv = ["-p", "web", "-u", "svc", "--python", "/usr/bin/python3", "--store", "/s",
            "--trust", "t.toml", "app.pyz", "x"]
    values = click_params(argv)
    cold = ExecOptions(bundle=values["bundle_path"], args=values["args"],
                       **options.exec_option_fields(values))
    warm = warm_exec.parse_exec_args(argv)
    assert warm is not None
    assert warm_exec.record_key(warm_exec.ExecArgs.for_options(cold), "/s") == \
        warm_exec.record_key(warm, "/s")


# Unknown options


def test_typo_is_a_usage_error_with_a_suggestion(tmp_path: Path) -> None:
    """Through `python -m sandrun`, which tries the warm path first."""
    (tmp_path / "x.pyz").write_bytes(b"")
    proc = run_sandrun("exec", "--store", str(tmp_path / "store"), "--dryrun", "x.pyz",
                       cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "No such option '--dryrun'. Did you mean '--dry-run'?" in proc.stderr
    assert "Traceback" not in proc.stderr and "sandrun: error" not in proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("typo", "meant"), [
    ("--dryrun", "--dry-run"), ("--profil", "--profile"), ("--audit-severty", "--audit-severity"),
    ("--verbos", "--verbose"),
])
def test_typos_are_refused_by_both_parsers(typo: str, meant: str) -> None:
    assert warm_exec.parse_exec_args([typo, "x.pyz"]) is None  # left to click, which:
    with pytest.raises(click.NoSuchOption) as info:
        click_params([typo, "x.pyz"])
    assert (info.value.possibilities or [""])[0] == meant  # the closest first
    assert info.value.exit_code == 2


def test_unknown_short_option_is_refused() -> None:
    assert warm_exec.parse_exec_args(["-x", "app.pyz"]) is None
    with pytest.raises(click.NoSuchOption):
        click_params(["-x", "app.pyz"])


# Everything after the bundle is the app's


@pytest.mark.parametrize("argv", [
    ["app.pyz"],
    ["app.pyz", "--dryrun", "-v", "-p", "x"],
    ["-p", "web", "app.pyz", "--", "-b"],
    ["-v", "--store=/s", "app.pyz", "--verify", "full"],
    ["--", "-app.pyz", "x"],
    ["--", "app.pyz", "--", "--"],
    ["--verify", "cheap", "--trust", "t.toml", "-u", "svc", "--python", "/p", "app.pyz"],
    ["--profile=web", "--user", "--weird", "app.pyz"],  # a value may look like an option
    ["-p", "a", "-p", "b", "app.pyz"],  # the last one counts
    ["-", "x"],
])
def test_warm_parse_is_click_parse(argv: list[str]) -> None:
    """The warm path serves these, and reads them exactly as the click command does."""
    warm = warm_exec.parse_exec_args(argv)
    assert warm is not None
    cold = click_params(argv)
    app_args = list(cold["args"])
    if app_args[:1] == ["--"]:  # exec_ drops it
        app_args = app_args[1:]
    assert (warm.bundle, warm.args) == (cold["bundle_path"], app_args)
    for name in ("profile", "user", "python", "store", "trust", "verify"):
        assert getattr(warm, name) == cold[name], name


@pytest.mark.parametrize("store_env", [None, "", "/env/store"])
@pytest.mark.parametrize("argv", [
    ["app.pyz"],
    ["-p", "web", "app.pyz", "--", "-b"],
    ["-v", "--store=/s", "app.pyz", "--verify", "full"],
    ["--verify", "cheap", "--trust", "t.toml", "-u", "svc", "--python", "/p", "app.pyz"],
    ["-e", "A=1", "--env", "B", "--env-file", "f", "--read", "/r", "--rw", "/w",
     "--bind-tcp", "8080", "--connect-tcp", "443", "-w", "/wd", "--audit-db", "db",
     "--audit-severity", "low", "app.pyz", "x"],
    ["--", "app.pyz", "--", "--"],
])
def test_the_click_free_cold_path_builds_click_s_options(
        argv: list[str], store_env: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """__main__ runs the cold launch of words the warm path parsed without click
    (cli_exec.options_of): the ExecOptions must be the ones the click command builds,
    $SANDRUN_STORE included (click's envvar: an empty value is no value)."""
    from sandrun.cli_exec import options_of

    if store_env is None:
        monkeypatch.delenv("SANDRUN_STORE", raising=False)
    else:
        monkeypatch.setenv("SANDRUN_STORE", store_env)
    parsed = warm_exec.parse_exec_args(argv)
    assert parsed is not None
    values = click_params(argv)
    args = tuple(values.pop("args"))
    expected = ExecOptions(bundle=values.pop("bundle_path"),
                           args=args[1:] if args[:1] == ("--",) else args,
                           **options.exec_option_fields(values))
    assert options_of(parsed) == expected


@pytest.mark.parametrize("argv", [
    ["-pweb", "app.pyz"], ["-p=web", "app.pyz"], ["-vp", "web", "app.pyz"],
    ["--dry-run=1", "app.pyz"], ["--verbose=yes", "app.pyz"], ["--verify", "quick", "app.pyz"],
    ["--json", "app.pyz"], ["--adopt", "app.pyz"], ["--audit-db", "app.pyz"],
    ["-h"], ["--help", "app.pyz"], ["-p"], ["-v"], ["--"],
])
def test_warm_path_leaves_the_rest_to_click(argv: list[str]) -> None:
    assert warm_exec.parse_exec_args(argv) is None


def test_short_option_spellings_click_accepts() -> None:
    """Left to click by the warm path, and read by click as click reads them."""
    assert click_params(["-pweb", "app.pyz"])["profile"] == "web"
    assert click_params(["-p=web", "app.pyz"])["profile"] == "=web"


# -v/--verbose


def test_every_subcommand_takes_verbose() -> None:
    def walk(command: click.Command, path: str) -> list[str]:
        missing = [] if any(set(p.opts) == {"-v", "--verbose"}
                            for p in command.params) else [path]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(cli, "sandrun") == []
    assert len(cli.commands) >= 10


@pytest.mark.parametrize("argv", [
    ["-v", "verify", "{dir}"], ["verify", "-v", "{dir}"], ["verify", "{dir}", "--verbose"],
    ["exec", "-v", "--store", "{store}", "{dir}"], ["--verbose", "exec", "--store", "{store}",
                                                    "{dir}"],
    ["inspect", "--verbose", "{dir}"],
])
def test_verbose_shows_the_traceback(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "d").mkdir()
    args = [a.format(dir=tmp_path / "d", store=tmp_path / "store") for a in argv]
    proc = run_sandrun(*args)
    assert proc.returncode == 125, proc.stderr
    assert "Traceback" in proc.stderr
    assert f"sandrun: error: {'bundle ' if 'exec' in args else ''}{tmp_path / 'd'}" \
        in proc.stderr


def test_verbose_after_the_bundle_is_the_apps() -> None:
    params = click_params(["app.pyz", "-v"])
    assert params["args"] == ("-v",)
    warm = warm_exec.parse_exec_args(["app.pyz", "-v"])
    assert warm is not None and not warm.verbose and warm.args == ["-v"]
    warm = warm_exec.parse_exec_args(["-v", "app.pyz"])
    assert warm is not None and warm.verbose and warm.bundle == "app.pyz"


@pytest.mark.parametrize("verbose", [True, False])
def test_warm_path_errors_are_reported_like_the_cold_path(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        verbose: bool) -> None:
    def refuse(args: warm_exec.ExecArgs) -> int:
        raise EnforcementError("seccomp could not be applied", "check the kernel")

    monkeypatch.setattr(warm_exec, "try_warm_exec", refuse)
    with pytest.raises(SystemExit) as exited:
        sandrun.__main__.main(["exec", *(["-v"] if verbose else []), "app.pyz"])
    assert exited.value.code == EnforcementError.exit_code
    err = capsys.readouterr().err
    assert "sandrun: error: seccomp could not be applied" in err
    assert ("Traceback" in err) == verbose


# Not a file


@pytest.mark.parametrize("kind", ["directory", "FIFO", "character device"])
def test_a_bundle_that_is_not_a_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "app.pyz"
    if kind == "directory":
        path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(path)  # opened non-blocking: never hangs the launch
    else:
        path = Path("/dev/null")
    store = tmp_path / "store"
    for argv in (["exec", "--store", str(store), str(path)],  # warm path tried first
                 ["exec", "--store", str(store), "--dry-run", str(path)]):  # cold only
        proc = run_sandrun(*argv)
        assert proc.returncode == 125, proc.stderr
        assert f"sandrun: error: bundle {path} is a" in proc.stderr
        assert kind in proc.stderr and "not a bundle file" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not store.exists()


def test_verbose_is_the_shared_option() -> None:
    assert VERBOSE in EXEC_OPTIONS and VERBOSE.flag and VERBOSE.field is None
