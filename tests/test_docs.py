"""The README stays true: every setting documented, CI runs its test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line for b in blocks for line in b.splitlines() if line and not line.startswith("#")]


def test_quick_start_is_exactly_two_commands() -> None:
    """The quick start holds two commands: run the service, run the tests."""
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "gunicorn -c gunicorn.conf.py" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's test command, character for character."""
    assert quick_start_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_in_the_readme() -> None:
    """Each JOBPOOL_ variable of Settings has a row in the README's settings table."""
    missing = [name for name, _, _ in Settings.documented() if f"| `{name}` |" not in README]
    assert missing == []
