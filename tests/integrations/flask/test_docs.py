"""docs/flask.md's option table says what ferric_flask.Defaults and CONFIG_KEYS say."""

import os
import re

import ferric_flask

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "flask.md")


def test_the_option_table_lists_every_option_with_its_default():
    with open(DOC, encoding="utf-8") as f:
        rows = re.findall(r"^\| `(FERRIC_\w+)` \| `(\w+)` \| `([^`]*)` \|", f.read(), re.MULTILINE)
    documented = {option: (config_key, default) for config_key, option, default in rows}
    assert documented == {
        option: (config_key, repr(getattr(ferric_flask.Defaults, option)).replace("'", '"'))
        for option, config_key in ferric_flask.CONFIG_KEYS.items()
    }
