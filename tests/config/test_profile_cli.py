"""`sandrun profile list | show | check` with -q (nothing on stdout, same exit code, errors
still on stderr) and --json (one JSON document on stdout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TESTS, run_sandrun

from sandrun.config.profile import load_profile, profile_to_json, shipped_profiles

INVALID = sorted((TESTS / "profiles" / "invalid").glob("*.toml"))


def test_profile_list() -> None:
    plain = run_sandrun("profile", "list")
    assert plain.returncode == 0 and "cli " in plain.stdout
    data = json.loads(run_sandrun("profile", "list", "--json").stdout)
    assert data == [{"name": n, "description": d} for n, d in shipped_profiles()]
    quiet = run_sandrun("profile", "list", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_profile_show() -> None:
    data = json.loads(run_sandrun("profile", "show", "--json", "cli").stdout)
    assert data["source"] == "shipped:cli"
    assert data["profile"] == profile_to_json(load_profile("cli"))
    assert data["profile"]["filesystem"]["read"] == ["{project}"]
    assert data["profile"]["limits"]["memory"] == 1 << 30
    assert data["enforcement"] and all(isinstance(x, str) for x in data["enforcement"])
    assert data["files"][0].endswith("profiles/cli.toml")  # then what it extends
    quiet = run_sandrun("profile", "show", "-q", "web")
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_profile_show_of_an_invalid_file_keeps_the_error_format() -> None:
    for flags in (["-q"], ["--json"]):
        proc = run_sandrun("profile", "show", *flags, str(INVALID[0]))
        assert proc.returncode == 125 and proc.stdout == ""
        assert proc.stderr.startswith("sandrun: error: profile ")


def test_profile_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('extends = "cli"\n')
    ok = json.loads(run_sandrun("profile", "check", "--json", str(good)).stdout)
    assert ok == {"ok": True, "files": [str(good)], "problems": []}
    quiet = run_sandrun("profile", "check", "-q", str(good))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

    bad = run_sandrun("profile", "check", "--json", str(good), str(INVALID[0]))
    assert bad.returncode == 1 and bad.stderr == ""
    data = json.loads(bad.stdout)
    assert data["ok"] is False and data["problems"]
    assert set(data["problems"][0]) == {"where", "what", "hint"}
    assert data["problems"][0]["where"].startswith(str(INVALID[0]))
    quiet_bad = run_sandrun("profile", "check", "-q", str(INVALID[0]))
    assert quiet_bad.returncode == 1 and quiet_bad.stdout == ""
    assert str(INVALID[0]) in quiet_bad.stderr  # the problems are still reported


@pytest.mark.parametrize("command", [["profile", "list"], ["profile", "show", "cli"],
                                     ["profile", "check", "x.toml"]])
def test_quiet_and_json_exclude_each_other(command: list[str]) -> None:
    proc = run_sandrun(*command[:2], "-q", "--json", *command[2:])
    assert proc.returncode == 2 and proc.stdout == ""
    assert "choose one" in proc.stderr
