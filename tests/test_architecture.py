"""The rooms of service/ import only what docs/architecture.md says they may (read with ast),
and that document names only paths that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"

#: What the API may use of the job layer: the facade and the shapes it answers with.
LAYER_SURFACE = {
    "service.jobs.layer",
    "service.jobs.record",
    "service.jobs.state",
    "service.jobs.document",
    "service.jobs.failures",
    "service.jobs.fanout",
}
#: What the callbacks' sender may use of the job layer: the outbox's interface, the record.
CALLBACKS_USE = {"service.jobs.deliveries", "service.jobs.record"}
#: Modules that use nothing else of the service (but errors).
LEAVES = {
    "service.errors",
    "service.ids",
    "service.netguard",
    "service.logs",
    "service.signals",
    "service.tracing",
    "service.hostfiles",
    "service.background",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def service_imports(path: Path) -> set[str]:
    """The service modules ``path`` imports (``from service.x import y`` counts as
    service.x.y when that is a module, else service.x)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("service"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("service"):
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if is_module(full) else node.module)
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {module_name(p): p for p in sorted(SERVICE.rglob("*.py"))}


def within(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


def broken_rules(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``; None when it may."""
    if importer in LEAVES and imported != "service.errors":
        return "a leaf module uses nothing else of the service"
    if within(importer, "service.jobs"):
        for room in ("service.api", "service.tasks", "service.clients", "service.app",
                     "service.metrics", "service.keys", "service.netguard", "service.outbound",
                     "service.callbacks"):  # fmt: skip
            if within(imported, room):
                return "the job layer knows nothing of HTTP, tasks, clients or metrics"
    if within(importer, "service.tasks"):
        if within(imported, "service.api") or within(imported, "service.clients"):
            return "a task knows nothing of HTTP or clients"
        if within(imported, "service.jobs") and imported not in {
            "service.jobs.registry", "service.jobs.context", "service.jobs.failures",
            "service.jobs.retry",
        }:  # fmt: skip
            return "a task uses only the job declaration and its run's context"
    if (
        within(importer, "service.api")
        and within(imported, "service.jobs")
        and imported not in LAYER_SURFACE
    ):
        return "the API talks to the job layer only, not its stores, pools or rooms"
    if within(importer, "service.ui") and within(imported, "service.jobs"):
        # The pages use the job layer as the API does; the fleet's board keeps its snapshots
        # in the shared store, as the fleet's client limits do; slots names the host.
        allowed = LAYER_SURFACE | {"service.jobs.store", "service.jobs.redis.store",
                                   "service.jobs.slots"}  # fmt: skip
        if imported not in allowed:
            return "the dashboard talks to the job layer, not its rooms or pools"
    if within(importer, "service.ui") and within(imported, "service.tasks"):
        return "the dashboard knows jobs by name, not the tasks' code"
    if within(importer, "service.client") and not within(imported, "service.client"):
        return "the client talks to the server over HTTP only, never through its code"
    if within(importer, "service.clients") and (
        within(imported, "service.api") or within(imported, "service.tasks")
    ):
        return "client limits know nothing of HTTP or tasks"
    if within(importer, "service.callbacks"):
        if any(within(imported, room) for room in ("service.api", "service.tasks",
                                                    "service.clients", "service.ui")):  # fmt: skip
            return "callbacks only send: they know nothing of routes, tasks, clients or pages"
        if within(imported, "service.jobs") and imported not in CALLBACKS_USE:
            return "callbacks use only the outbox's interface and the delivery record"
    if within(imported, "service.app") and importer != "service.asgi":
        return "the wiring is loaded by the server, never imported by what it wires"
    if within(imported, "service.ui") and not (
        within(importer, "service.ui") or importer == "service.app"
    ):
        return "the dashboard sits on top: only create_app adds it"
    return None


@pytest.mark.parametrize("importer", sorted(MODULES), ids=str)
def test_each_module_imports_only_what_its_room_may(importer: str) -> None:
    """No module of service/ imports across a wall of the architecture."""
    problems = [
        f"{importer} imports {imported}: {why}"
        for imported in sorted(service_imports(MODULES[importer]))
        if (why := broken_rules(importer, imported)) is not None
    ]
    assert problems == []


def test_the_rules_catch_a_wall_crossed() -> None:
    """The rules are not vacuous: the crossings they exist for are refused."""
    assert broken_rules("service.api.parcels", "service.jobs.sqlite.store") is not None
    assert broken_rules("service.jobs.layer", "service.api.http") is not None
    assert broken_rules("service.tasks.parcels", "service.jobs.layer") is not None
    assert broken_rules("service.ids", "service.config") is not None
    assert broken_rules("service.jobs.deliveries", "service.outbound") is not None
    assert broken_rules("service.ui.pages", "service.jobs.runner") is not None
    assert broken_rules("service.client.cli", "service.config") is not None
    assert broken_rules("service.callbacks.sender", "service.jobs.layer") is not None
    assert broken_rules("service.api.jobs", "service.app") is not None
    assert broken_rules("service.api.jobs", "service.ui.pages") is not None
    assert broken_rules("service.asgi", "service.app") is None
    assert broken_rules("service.app", "service.ui") is None
    assert broken_rules("service.api.parcels", "service.jobs.layer") is None
    assert service_imports(MODULES["service.api.parcels"]) >= {"service.jobs.layer"}


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_every_path_the_architecture_names_exists() -> None:
    """docs/architecture.md names no file or folder of service/ that is not there."""
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"service/[A-Za-z0-9_./]*[A-Za-z0-9_/]", text))
    assert len(named) > 40  # the rooms table alone names more
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_the_architecture_states_the_rules_this_test_applies() -> None:
    """The rooms table lists the same leaves and the same surface of the job layer as the
    rules above."""
    rows = [line for line in ARCHITECTURE.read_text().splitlines() if line.startswith("| ")]
    (leaves,) = [row for row in rows if "| leaves:" in row]
    assert {module_name(ROOT / p) for p in re.findall(r"service/[a-z_]+\.py", leaves)} == LEAVES
    (api,) = [row for row in rows if row.startswith("| `service/api/` |")]
    surface = set(re.findall(r"`([a-z_]+)`", api.split("surface:", 1)[1]))
    assert {f"service.jobs.{name}" for name in surface} == LAYER_SURFACE
    (callbacks,) = [row for row in rows if row.startswith("| `service/callbacks/` |")]
    uses = re.findall(r"`([a-z_]+)`", callbacks.split("only", 1)[1].split(";", 1)[0])
    assert {f"service.jobs.{name}" for name in uses} == CALLBACKS_USE
