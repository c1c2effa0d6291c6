"""``python -m bench compare``'s pure parts: options the base does not know are left out of
its command, and the table lands in its own section of RESULTS.md."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a top-level package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from bench.compare import ratio, write_section  # noqa: E402
from bench.servers import known_args  # noqa: E402


def test_unknown_options_and_their_values_are_left_out() -> None:
    args = ["-m", "smartsocket", "serve", "--port", "1", "--rate-limit-frames", "0",
            "--new-switch", "--log-level", "WARNING", "--new-eq=3"]
    known = {"--port", "--log-level"}
    assert known_args(args, known) == ["-m", "smartsocket", "serve", "--port", "1",
                                       "--log-level", "WARNING"]


def test_ratio_is_above_one_when_new_is_better_either_way() -> None:
    assert ratio(110.0, 100.0, True) == 1.1
    assert ratio(90.0, 100.0, False) == 100.0 / 90.0
    assert ratio(None, 100.0, True) is None


def test_the_section_is_added_once_then_replaced(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# B\n\n## How to run\n\ntext\n\n## Results\n\n<!-- results:start -->\n"
                    "<!-- results:end -->\n")
    write_section(path, "Cost", "table one\n")
    write_section(path, "Cost", "table two\n")
    text = path.read_text()
    assert text.count("## Cost") == 1 and "table two" in text and "table one" not in text
    assert text.index("## How to run") < text.index("## Cost") < text.index("## Results")
