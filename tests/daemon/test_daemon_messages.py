"""What ferricd says when it starts, stops or cannot start, and what it leaves behind."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.daemon_process import short_tempdir


def test_one_shard_is_one_shard_and_paths_are_absolute(make_daemon):
    daemon = make_daemon(shards=1)
    # Clients may connect before the supervisor has read the first heartbeat and logged "ready".
    deadline = time.monotonic() + 30
    while "ready:" not in daemon.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.stop() == 0
    log = daemon.stderr()
    assert "starting 1 shard;" in log and "ready: 1 shard serving in /" in log
    assert "1 shards" not in log
    assert f"data in {os.path.abspath(daemon.data_dir)}" in log


def test_a_run_directory_clash_names_the_run_directory(make_daemon):
    first = make_daemon(shards=1)
    second = make_daemon(shards=1, run_dir=first.run_dir, start=False)
    second.start(wait=False)
    assert second.process.wait(timeout=30) == 1
    log = second.stderr()
    assert f"{first.run_dir} is in use by pid" in log and "another run directory" in log


def test_a_failed_start_removes_the_directories_it_created(make_daemon):
    first = make_daemon(shards=1)
    base = short_tempdir()
    new_data = os.path.join(base, "new-data")
    done = subprocess.run([sys.executable, "-m", "ferricd", "--data-dir", new_data, "--run-dir", first.run_dir],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert not os.path.exists(new_data), "the data directory this start created is gone again"
    assert os.path.exists(first.run_dir), "a directory that existed before is left alone"
    os.rmdir(base)


def test_a_missing_c_extension_is_reported_at_start(tmp_path):
    """pip hides a failed optional build unless -v: the daemon says it, once, when it starts."""
    base = short_tempdir()
    script = ("import sys; sys.modules['ferric_ipc._localread'] = None\n"
              "from ferricd.supervisor import main\n"
              "sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", script, "--data-dir", os.path.join(base, "d"),
                                "--run-dir", os.path.join(base, "r"), "--shards", "1"],
                               stderr=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items()
                                                                       if k != "FERRIC_PURE_PYTHON"})
    try:
        line = process.stderr.readline()
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    assert "pure Python" in line and "C extension was not built" in line and "python3-dev" in line, line


def test_check_config_prints_one_line_either_way(tmp_path):
    good = subprocess.run([sys.executable, "-m", "ferricd", "--check-config"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert good.returncode == 0 and good.stdout.startswith("configuration OK") and "sessions (sess:)" in good.stdout
    assert not os.listdir(tmp_path), "checking creates nothing"
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[daemon]\nbogus = 1\n")
    bad = subprocess.run([sys.executable, "-m", "ferricd", "--config", str(bad_file), "--check-config"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "unknown option daemon.bogus" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _start_on(data_dir, run_dir):
    return subprocess.run([sys.executable, "-m", "ferricd", "--data-dir", data_dir, "--run-dir", run_dir,
                           "--shards", "1"], capture_output=True, text=True, timeout=60)


def test_a_directory_every_user_may_write_is_refused_with_the_fix():
    base = short_tempdir()
    data_dir, run_dir = os.path.join(base, "data"), os.path.join(base, "run")
    os.mkdir(run_dir)
    os.chmod(run_dir, 0o777)  # chmod, not mkdir's mode: the umask would take the o+w away
    try:
        done = _start_on(data_dir, run_dir)
        assert done.returncode == 2, done.stderr
        assert f"may be written by every user (mode drwxrwxrwx): run chmod o-w {run_dir}" in done.stderr
        assert "Traceback" not in done.stderr
        assert not os.path.exists(data_dir), "the data directory this start created is gone again"
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user takes root")
def test_a_directory_another_user_owns_is_refused_with_the_fix():
    base = short_tempdir()
    data_dir, run_dir = os.path.join(base, "data"), os.path.join(base, "run")
    os.mkdir(data_dir, 0o750)
    os.chown(data_dir, 65534, 65534)  # nobody: it could plant a symlink where ferricd, as root, writes
    try:
        done = _start_on(data_dir, run_dir)
        assert done.returncode == 2, done.stderr
        assert f"the data directory {data_dir} belongs to uid 65534, not to the user ferricd runs as (uid 0)" \
            in done.stderr
    finally:
        shutil.rmtree(base)


def test_ferricd_json_has_the_mode_of_the_other_files(make_daemon):
    daemon = make_daemon(shards=1)
    mode = os.stat(os.path.join(daemon.run_dir, "ferricd.json")).st_mode & 0o777
    assert mode == 0o640, oct(mode)  # storage.file_mode: group-readable, like the tables and the sockets' users
