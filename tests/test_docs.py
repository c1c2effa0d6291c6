"""The docs stay in step with the code."""

from __future__ import annotations

from pathlib import Path

import smartsocket
from smartsocket.config import env_names, option_fields

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_table_lists_every_option_and_env_var() -> None:
    readme = (ROOT / "README.md").read_text()
    for f in option_fields():
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{f.name}` |")]
        row = rows[0] if rows else None
        assert row is not None, f"README config table misses {f.name}"
        for var in env_names(f.name):
            assert f"`{var}`" in row, f"README row of {f.name} misses {var}"


def test_public_api_is_importable() -> None:  # ruff (RUF022) keeps __all__ sorted
    for name in smartsocket.__all__:
        assert hasattr(smartsocket, name)


def test_protocol_doc_covers_every_close_and_error_code() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for code in smartsocket.CloseCode:
        assert f"| {int(code)} |" in doc, f"protocol.md misses close code {int(code)}"
    for error in smartsocket.ErrorCode:
        if error.value not in ("timeout", "disconnected"):  # local only, never on the wire
            assert f"`{error.value}`" in doc, f"protocol.md misses error code {error.value}"
