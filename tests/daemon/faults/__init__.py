"""Fault-injection libraries for LD_PRELOAD (the C files here), built for a test run with the machine's compiler."""

import os
import shutil
import subprocess

import pytest

FAULTS_DIR = os.path.dirname(os.path.abspath(__file__))


def build_shim(tmp_path_factory, name, what):
    """``name``.c built into a shared library under a temporary directory; skips the test, saying ``what``
    could not be built, when there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip(f"no C compiler to build the {what} fault-injection library")
    shim = str(tmp_path_factory.mktemp("shim") / f"{name}.so")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", shim, os.path.join(FAULTS_DIR, f"{name}.c"), "-ldl"],
                   check=True)
    return shim
