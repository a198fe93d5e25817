"""The files in systemd/ and docs/configuration.md: valid, and in step with DEFAULTS and each other.

``systemd-analyze verify`` checks the unit's directives where the tool is
installed (the test skips, saying so, where it is not); everything else runs
without systemd.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ferricd.config import DEFAULTS, load_config
from ferricd.shard import connection_cap

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "ferricd.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "ferricd.toml"
SYSUSERS = ROOT / "systemd" / "ferricd.sysusers"
TMPFILES = ROOT / "systemd" / "ferricd.tmpfiles"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# The example config differs from DEFAULTS only in the paths the unit creates.
SYSTEMD_PATHS = {"data_dir": "/var/lib/ferricd", "run_dir": "/run/ferricd"}
CONFIG_PATH = "/etc/ferricd/ferricd.toml"


def parse_unit(path):
    """{section: {key: [values in order]}}; enough of systemd's syntax for our own unit file."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_seconds(value):
    """A systemd time span such as "30", "30s", "2min", "500ms" in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def toml_literal(value):
    """How a default is written in TOML (and in the docs' tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def every_option():
    """Options of the plain sections (tests/daemon/test_keyspaces_config.py covers [keyspaces.NAME])."""
    return [(section, name) for section, options in DEFAULTS.items() if section != "keyspaces" for name in options]


# -- the example configuration ------------------------------------------------------


def test_example_config_loads():
    config = load_config(str(EXAMPLE_CONFIG))
    assert config.data_dir == SYSTEMD_PATHS["data_dir"]
    assert config.run_dir == SYSTEMD_PATHS["run_dir"]
    defaults = load_config()
    assert config.storage == defaults.storage
    for name in DEFAULTS["daemon"]:
        if name not in SYSTEMD_PATHS:
            assert getattr(config, name) == getattr(defaults, name), name


@pytest.mark.parametrize("section,name", every_option())
def test_example_config_writes_out_every_option_with_its_default(section, name):
    written = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert name in written.get(section, {}), f"{section}.{name} is missing from {EXAMPLE_CONFIG.name}"
    expected = SYSTEMD_PATHS.get(name, DEFAULTS[section][name]) if section == "daemon" else DEFAULTS[section][name]
    assert written[section][name] == expected


def test_example_config_has_a_comment_for_every_option():
    lines = EXAMPLE_CONFIG.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\w+\s*=", line):
            assert lines[number - 1].startswith("#"), f"no comment above: {line}"


# -- docs/configuration.md ------------------------------------------------------------


@pytest.mark.parametrize("section,name", every_option())
def test_configuration_doc_describes_every_option_and_its_default(section, name):
    doc = CONFIGURATION_DOC.read_text()
    body = doc.split(f"## `[{section}]`", 1)
    assert len(body) == 2, f"docs/configuration.md has no `[{section}]` section"
    section_text = re.split(r"^## ", body[1], maxsplit=1, flags=re.M)[0]
    rows = [line for line in section_text.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"{section}.{name} is not in the [{section}] table of docs/configuration.md"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1] == f"`{toml_literal(DEFAULTS[section][name])}`", f"default of {section}.{name} in the docs"
    assert len(cells) >= 4 and cells[2] and cells[3], f"{section}.{name} needs a unit and a description"


def test_configuration_doc_states_precedence_size_syntax_and_shard_rule():
    doc = CONFIGURATION_DOC.read_text()
    for phrase in ("--config", "--data-dir", "--run-dir", "--shards", "unknown", '"64MiB"', '"1GB"', "shards = 0"):
        assert phrase in doc, phrase


# -- the unit -------------------------------------------------------------------------


def test_unit_runs_the_example_config_with_the_directories_it_creates():
    service = parse_unit(UNIT)["Service"]
    config = load_config(str(EXAMPLE_CONFIG))
    (exec_start,) = service["ExecStart"]
    assert exec_start.split()[1:] == ["--config", CONFIG_PATH]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert config.run_dir == "/run/" + service["RuntimeDirectory"][0]
    assert config.data_dir == "/var/lib/" + service["StateDirectory"][0]
    assert service["User"] == service["Group"] == ["ferricd"]
    assert service["RuntimeDirectoryMode"] == service["StateDirectoryMode"] == ["0750"]


def test_unit_timeouts_fit_the_daemon_settings():
    service = parse_unit(UNIT)["Service"]
    daemon = DEFAULTS["daemon"]
    # systemd must not kill the shards before ferricd's own stop deadline (plus time to exit).
    assert systemd_seconds(service["TimeoutStopSec"][0]) >= daemon["stop_timeout_ms"] / 1000 + 5
    # The watchdog is fed at most every health check; a check reads files and never waits on a shard.
    watchdog_s = systemd_seconds(service["WatchdogSec"][0])
    assert watchdog_s / 2 >= 2 * daemon["health_interval_ms"] / 1000
    assert service["KillMode"][0] in ("mixed", "control-group")


def test_unit_open_file_limit_leaves_every_shard_its_connections_and_a_reserve():
    limit = int(parse_unit(UNIT)["Service"]["LimitNOFILE"][0])
    assert connection_cap(DEFAULTS["daemon"]["max_connections"], limit) == DEFAULTS["daemon"]["max_connections"]


def test_unit_umask_lets_the_group_connect_to_the_sockets():
    # Connecting to a Unix socket needs write permission on it; libzmq creates
    # the socket file with 0777 & ~umask.
    umask = int(parse_unit(UNIT)["Service"]["UMask"][0], 8)
    assert (0o777 & ~umask) & 0o070 == 0o070
    assert (0o777 & ~umask) & 0o007 == 0


def test_deploy_doc_uses_the_units_paths():
    doc = DEPLOY_DOC.read_text()
    service = parse_unit(UNIT)["Service"]
    binary = service["ExecStart"][0].split()[0]
    assert binary in doc
    for path in (CONFIG_PATH, "/etc/systemd/system", "/etc/sysusers.d", "/etc/tmpfiles.d", "FERRIC_RUN_DIR=/run/ferricd"):
        assert path in doc, path


def _unit_with_runnable_exec_start(tmp_path):
    """A copy of the unit whose ExecStart names an executable that exists here.

    verify checks that ExecStart's binary exists; the installed path
    (/usr/local/bin/ferricd) depends on the machine, the directives do not.
    """
    text = UNIT.read_text()
    exec_lines = re.findall(r"^ExecStart=.*$", text, flags=re.M)
    assert len(exec_lines) == 1
    arguments = exec_lines[0].split("=", 1)[1].split()[1:]
    runnable = f'ExecStart="{sys.executable}" -m ferricd ' + " ".join(arguments)
    copy = tmp_path / "ferricd.service"
    copy.write_text(text.replace(exec_lines[0], runnable))
    return copy


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _unit_with_runnable_exec_start(tmp_path)
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    output = (result.stdout + result.stderr).strip()
    # Every complaint about the unit itself (unknown key or section, a value that
    # does not parse, a bad command) names the file or the unit; ignoring a
    # directive is only a warning, so the exit code alone would miss it.
    about_unit = [line for line in output.splitlines() if str(unit) in line or "ferricd.service" in line]
    assert not about_unit, "systemd-analyze verify:\n" + "\n".join(about_unit)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here (exit {result.returncode}): {output}")


# -- sysusers and tmpfiles ------------------------------------------------------------


def test_sysusers_and_tmpfiles_snippets_apply_to_an_empty_root(tmp_path):
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers or systemd-tmpfiles is not installed")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to give /etc/ferricd its owner")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True, timeout=60)
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert passwd["ferricd"][5] == "/var/lib/ferricd"
    assert passwd["ferricd"][3] == group["ferricd"][2]
    subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES)], check=True, capture_output=True, timeout=60)
    config_dir = (tmp_path / "etc/ferricd").stat()
    assert config_dir.st_mode & 0o7777 == 0o750
    assert (config_dir.st_uid, config_dir.st_gid) == (0, int(group["ferricd"][2]))
