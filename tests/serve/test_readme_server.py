"""The README's server examples run as written, against a real server on the tiny model.

The blocks fenced ```bash server and ```python server run in order (the shell ones with
bash, the Python ones in one namespace), in a temporary folder holding ``report.txt``, with
the README's address replaced by the test server's. A renamed endpoint, field or option
fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from server_process import start_server

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"```(bash|python) server\n(.*?)```", re.DOTALL)
ADDRESS = "http://127.0.0.1:8000"
REPORT = "The supplier delivers tea each month. The contract was signed by Ada Lovelace."


def test_the_readme_server_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    blocks = BLOCK.findall(README.read_text(encoding="utf-8"))
    assert {kind for kind, _ in blocks} == {"bash", "python"}
    (tmp_path / "report.txt").write_text(REPORT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme"}
    with start_server() as server:
        for number, (kind, code) in enumerate(blocks, start=1):
            code = code.replace(ADDRESS, server.base_url)
            if kind == "bash":
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", code],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert done.returncode == 0, f"README server example {number}:\n{done.stderr}"
                assert '"quickllama"' in done.stdout  # the chat answer, with its evidence
            else:
                try:
                    exec(compile(code, f"README server example {number}", "exec"), namespace)
                except Exception as error:
                    raise AssertionError(
                        f"README server example {number} fails:\n{code}"
                    ) from error
    assert namespace["reply"].response_metadata["memory_reused"] is not None
