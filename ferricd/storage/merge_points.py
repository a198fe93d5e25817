"""Named points of a merge where a test can make the shard die or wait (``FERRICD_MERGE_HOOK``).

``FERRICD_MERGE_HOOK`` names a file holding ``"<point> <action>"``. When a merge
reaches that point it acts, once per visit:

- ``kill``: the process sends itself SIGKILL, as a crash there would;
- ``pause``: the merge stops at the point (the shard keeps serving) and writes
  ``<file>.reached`` holding the point's name; it goes on once ``<file>`` is removed.

Without the variable, which is how ferricd runs outside tests, a point costs
one attribute test.
"""

import os
import signal
import time

HOOK_ENV = "FERRICD_MERGE_HOOK"

#: Every point, in the order a merge passes them.
POINTS = (
    "copying",  # an output file is partly written under its temporary name
    "output_written",  # an output is complete under its temporary name, not yet fsynced or renamed
    "output_renamed",  # an output has its final name, but no hint yet
    "switching",  # half of an output's key directory entries point at it
    "switched",  # every live record is in an output; no input deleted yet
    "input_deleted",  # the oldest input is deleted, the others not yet
)

_PAUSE_POLL_S = 0.01


class MergePoints:
    """Checks the hook file at each named point of a merge."""

    def __init__(self, hook_path=None):
        self.hook_path = os.environ.get(HOOK_ENV) if hook_path is None else hook_path

    def paused(self, point):
        """Whether the merge must wait at ``point`` (the caller retries later); kills the process if told to."""
        if not self.hook_path:
            return False
        try:
            with open(self.hook_path) as f:
                words = f.read().split()
        except OSError:
            return False
        if words[:1] != [point]:
            return False
        action = words[1] if len(words) > 1 else ""
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "pause":
            with open(f"{self.hook_path}.reached", "w") as f:
                f.write(point)
            return True
        return False

    def wait(self, point):
        """For work done in a worker thread: block while the merge is paused at ``point``."""
        while self.paused(point):
            time.sleep(_PAUSE_POLL_S)
