from click.testing import CliRunner
from greet import greeting
from greet.cli import code_check, main


def test_greeting():
    assert greeting("you") == "hello, you"


def test_cli_shouts():
    result = CliRunner().invoke(main, ["you", "--shout"])
    assert result.exit_code == 0
    assert result.output == "HELLO, YOU\n"


def test_code_is_read_only():
    # Under `sandrun test` the project tree is granted read-only.
    assert code_check().startswith("my code is read-only")
