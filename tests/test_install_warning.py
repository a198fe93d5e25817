"""pip install says plainly when the optional C extension could not be built, without -v.

pip captures everything a build prints and shows it only with -v (pypa/pip#6634), so setup.py also
writes its warning to the terminal pip runs in (/dev/tty). These tests build the real source tree with
a C compiler that always fails (CC=false): pip install in a pseudo-terminal at pip's default verbosity,
as a person typing ``pip install`` sees it (a real install, into a --target directory, never this
environment: about 7 s), and the build alone without a terminal, as CI runs it.
"""

import os
import pty
import select
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["setup.py", "setup.cfg", "pyproject.toml", "README.md", "ferric_ipc", "ferricd",
           "integrations/ferric_flask", "integrations/ferric_sqlalchemy"]
WARNING = "the optional C extension ferric_ipc._localread could not be built"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A copy of the package's sources: pip builds in the tree it is given, and this one is shared."""
    copy = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), copy / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "build", "*.egg-info"))
        else:
            shutil.copy(os.path.join(ROOT, name), copy / name)
    return copy


def pip_install_in_a_terminal(source, target):
    """``(exit status, output)`` of pip installing ``source`` into ``target`` with a failing C compiler."""
    argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--target", str(target),
            str(source)]
    env = dict(os.environ, CC="false", PIP_NO_INPUT="1")
    pid, fd = pty.fork()  # the child's controlling terminal is the pseudo-terminal read below
    if pid == 0:
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    output, deadline = b"", time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child and every holder of the terminal are gone
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def built_extension(target):
    return [name for name in os.listdir(target / "ferric_ipc") if name.startswith("_localread") and
            name.endswith(".so")]


def skip_without_build_dependencies(status, output):
    if status and ("setuptools" in output and "No matching distribution" in output):
        pytest.skip("pip could not fetch the build dependencies (setuptools, wheel) from any index")


def test_a_failed_extension_build_is_told_on_the_terminal_at_pips_default_verbosity(source, tmp_path):
    status, output = pip_install_in_a_terminal(source, tmp_path)
    skip_without_build_dependencies(status, output)
    assert status == 0, output
    assert "Successfully installed ferricstore" in output
    assert WARNING in output and "pure" in output and "ferricctl info" in output
    assert "Running command" not in output  # pip's default verbosity: it showed none of the build's own output
    assert not built_extension(tmp_path)


def test_without_a_terminal_the_warning_goes_to_stderr_which_pip_shows_with_v(source, tmp_path):
    # No controlling terminal (CI, docker build): setup.py's stderr is all there is. The build is run
    # directly here (pip -v prints that stderr as it is; a second pip install would double this file's time).
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "temp")],
        cwd=source, env=dict(os.environ, CC="false"), capture_output=True, text=True, timeout=120,
        start_new_session=True, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(WARNING) == 1 and "apt-get install gcc python3-dev" in done.stderr
    assert not os.path.exists(tmp_path / "lib" / "ferric_ipc")


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler here")
def test_a_successful_build_warns_of_nothing(source, tmp_path):
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "temp")],
        cwd=source, capture_output=True, text=True, timeout=120, start_new_session=True, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr
    assert built_extension(tmp_path / "lib")
