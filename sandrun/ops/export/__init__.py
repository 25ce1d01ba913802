

from sandrun.config.profile import CALLER_PLACEHOLDERS, Profile
from sandrun.errors import EnforcementError


def refuse_caller_placeholders(profile: Profile, engine: str) -> None:
    """{cwd} and {project} are where `sandrun exec` was started: a unit or a container has
    no such directory, and the exporting shell's would be the wrong one."""
    used = sorted(profile.placeholders_used() & CALLER_PLACEHOLDERS)
    if used:
        names = ", ".join("{" + name + "}" for name in used)
        raise EnforcementError(
            f"profile {profile.source} uses {names}: the directory sandrun exec starts in "
            f"(and its project); {engine} has none of its own",
            f"write an operator profile (-p) with absolute paths instead of {names}")
