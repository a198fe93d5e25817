"""The client tour in examples/ runs against a real daemon and prints what it promises."""

import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "client_basics.py")


def test_client_basics_example_runs(daemon):
    result = subprocess.run([sys.executable, EXAMPLE, daemon.run_dir], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "get: b'hello'" in result.stdout
    assert "conditional set applied: True" in result.stdout
    assert "refused with NOT_INTEGER" in result.stdout
    assert "bulk keys: 100" in result.stdout and "deleted: 100" in result.stdout
