"""``python -m ferricd``: the same as the ``ferricd`` command."""

import sys

from ferricd.supervisor import main

sys.exit(main())
