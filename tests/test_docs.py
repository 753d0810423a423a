"""The README stays true: every setting documented, CI runs its test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings
from service.metrics import Metrics

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


def test_every_metric_is_in_the_readme() -> None:
    """Each metric the service exports has a row in the README's metrics table."""
    text = Metrics().exposition().decode()
    names = re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)
    assert names
    missing = [name for name in names if f"| `{name.removesuffix('_total')}" not in README]
    assert missing == []


def test_readme_points_to_each_operations_topic() -> None:
    """The README leads to the metrics, the log format, the OpenAPI document and deploy/."""
    for needle in ("### Metrics", "### Logs", "GET /openapi.json", "deploy/README.md",
                   "JOBPOOL_METRICS_BIND", ".ci/api-contract"):  # fmt: skip
        assert needle in README, needle


def test_the_docs_point_only_inside_the_repository() -> None:
    """Every relative link of the Markdown files resolves to a file of the repository, and
    none names a path outside it (``../``)."""
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "deploy").glob("*.md"))]  # fmt: skip
    assert ROOT / "docs" / "architecture.md" in pages
    broken = []
    for page in pages:
        text = page.read_text()
        broken += [f"{page.name}: {p}" for p in re.findall(r"\.\./[\w./-]+", text)]
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            if (
                not (page.parent / target).resolve().is_relative_to(ROOT)
                or not (page.parent / target).exists()
            ):
                broken.append(f"{page.name}: {target}")
    assert broken == []
    assert "(docs/architecture.md)" in README
