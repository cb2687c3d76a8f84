"""The guides' own-loop examples, read from docs/<guide>.md so that the tests run exactly what users read.

Each guide marks its example with `<!-- own-loop example: executed by tests/test_<guide>_protocol.py -->`
followed by a ```python block.
"""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARKER = "<!-- own-loop example: executed by tests/test_{}_protocol.py -->"


def doc_path(guide: str) -> Path:
    return DOCS / f"{guide}.md"


def own_loop_code(guide: str, test: str | None = None) -> str:
    """The example of docs/<guide>.md; `test` names the test file's method when it is not the guide's name
    (docs/adapters.md's example is run by tests/test_nola_protocol.py)."""
    text = doc_path(guide).read_text()
    marker = MARKER.format(test or guide)
    if marker not in text:
        raise AssertionError(f"docs/{guide}.md has no line {marker!r}")
    return re.search(r"```python\n(.*?)```", text[text.index(marker):], re.S).group(1)
