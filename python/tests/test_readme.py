"""The README's "From Python" example, run as written against the server's default config (on a
free port instead of 1883), and its output compared with what the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import REPO, ServerProcess, server_binary, start_server

SECTION = "## From Python"
DEFAULT_PORT = "1883"


def readme_example() -> tuple:
    """The section's python block and the output block after it."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"the README has a '{SECTION}' section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    output = re.search(r"prints\n\n```\n(.*?)```", section, re.S)
    assert code and output, "the section has a python block and the output it prints"
    return code.group(1), output.group(1)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server on its default config, as `run` writes it to a fresh home, moved to a free port."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, HOME=str(home), USERPROFILE=str(home))
    env.pop("PZA_POWER_SUPPLY_CONFIG", None)
    # `list` writes the default config when it is missing, as `run` does, without starting anything.
    subprocess.run([str(server_binary()), "list", "--runners"], env=env, check=True, capture_output=True)
    default = (home / ".panduza" / "pza-power-supply.json5").read_text()
    assert f"port: {DEFAULT_PORT}" in default
    body = default.split("runners: {", 1)[1].rsplit("}", 2)[0]
    process = start_server(tmp_path_factory.mktemp("default-server"), body, ["emulator"])
    yield process
    assert process.stop() == 0 or sys.platform == "win32"


def test_the_readme_python_example_prints_what_the_readme_shows(default_server: ServerProcess) -> None:
    code, shown = readme_example()
    assert f'Client("127.0.0.1", {DEFAULT_PORT})' in code
    code = code.replace(f'Client("127.0.0.1", {DEFAULT_PORT})', f'Client("127.0.0.1", {default_server.port})')
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == shown
