"""Exports refuse {cwd} and {project}: a unit or a container has no directory it was
started in, and the exporting shell's would silently be the wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandrun.config.profile import load_profile
from sandrun.errors import EnforcementError
from sandrun.ops.export import refuse_caller_placeholders


@pytest.mark.parametrize(("read", "named"), [
    ('["{project}"]', "{project}"),
    ('["{cwd}/data"]', "{cwd}"),
    ('["{cwd}", "{project}/conf"]', "{cwd}, {project}"),
])
def test_caller_placeholders_are_refused(tmp_path: Path, read: str, named: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[filesystem]\nread = {read}\n')
    with pytest.raises(EnforcementError) as info:
        refuse_caller_placeholders(load_profile(str(path)), "a service")
    assert f"uses {named}" in info.value.message
    assert "absolute paths" in info.value.hint


def test_the_shipped_cli_profile_cannot_be_exported_as_is() -> None:
    with pytest.raises(EnforcementError, match=r"\{project\}"):
        refuse_caller_placeholders(load_profile("cli"), "a container")


def test_profiles_without_them_pass() -> None:
    for name in ("default", "web", "client"):
        refuse_caller_placeholders(load_profile(name), "a service")
