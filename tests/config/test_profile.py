"""Profiles: table-driven invalid files, extends chains, expansion, shipped profiles.

Every tests/profiles/invalid/NAME.toml must fail to load, and the error must
contain each line of its sibling NAME.expect. Pure logic: no root needed.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path

import pytest
from helpers import TESTS

from sandrun.config.profile import (
    DNS_FILES,
    LANDLOCK_ABI_MAX,
    PLACEHOLDERS,
    RLIMITS,
    Profile,
    check_files,
    load_profile,
    load_profile_text,
    render_toml,
    shipped_profile_path,
    shipped_profiles,
)
from sandrun.errors import EXIT_REFUSED, Problem, ProfileError

HERE = TESTS / "profiles"
INVALID = sorted((HERE / "invalid").glob("*.toml"))
VALID = sorted((HERE / "valid").glob("*.toml"))
SHIPPED = ["cli", "client", "default", "git", "gunicorn", "web"]
PLACES = {
    "app": "demo",
    "store": "/var/lib/sandrun/apps/abc123",
    "state": "/var/lib/sandrun/state/demo",
    "tmp": "/var/lib/sandrun/state/demo/tmp",
    "home": "/var/lib/sandrun/state/demo/home",
    "cwd": "/home/user/project/src",
    "project": "/home/user/project",
}


def load_error(path: str) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    return info.value


# ---------------------------------------------------------------- invalid files

def test_every_invalid_fixture_has_an_expect_file() -> None:
    assert len(INVALID) >= 25
    expects = {p.stem for p in (HERE / "invalid").glob("*.expect")}
    assert expects == {p.stem for p in INVALID}


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_profile_reports_expected_problems(path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    # Run from the fixture dir so `where` shows short, predictable file names.
    monkeypatch.chdir(path.parent)
    error = load_error(f"./{path.name}")
    assert error.exit_code == EXIT_REFUSED
    assert error.problems, "a ProfileError must list its problems"
    text = error.diagnostics()
    for needle in path.with_suffix(".expect").read_text("utf-8").splitlines():
        if needle:
            assert needle in text, f"{needle!r} missing from:\n{text}"
    for problem in error.problems:
        assert problem.hint, f"problem without a hint: {problem}"


def test_all_problems_are_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE / "invalid")
    error = load_error("./many_problems.toml")
    assert [p.where.split(": ")[0] for p in error.problems] == [
        "many_problems.toml:5", "many_problems.toml:8", "many_problems.toml:11",
        "many_problems.toml:14", "many_problems.toml:17"]


def test_errors_in_parent_and_child_are_reported_together(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(HERE / "invalid")
    wheres = {p.where for p in load_error("./parent_invalid.toml").problems}
    assert wheres == {"parents/broken.toml:2: filesystem.raed",
                      "parent_invalid.toml:3: network.bind_tcp"}


def test_cycle_shows_the_chain(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "sub/c.toml"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.toml").write_text('description = "c"\nextends = "../a.toml"\n')
    error = load_error(str(tmp_path / "a.toml"))
    [problem] = error.problems
    assert problem.where == f"{tmp_path}/sub/c.toml:2: extends"
    assert problem.what == (f"extends forms a cycle: {tmp_path}/a.toml -> {tmp_path}/b.toml -> "
                            f"{tmp_path}/sub/c.toml -> {tmp_path}/a.toml")


def test_unknown_shipped_name() -> None:
    error = load_error("nosuch")
    assert "no shipped profile 'nosuch'" in error.diagnostics()
    assert "cli, client, default, git, gunicorn, web" in error.diagnostics()
    with pytest.raises(ProfileError):
        shipped_profile_path("../profiles/default")


def test_missing_file() -> None:
    error = load_error("/nonexistent/profile.toml")
    assert "no such file: /nonexistent/profile.toml" in error.diagnostics()


# ---------------------------------------------------------------- chains and merging

def test_three_level_chain_merges_lists_scalars_and_tables() -> None:
    profile = load_profile(str(HERE / "chain" / "app.toml"))
    default = load_profile("default")
    assert profile.name == "chained-app"
    assert profile.description == "leaf of the chain"  # never inherited
    # Lists: union, parent order first, deduplicated.
    assert profile.read == ("/etc/ssl/certs", "/usr/share/base", "/usr/share/mid",
                            "/usr/share/app")
    assert profile.read_write == ("{state}", "{state}/cache")
    assert profile.optional_read == default.optional_read
    assert profile.execute == ("/usr/bin/git",)
    assert profile.connect_tcp == (443, 80)
    assert profile.bind_tcp == (8080,)
    assert profile.env_pass == ("LANG", "LC_ALL", "TZ", "HOME_REGION")
    assert profile.syscalls_allow == ("@timer", "ptrace")
    assert profile.syscalls_deny == ("@obsolete",)
    # Scalars: the nearest file that sets them wins.
    assert (profile.dns, profile.subprocess, profile.fork, profile.mdwe) == (True, True, True,
                                                                              False)
    assert profile.landlock_min_abi == 7
    # Tables: merged per key.
    assert dict(profile.env_set) == {"EXTRA": "{state}/x", "LEVEL": "2", "MODE": "base"}
    assert dict(profile.rlimits) == {"core": 0, "cpu": None, "nofile": 1024}
    assert profile.source == str(HERE / "chain" / "app.toml")


def test_middle_of_chain_loads_on_its_own() -> None:
    profile = load_profile(str(HERE / "chain" / "layers" / "mid.toml"))
    assert profile.name == "mid"
    assert profile.read == ("/etc/ssl/certs", "/usr/share/base", "/usr/share/mid")
    assert dict(profile.env_set) == {"LEVEL": "2", "MODE": "base"}


def test_empty_profile_is_most_restricted() -> None:
    profile = load_profile(str(HERE / "valid" / "empty.toml"))
    assert profile.read == profile.read_write == profile.execute == ()
    assert profile.bind_tcp == profile.connect_tcp == ()
    assert not profile.dns and not profile.subprocess
    assert profile.mdwe and profile.fork
    assert profile.env_pass == () and dict(profile.env_set) == {}
    assert profile.landlock_min_abi == 6


def test_dotted_keys_and_subtables() -> None:
    profile = load_profile(str(HERE / "valid" / "dotted_and_tables.toml"))
    assert profile.read == ("/etc/hosts",)
    assert profile.env_pass == ("LANG",)
    assert dict(profile.env_set) == {"MODE": "dotted"}
    assert dict(profile.rlimits) == {"nofile": 64}


def test_line_numbers_for_dotted_keys_and_subtables() -> None:
    text = ("[process.env]\npass = [\"LANG\"]\nset.BAD = 1\n\n[process.rlimits]\n"
            "nofile = -1\n")
    with pytest.raises(ProfileError) as info:
        load_profile_text(text, "t.toml")
    assert [p.where for p in info.value.problems] == ["t.toml:3: process.env.set.BAD",
                                                       "t.toml:6: process.rlimits.nofile"]


def test_embedded_profile_may_extend_only_shipped_names(tmp_path: Path) -> None:
    assert load_profile_text('extends = "web"\n', "bundle").bind_tcp == (8000,)
    with pytest.raises(ProfileError) as info:
        load_profile_text('extends = "other.toml"\n', "bundle")
    assert "only shipped profile names can be extended" in info.value.diagnostics()
    (tmp_path / "other.toml").write_text("[network]\nbind_tcp = [1]\n")
    profile = load_profile_text('extends = "other.toml"\n', "x", base_dir=tmp_path)
    assert profile.bind_tcp == (1,)


def test_paths_are_normalised_and_duplicate_ports_dropped() -> None:
    profile = load_profile_text(
        '[filesystem]\nread = ["/etc//ssl/./certs/", "/etc/ssl/certs", "//srv"]\n'
        "[network]\nbind_tcp = [80, 80, 81]\n")
    assert profile.read == ("/etc/ssl/certs", "/srv")
    assert profile.bind_tcp == (80, 81)


# ---------------------------------------------------------------- expansion

def test_expand_substitutes_and_normalises() -> None:
    profile = load_profile(str(HERE / "valid" / "everything.toml"))
    expanded = profile.expand(PLACES)
    assert expanded.read_write == ("/var/lib/sandrun/state/demo",
                                   "/var/lib/sandrun/state/demo/tmp", "/var/log/demo")
    assert expanded.optional_read == ("/var/lib/sandrun/state/demo/home/.config",)
    assert expanded.execute == ("/usr/bin/git",
                                "/var/lib/sandrun/apps/abc123/site-packages/bin/helper")
    assert expanded.env_set["PATH"] == "/var/lib/sandrun/apps/abc123/bin:/usr/bin"
    assert expanded.env_set["WHO"] == "demo"
    assert expanded.env_set["BRACES"] == "{not a placeholder} {}"
    assert expanded.read == profile.read
    assert expanded.expand(PLACES) == expanded  # nothing left to expand
    assert profile.read_write[0] == "{state}"  # the original is untouched


def test_expand_needs_only_the_placeholders_used() -> None:
    expanded = load_profile("default").expand({"state": "/s/app"})
    assert expanded.read_write == ("/s/app",)


@pytest.mark.parametrize(("text", "places", "message"), [
    ('[filesystem]\nread = ["{cwd}"]\n', {}, "placeholder {cwd} in '{cwd}' has no value"),
    ('[filesystem]\nread = ["{cwd}/x"]\n', {"cwd": "/"}, "would grant the whole file system"),
    ('[filesystem]\nread = ["{state}"]\n', {"state": "relative"}, "not an absolute path"),
    ('[filesystem]\nread = ["{state}"]\n', {"state": "/a/../b"}, "without '..'"),
    ('[filesystem]\nread = ["/log/{app}"]\n', {"app": "../x"}, "which is not a file name"),
    ('[filesystem]\nread = ["/log/{app}"]\n', {}, "which is not a file name"),
    ('[process]\nenv = { set = { X = "{tmp}/y" } }\n', {}, "placeholder {tmp} has no value"),
    ('[filesystem]\nread_write = ["/var/lib"]\n', PLACES, "overlaps the app's code"),
    ('[filesystem]\nread_write = ["/"]\n', PLACES, "overlaps the app's code"),
    ('[filesystem]\nread_write = ["{cwd}"]\n', {**PLACES, "cwd": PLACES["store"] + "/pkg"},
     "overlaps the app's code"),
    ('[filesystem]\nread_write = ["{home}"]\nexecute = ["{state}/home/bin/x"]\n'
     "[process]\nsubprocess = true\n", PLACES, "the app could replace the program"),
])
def test_expand_refuses(text: str, places: dict[str, str], message: str) -> None:
    profile = load_profile_text(text, "t.toml")
    with pytest.raises(ProfileError) as info:
        profile.expand(places)
    assert message in info.value.diagnostics()
    assert info.value.exit_code == EXIT_REFUSED


# ---------------------------------------------------------------- shipped profiles

def test_shipped_profiles_are_listed_with_descriptions() -> None:
    listed = shipped_profiles()
    assert [name for name, _ in listed] == SHIPPED
    assert all(description for _, description in listed)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_round_trips(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.source == f"shipped:{name}"
    assert shipped_profile_path(name).name == f"{name}.toml"
    assert check_files([str(shipped_profile_path(name))]) == []
    text = render_toml(profile)
    again = load_profile_text(text, "bundle/.sandrun/profile.toml")
    assert again == profile
    assert render_toml(again) == text
    assert "extends" not in text and "#" not in text
    assert profile.expand(PLACES).read_write[0] == PLACES["state"]


def test_shipped_profiles_say_what_the_brief_promises() -> None:
    default, cli, web, client = (load_profile(n) for n in ("default", "cli", "web", "client"))
    assert default.read == () and default.read_write == ("{state}",)
    assert not default.subprocess and not default.dns
    assert default.bind_tcp == default.connect_tcp == ()
    assert default.env_pass == ("LANG", "LC_ALL", "TZ")
    assert dict(default.rlimits) == {"core": 0}
    assert default.landlock_min_abi == 6 and default.mdwe
    assert "{cwd}" in cli.read_write and cli.bind_tcp == cli.connect_tcp == ()
    assert web.bind_tcp == (8000,) and web.connect_tcp == () and web.dns and web.fork
    assert "/etc/ssl/certs" in web.read and "/usr/share/ca-certificates" in web.optional_read
    assert client.connect_tcp == (443, 80) and client.bind_tcp == () and client.dns
    assert "/etc/ssl/certs" in client.read


def test_default_toml_documents_every_key() -> None:
    text = shipped_profile_path("default").read_text("utf-8")
    for key in ("extends", "description", "read", "optional_read", "read_write", "execute",
                "bind_tcp", "connect_tcp", "dns", "subprocess", "fork", "mdwe", "env",
                "rlimits", "allow", "deny", "landlock_min_abi"):
        assert f"{key} =" in text, key
    for placeholder in PLACEHOLDERS:
        assert f"{{{placeholder}}}" in text, placeholder
    for rlimit in RLIMITS:
        assert rlimit in text, rlimit


# ---------------------------------------------------------------- rendering and API

@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_files_round_trip(path: Path) -> None:
    profile = load_profile(str(path))
    assert load_profile_text(render_toml(profile), str(path)) == profile


def test_render_escapes_strings() -> None:
    profile = load_profile(str(HERE / "valid" / "everything.toml"))
    assert profile.name == "every key"
    assert profile.description == 'quotes " backslash \\ unicode é ✓ \'single\''
    assert profile.env_set["GREETING"] == 'say "hi"'
    assert profile.env_set["TABBED"] == "a\tb\x7f"
    assert profile.rlimits["as"] is None
    text = render_toml(profile)
    assert 'description = "quotes \\" backslash \\\\ unicode é ✓ \'single\'"' in text
    assert 'TABBED = "a\\u0009b\\u007f"' in text
    assert 'as = "infinity"' in text


def test_profile_is_immutable_and_hashable() -> None:
    profile = load_profile("web")
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.dns = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.env_set["X"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        profile.rlimits["core"] = 1  # type: ignore[index]
    assert hash(profile) == hash(load_profile("web"))
    assert isinstance(profile, Profile)


def test_source_is_not_part_of_equality() -> None:
    profile = load_profile("cli")
    assert dataclasses.replace(profile, source="elsewhere") == profile
    assert dataclasses.replace(profile, dns=True) != profile


def test_check_files_lists_every_problem_of_every_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('extends = "web"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\nbind_tcp = [0, 70000]\n")
    problems = check_files([str(good), str(bad), str(tmp_path / "missing.toml")])
    assert all(isinstance(p, Problem) for p in problems)
    assert [p.where for p in problems] == [f"{bad}:2: network.bind_tcp"] * 2 + [
        str(tmp_path / "missing.toml")]
    assert check_files([str(good)]) == []


def test_rlimit_names_map_to_resource_constants() -> None:
    assert RLIMITS["nofile"] == resource.RLIMIT_NOFILE and RLIMITS["as"] == resource.RLIMIT_AS
    assert set(RLIMITS) == {"nofile", "nproc", "core", "as", "fsize", "cpu", "memlock", "stack",
                            "data"}


def test_constants() -> None:
    assert LANDLOCK_ABI_MAX == 7
    assert all(os.path.isabs(p) for p in DNS_FILES) and "/etc/resolv.conf" in DNS_FILES
