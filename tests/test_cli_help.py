"""``scaling --help`` and ``scaling <command> --help``: the command's usage and its own flags, exit 0."""

import sys

import pytest

from scaling import cli


def help_of(capsys, *args: str) -> str:
    saved, sys.argv = sys.argv, ["scaling", *args]
    try:
        with pytest.raises(SystemExit) as exit:
            cli.main()
    finally:
        sys.argv = saved
    assert exit.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_lists_its_usage_and_only_its_own_flags(capsys, command):
    text = help_of(capsys, command, "--help")
    assert f"usage: {cli.USAGES[command]}" in text
    own = set(cli.COMMAND_FLAGS[command])
    others = {name for flags in cli.COMMAND_FLAGS.values() for name in flags} - own
    listed = {line.split()[0].removeprefix("--") for line in text.splitlines() if line.startswith("  --")}
    assert own <= listed and not listed & others
    assert "USAGE: scaling" not in text  # not absl's generic help


def test_top_level_help_lists_every_command(capsys):
    text = help_of(capsys, "--help")
    assert all(f"  {name} " in text for name in cli.COMMANDS)
    assert help_of(capsys, "-h") == text
