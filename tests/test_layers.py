"""The layering of docs/architecture.md, checked on every module's imports (``ast``, so imports
under ``TYPE_CHECKING`` and inside functions count too: a type is a dependency as well).

Arrows point one way: server -> recovery -> cluster -> transport / protocol / compression, with
the shared low-level modules (config, errors, security, ...) usable from every layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "smartsocket"

# Low-level modules every layer may use; they import only each other and ``protocol``.
SHARED = {
    "_version", "acks", "backoff", "config", "errors", "handlers", "history", "logs",
    "metrics", "security",
}
EDGES = {"protocol", "compression", "http_requests", "handshake", "transport"}
# Shared-level helpers the server uses (token auth, room policies, the config file): above the
# shared modules and protocol, below every layer that serves connections.
HELPERS = {"auth", "config_file", "policies", "room_patterns"}

# What each part (a package under smartsocket/, or a top-level module) may import, besides
# itself. Parts in TOP may import anything; every part is in one or the other (checked below).
ALLOWED: dict[str, set[str]] = {
    # sans-I/O: the wire format only; its errors join the one exception tree (errors imports
    # nothing of ours)
    "protocol": {"errors"},
    "compression": {"protocol", "errors"},  # sans-I/O
    "http_requests": set(),  # plain-request types the gate, transport and routers share
    "handshake": {"protocol", "security", "errors", "http_requests"},
    "transport": {
        "protocol", "compression", "handshake", "http_requests", "security", "errors", "config",
    },
    **{name: SHARED | {"protocol"} for name in SHARED},
    "client": SHARED | EDGES,
    "cluster": SHARED | EDGES,
    "recovery": SHARED | EDGES | {"cluster"},
    "server": SHARED | EDGES | HELPERS | {"cluster", "recovery", "outbox"},
    # helpers, lowest first: the room name patterns, JWT verification, the room policies, the
    # TOML config file (which reads the policies)
    "room_patterns": SHARED | {"protocol"},
    "auth": SHARED | {"protocol", "room_patterns"},
    "policies": SHARED | {"protocol", "auth", "room_patterns"},
    "config_file": SHARED | {"protocol", "auth", "policies", "room_patterns"},
    # the PostgreSQL outbox: takes a publish callable, checks event names with the protocol's rule
    "outbox": SHARED | {"protocol"},
    # Application-facing, but a client of the cluster's broker only: never the server (an
    # emitter process runs no server), and the one recovery tie (the room-log script).
    "emitter": SHARED | EDGES | {"cluster"},
}
# The application-facing top: the package root, entry points, bridges to other servers, test
# helpers and the worker supervisor (it starts whole servers).
TOP = {"", "__main__", "asgi", "cli", "demo", "integrations", "supervisor", "testing"}
# Single modules another part may import although its package is not allowed.
MODULE_ALLOWED: dict[str, set[str]] = {}
# Modules that must not import the event loop (sans-I/O: bytes in, events out).
NO_ASYNCIO = ("protocol", "compression")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("smartsocket", *parts))] = path
    return modules


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (``from a.b import c`` counts ``a.b.c`` when
    that is a module, else ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module or "")
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    part = _part(module)
    if part in TOP:
        return  # the application-facing top
    allowed = ALLOWED[part]
    wrong = []
    for name in sorted(_imports(MODULES[module])):
        if not name.startswith("smartsocket.") or (
            name not in MODULES and name.rsplit(".", 1)[0] in MODULES
        ):
            continue  # not ours, or a name inside a module counted already
        target = _part(name)
        if target in (part, "") or target in allowed:
            continue
        if name in MODULE_ALLOWED.get(part, ()):
            continue
        wrong.append(name)
    assert not wrong, f"{module} ({part}) may not import {wrong}"


@pytest.mark.parametrize("part", NO_ASYNCIO)
def test_sans_io_parts_do_not_import_the_event_loop(part: str) -> None:
    for module, path in MODULES.items():
        if _part(module) == part:
            roots = {name.split(".")[0] for name in _imports(path)}
            assert not roots & {"asyncio", "uvloop", "picows", "socket", "selectors"}, module


def test_no_import_cycle_spans_two_parts() -> None:
    """Cycles inside a package may remain (a part and its owner); none crosses packages."""
    graph = {
        module: {
            name if name in MODULES else name.rsplit(".", 1)[0]
            for name in _imports(path) if name.startswith("smartsocket.")
        } & MODULES.keys()
        for module, path in MODULES.items()
    }
    for module, targets in graph.items():
        for target in targets:
            if _part(target) in (_part(module), ""):
                continue
            # Is there a way back from ``target`` to ``module``?
            seen, todo = {target}, [target]
            while todo:
                for nxt in graph[todo.pop()]:
                    if nxt == module:
                        pytest.fail(f"import cycle across parts: {module} -> {target} -> ...")
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)


def test_the_map_names_real_parts() -> None:
    parts = {_part(module) for module in MODULES}
    unknown = {name for allowed in ALLOWED.values() for name in allowed} - parts
    assert not unknown


def test_every_part_has_a_place() -> None:
    """A new package or top-level module must be declared: in ALLOWED (its layer) or TOP."""
    parts = {_part(module) for module in MODULES}
    assert not parts - ALLOWED.keys() - TOP, "declare these parts in tests/test_layers.py"
    assert not ALLOWED.keys() & TOP


def test_only_the_transport_imports_picows() -> None:
    """picows (and aiofastnet, its socket transport) stay behind the transport package."""
    importers = {
        module for module, path in MODULES.items()
        if {name.split(".")[0] for name in _imports(path)} & {"picows", "aiofastnet"}
    }
    assert importers and all(_part(module) == "transport" for module in importers), importers
