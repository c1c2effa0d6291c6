"""The docs stay in step with the code."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import smartsocket
from smartsocket.config import env_names, option_fields

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Classes the README names with their module, not from the package root.
ELSEWHERE = {"Recorder": "smartsocket.testing", "SmartSocketASGI": "smartsocket.asgi"}


def _config_table() -> list[list[str]]:
    """The cells of the README's configuration table, one list per option row."""
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    lines = section.split("| option | env vars | CLI flag | default | meaning |", 1)[1].splitlines()
    rows = [line for line in lines[2:] if line.startswith("|")]  # past the |---| line
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def _default_cell(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def test_readme_config_table_has_every_option_once_with_env_flag_and_default() -> None:
    from smartsocket.cli import build_parser

    serve = next(
        action.choices["serve"]
        for action in build_parser()._actions
        if isinstance(action.choices, dict) and "serve" in action.choices
    )
    flags = {flag: action.dest for action in serve._actions for flag in action.option_strings}
    table = _config_table()
    names = [re.fullmatch(r"`(\w+)`", row[0]) for row in table]
    assert all(names), "every row of the config table starts with `option`"
    listed = [m.group(1) for m in names if m]
    fields = {f.name: f for f in option_fields()}
    assert sorted(set(listed) - set(fields)) == [], "README config table names no such option"
    assert sorted(set(fields) - set(listed)) == [], "README config table misses options"
    assert len(listed) == len(set(listed)), "an option appears twice in the config table"
    for name, row in zip(listed, table, strict=True):
        assert len(row) == 5, f"row of {name} has {len(row)} cells"
        _, env, cli, default, meaning = row
        assert re.findall(r"`(\w+)`", env) == env_names(name), f"env vars of {name}"
        row_flags = re.findall(r"`(--[\w-]+)`", cli)
        assert row_flags, f"row of {name} names no CLI flag"
        for flag in row_flags:
            assert flags.get(flag) == name, f"{flag} (row {name}) is not a serve flag for it"
        assert default == _default_cell(fields[name].default), f"default of {name}"
        assert meaning, f"row of {name} says nothing"


def test_public_api_is_importable() -> None:  # ruff (RUF022) keeps __all__ sorted
    for name in smartsocket.__all__:
        assert hasattr(smartsocket, name)


def test_readme_lists_exactly_the_public_names() -> None:
    """The README's API section says what ``from smartsocket import ...`` offers: that list is
    ``__all__``, and every class of the package the README names is importable from the root."""
    listing = re.search(r"Public names come from the package root.*?\n\n", README, re.S)
    assert listing is not None, "README misses its list of public names"
    listed = re.findall(r"`(\w+)`", listing.group(0).split("Every exception")[0])
    assert sorted(listed) == sorted(smartsocket.__all__)

    classes = {
        name
        for module in list(sys.modules.values())
        if (module.__name__ or "").startswith("smartsocket")
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__.startswith("smartsocket")
    }
    named = set(re.findall(r"`([A-Z]\w+)[`(.]", README))
    for name in sorted(named & classes):
        if name in ELSEWHERE:
            assert f"`{ELSEWHERE[name]}" in README, f"say where {name} comes from"
        else:
            assert name in smartsocket.__all__, f"README names {name}: export it"


def test_one_exception_tree() -> None:
    from smartsocket import errors

    exceptions = [getattr(smartsocket, n) for n in smartsocket.__all__]
    exceptions = [e for e in exceptions if inspect.isclass(e) and issubclass(e, BaseException)]
    assert {e.__name__ for e in exceptions} >= {"AuthError", "LimitExceeded", "ConfigError"}
    for exc in exceptions:
        assert issubclass(exc, smartsocket.SmartSocketError), exc
        assert re.search(rf"\b{exc.__name__}\s", errors.__doc__ or ""), f"errors.py: draw {exc}"


def test_readme_performance_figures_come_from_bench_results() -> None:
    sys.path.insert(0, str(ROOT))  # bench/ is the repository's, not installed
    try:
        from bench import readme
    finally:
        sys.path.remove(str(ROOT))
    data = readme.results_data()
    parts = readme.render(data)
    assert readme.rewrite(README, parts) == README, "run `python -m bench readme`"
    # The headline quotes the table: both ratios against python-socketio.
    acks, fanout = re.findall(r"([\d.]+x) (?:python-socketio's acked|its room fan-out)",
                              parts["headline"])
    table = parts["table"].splitlines()
    assert any(line.startswith("| acked") and f"({acks} /" in line for line in table)
    assert any(line.startswith("| room fan-out") and f"({fanout} /" in line for line in table)
    # and a new result changes them
    data["ack"]["measures"]["ack"]["smartsocket"]["metric"] *= 2
    assert readme.render(data)["headline"] != parts["headline"]


def test_protocol_doc_covers_every_close_and_error_code() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for code in smartsocket.CloseCode:
        assert f"| {int(code)} |" in doc, f"protocol.md misses close code {int(code)}"
    for error in smartsocket.ErrorCode:
        if error.value not in ("timeout", "disconnected"):  # local only, never on the wire
            assert f"`{error.value}`" in doc, f"protocol.md misses error code {error.value}"


def test_protocol_doc_lists_every_system_event() -> None:
    """Every ``"$name"`` the server, the clients or the cluster put on the wire has a row in
    protocol.md's table of system events (JSON Schema's ``$ref`` is not an event)."""
    doc = (ROOT / "docs" / "protocol.md").read_text()
    source = ROOT / "src" / "smartsocket"
    files = [*source.rglob("*.py"), *(source / "static").glob("client.*js")]
    names = {
        name
        for path in files
        if path.name != "api_schema.py"
        for name in re.findall(r"[\"'](\$[a-z_]+)[\"']", path.read_text())
    }
    assert {"$welcome", "$refresh", "$left", "$gap"} <= names
    for name in sorted(names):
        assert f"| `{name}` |" in doc, f"protocol.md section 3 misses {name}"


def test_readme_close_code_table_has_every_close_code() -> None:
    section = README.split("## Protocol and close codes", 1)[1].split("\n## ", 1)[0]
    listed = {int(code) for row in section.splitlines() if row.startswith("| ")
              for code in re.findall(r"\b(\d{4})\b", row.split(" | ")[0])}
    assert listed == {int(code) for code in smartsocket.CloseCode}
