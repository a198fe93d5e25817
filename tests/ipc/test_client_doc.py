"""docs/client.md names every public name of ferric_ipc, so the list there is the whole API."""

import re
from pathlib import Path

import pytest

import ferric_ipc

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


@pytest.mark.parametrize("name", ferric_ipc.__all__)
def test_every_public_name_has_a_line_in_docs_client_md(name):
    assert re.search(rf"`{re.escape(name)}\b", DOC.read_text()), f"docs/client.md does not describe {name}"


@pytest.mark.parametrize("method", [
    name for name in dir(ferric_ipc.Client) if not name.startswith("_") and callable(getattr(ferric_ipc.Client, name))
])
def test_every_client_method_has_a_line_in_docs_client_md(method):
    assert f"`{method}(" in DOC.read_text(), f"docs/client.md does not describe Client.{method}"
