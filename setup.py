"""Build script: metadata lives in setup.cfg; this file only adds the optional C extension.

``ferric_ipc._localread`` speeds up local reads (key hash, index probe, record
check). It is optional: without a C compiler the build goes on without it and
``ferric_ipc`` uses its pure-Python path, which answers the same.

pip shows nothing a successful build prints unless it runs with ``-v`` (it
captures the build's stdout and stderr; pypa/pip#6634, pypa/pip#12090), so a
failed extension build would pass unnoticed. The warning is therefore written
to stderr (``pip -v``, ``python -m build``) and also to the terminal pip runs
in, when there is one (``/dev/tty``): that is where someone typing ``pip
install`` sees it. With no terminal (CI, ``docker build``) only ``-v`` shows
it; the daemon's start log and ``ferricctl info`` say it again at run time.
"""

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSION = "ferric_ipc._localread"

CHECK_COMMAND = (
    "python -c \"from ferric_ipc import native; print(native.absent_reason() or 'C extension loaded')\""
)


def warning_text(reason):
    return (
        f"WARNING: ferricstore: the optional C extension {EXTENSION} could not be built\n"
        f"  ({reason}).\n"
        "  ferricstore installs and works without it, but clients then read keys through pure\n"
        "  Python, 3-4x slower per local read. To build it, install a C compiler and the Python\n"
        "  headers (apt-get install gcc python3-dev), then reinstall ferricstore.\n"
        f"  Check which path clients use: ferricctl info (last line), or\n  {CHECK_COMMAND}\n"
    )


def short_reason(exc):
    """One line saying why a build failed; a failed compiler command, quoted in full, is named by its program."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    failed = re.fullmatch(r"Command '\['([^']*)'.*' returned non-zero exit status (-?\d+)\.?", text)
    if failed:
        text = f"the C compiler {failed[1]} exited with status {failed[2]}"
    elif len(text) > 100:
        text = f"{text[:55]} ... {text[-40:]}"
    return f"{text}; pip install -v shows the compiler's messages"


def tell(text):
    """Write ``text`` to stderr and, when stderr is not the terminal itself, to the controlling terminal."""
    sys.stderr.write(text)
    sys.stderr.flush()
    if os.isatty(2):
        return
    try:
        with open("/dev/tty", "w") as terminal:  # pip's own terminal: it does not capture that
            terminal.write("\n" + text)
    except OSError:  # no controlling terminal (CI, containers): pip -v shows the stderr copy
        pass


class BuildExtWarningLoudly(build_ext):
    """build_ext that says plainly, where the person installing sees it, when the optional extension failed."""

    def initialize_options(self):
        super().initialize_options()
        self.failed = []  # (extension name, why) of each optional extension that failed

    def run(self):
        super().run()
        for name, reason in self.failed:
            tell(warning_text(reason if name == EXTENSION else f"{name}: {reason}"))

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # setuptools skips an optional extension that fails; note why first
            if getattr(ext, "optional", False):
                self.failed.append((ext.name, short_reason(exc)))
            raise


setup(
    cmdclass={"build_ext": BuildExtWarningLoudly},
    ext_modules=[
        Extension(
            EXTENSION,
            sources=["ferric_ipc/_localread.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ],
)
