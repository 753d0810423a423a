"""The rooms of service/ import only what docs/architecture.md says they may (read with ast)."""

from __future__ import annotations

import ast
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
#: Modules that use nothing else of the service (but errors).
LEAVES = {
    "service.errors",
    "service.ids",
    "service.netguard",
    "service.logs",
    "service.signals",
    "service.tracing",
    "service.hostfiles",
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
    assert broken_rules("service.api.parcels", "service.jobs.layer") is None
    assert service_imports(MODULES["service.api.parcels"]) >= {"service.jobs.layer"}
