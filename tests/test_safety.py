"""haproxy.cfg is never lost or broken: permissions, locks, restarts and bad input, for real."""

from __future__ import annotations

import compileall
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (CLI, IMAGE, LABEL, REPO, RUN, counting_haproxy, haproxy_pids, http_get, run_cli, wait_until,
                      write_config)

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def open_dir():
    """A temp dir other users may enter (pytest's own tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="hdc-safety-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nobody_lib() -> Iterator[Path]:
    """The module and its libraries copied where nobody may read them: the checkout and its .venv
    may sit where nobody cannot go (a clone in root's home, which is 0700 on Debian)."""
    lib = Path(tempfile.mkdtemp(prefix="hdc-nobody-"))
    try:
        lib.chmod(0o755)
        test_tools = ("pip", "setuptools", "pytest", "_pytest", "hypothesis", "pygments")  # most of the bytes
        shutil.copytree(sysconfig.get_paths()["purelib"], lib, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*test_tools))
        shutil.copy2(REPO / "haproxy_docker_config.py", lib)
        compileall.compile_file(str(lib / "haproxy_docker_config.py"), quiet=1)
        yield lib
    finally:
        shutil.rmtree(lib, ignore_errors=True)


@pytest.fixture
def as_nobody(nobody_lib: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the tool as user nobody (root would ignore file permissions), with the venv's Python."""
    python = os.path.realpath(sys.executable)  # the interpreter itself, not the venv's link to it

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
        command = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                   python, "-m", "haproxy_docker_config", *args]
        return subprocess.run(command, text=True, capture_output=True, cwd=nobody_lib, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(nobody_lib), **(env or {})})
    return run


def add(cfg, *ids: str, extra: tuple = ()) -> subprocess.CompletedProcess[str]:
    return run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", ",".join(ids), *extra)


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process that holds the config's lock until it is killed."""
    code = ("import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


# --- permissions --------------------------------------------------------------------------

def test_read_only_directory_is_a_clear_error(open_dir, make_container, as_nobody) -> None:
    cfg = write_config(open_dir, stats_socket=False)
    cfg.path.chmod(0o666)  # the file is writable by anyone, its directory is not
    before = cfg.path.read_bytes()
    result = as_nobody("-f", str(cfg.path), "-l", "dockerha-app1", "-a", make_container().short_id)
    assert result.returncode == 3
    assert result.stderr == (f"ERROR: cannot create lock file {cfg.path}.lock (Permission denied); "
                             f"run as a user who may write {open_dir}\n")
    assert cfg.path.read_bytes() == before


def test_read_only_file_is_a_clear_error(open_dir, make_container, as_nobody) -> None:
    cfg = write_config(open_dir, stats_socket=False)
    os.chown(open_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    cfg.path.chmod(0o444)
    before = cfg.path.read_bytes()
    result = as_nobody("-f", str(cfg.path), "-l", "dockerha-app1", "-a", make_container().short_id)
    assert result.returncode == 3
    assert result.stderr == (f"ERROR: {cfg.path} is read-only; make it writable or run as a user who may write it\n")
    assert cfg.path.read_bytes() == before


def test_unreadable_file_is_a_clear_error(open_dir, as_nobody) -> None:
    cfg = write_config(open_dir, stats_socket=False)
    cfg.path.chmod(0o600)
    result = as_nobody("-f", str(cfg.path), "-l", "dockerha-app1", "-s")
    assert (result.returncode, result.stderr) == (
        3, f"ERROR: cannot read {cfg.path} (Permission denied); check its permissions\n")


def test_no_permission_on_the_docker_socket(open_dir, as_nobody) -> None:
    cfg = write_config(open_dir, stats_socket=False)
    os.chown(open_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(cfg.path, NOBODY.pw_uid, NOBODY.pw_gid)
    before = cfg.path.read_bytes()
    result = as_nobody("-f", str(cfg.path), "-l", "dockerha-app1", "-a", "abc", env={"DOCKER_HOST": ""})
    assert result.returncode == 4
    assert result.stderr == ("ERROR: cannot reach the Docker engine at unix:///var/run/docker.sock "
                             "(Permission denied); start dockerd or give --docker-url\n")
    assert cfg.path.read_bytes() == before


def test_owner_group_and_mode_are_kept(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    os.chown(cfg.path, NOBODY.pw_uid, NOBODY.pw_gid)
    cfg.path.chmod(0o640)
    assert add(cfg, make_container().short_id).returncode == 0
    st = cfg.path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o640)


def test_a_rewrite_that_cannot_keep_the_group_says_so_once(open_dir, as_nobody) -> None:
    cfg = write_config(open_dir, extra_listener_lines="    server abc 127.0.0.1:1")
    os.chown(open_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(cfg.path, NOBODY.pw_uid, 0)  # nobody's file in group root, as a config mounted from the host can be
    result = as_nobody("-f", str(cfg.path), "-l", "dockerha-app1", "-d", "abc", env={"DOCKER_HOST": ""})
    assert result.returncode == 0, result.stderr
    assert "server abc" not in cfg.path.read_text()
    st = cfg.path.stat()
    assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)  # what really happened to it
    assert result.stderr == (f"warning: {cfg.path} now belongs to {NOBODY.pw_uid}:{NOBODY.pw_gid} instead of "
                             f"{NOBODY.pw_uid}:0: uid {NOBODY.pw_uid} may not give a file that owner or group; run "
                             f"the tool as the file's owner, in its group (docker run --group-add 0), or give the "
                             f"file a group this user is in\n")


# --- the lock -----------------------------------------------------------------------------

def test_a_held_lock_times_out_with_a_message_naming_it(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    c = make_container()
    holder = hold_lock(Path(f"{cfg.path}.lock"))
    try:
        before = cfg.path.read_bytes()
        result = add(cfg, c.short_id, extra=("--lock-timeout", "0.3"))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 3
    assert result.stderr == (f"ERROR: {cfg.path}.lock is held by another haproxy-docker-config for over 0.3s; "
                             "retry later or raise --lock-timeout\n")
    assert cfg.path.read_bytes() == before


def test_a_second_run_waits_for_the_lock_then_proceeds(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    c = make_container()
    holder = hold_lock(Path(f"{cfg.path}.lock"))
    waiting = subprocess.Popen([str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = Path(f"{cfg.path}.lock")

    def opened_the_lock() -> bool:  # it got as far as the lock (its fds, from /proc), which is held
        with contextlib.suppress(OSError):
            return any(os.readlink(fd) == str(lock) for fd in Path(f"/proc/{waiting.pid}/fd").iterdir())
        return False
    wait_until(lambda: opened_the_lock() or waiting.poll() is not None, 60)
    assert waiting.poll() is None, "the second run must wait while the lock is held"
    holder.kill()
    holder.wait()
    assert waiting.wait(timeout=30) == 0
    assert f"server {c.short_id} " in cfg.path.read_text()


@pytest.mark.parametrize("action, status", [(("-s",), 0), (("-c",), 0), (("--verify",), 0), (("--status",), 0)])
def test_reading_actions_take_no_lock(tmp_path, make_container, action: tuple, status: int) -> None:
    """-s, -c, --verify and --status only read: with the lock held elsewhere they answer at once, where a
    run that took the lock would time out after 0.1 s with exit 3."""
    cfg = write_config(tmp_path, stats_socket=False)
    assert add(cfg, make_container().short_id).returncode == 0
    holder = hold_lock(Path(f"{cfg.path}.lock"))
    try:
        result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", *action, "--lock-timeout", "0.1")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == status and "lock" not in result.stderr, result.stderr
    assert len(result.stdout.splitlines()) >= 1


def test_a_killed_lock_holder_never_blocks_the_next_run(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    holder = hold_lock(Path(f"{cfg.path}.lock"))
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.wait()
    assert add(cfg, make_container().short_id, extra=("--lock-timeout", "2")).returncode == 0


# --- restarts -----------------------------------------------------------------------------

def test_hot_restart_that_fails_leaves_the_old_haproxy_serving(tmp_path, make_container, haproxy) -> None:
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    cfg = write_config(tmp_path)
    cfg.path.write_text(cfg.path.read_text().replace(str(cfg.sock), str(sockdir / "admin.sock")))
    old = haproxy(cfg)
    first, second = make_container(), make_container()
    assert add(cfg, first.short_id, extra=("-h", str(cfg.pidfile))).returncode == 0
    old = haproxy_pids(cfg)
    shutil.rmtree(sockdir)  # e.g. /run/haproxy wiped: a new haproxy cannot bind its stats socket
    result = add(cfg, second.short_id, extra=("-h", str(cfg.pidfile)))
    assert result.returncode == 5
    assert result.stderr.startswith("ERROR: hot restart failed, the old haproxy keeps serving: ")
    assert "ALERT" in result.stderr
    assert haproxy_pids(cfg) == old and all(Path(f"/proc/{pid}").exists() for pid in old)
    assert http_get(cfg.port) == first.short_id
    assert f"server {second.short_id} " in cfg.path.read_text()  # validated, so kept


def test_missing_pidfile_is_a_clear_error(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    result = add(cfg, make_container().short_id, extra=("-h", str(cfg.pidfile)))
    assert result.returncode == 5
    assert result.stderr == (f"ERROR: cannot read pidfile {cfg.pidfile} (No such file or directory); "
                             "is haproxy running? give its pidfile with -h PIDFILE\n")


def test_hot_restart_without_haproxy_on_path(tmp_path) -> None:
    cfg = write_config(tmp_path)
    before = cfg.path.read_bytes()
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", "abc", "-h", str(cfg.pidfile), env=env)
    assert result.returncode == 5
    assert result.stderr == "ERROR: haproxy not found (not on PATH); install it, give --haproxy-bin, or --no-validate\n"
    assert cfg.path.read_bytes() == before


def test_no_validate_works_without_haproxy_and_warns(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    c = make_container()
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--no-validate", env=env)
    assert result.returncode == 0
    assert result.stderr == f"warning: --no-validate: {cfg.path} is replaced without haproxy -c\n"
    assert f"server {c.short_id} " in cfg.path.read_text()


# --- bad input: one line, the documented status, the file byte-identical -----------------

@pytest.mark.parametrize("content, status, message", [
    (b"", 3, "ERROR: {path}: no listen or backend section named dockerha-app1; check -l and -f"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00garbage", 3, "ERROR: {path} is not a text file; give the haproxy config with -f"),
    (b"listen dockerha-app1\n  #DOCKERSERVER $id\n  /etc/passwd here\n", 3,
     "ERROR: {path}:3: cannot parse '/etc/passwd here' (Get did not match entire input); fix this line"),
    (b"listen dockerha-app1\n  bind :80\n", 3,
     "ERROR: {path}: listener dockerha-app1 has no #DOCKERSERVER template line; "
     "add one such as '#DOCKERSERVER $id $ip:$port check'"),
    (b"listen dockerha-app1\n  #DOCKERSERVER $id $ip:$port\n  #DOCKERSERVER $name $ip:$port\n", 3,
     "ERROR: {path}: listener dockerha-app1 has 2 #DOCKERSERVER template lines; keep one"),
])
def test_bad_config_files(tmp_path, make_container, content: bytes, status: int, message: str) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_bytes(content)
    result = run_cli("-f", str(path), "-l", "dockerha-app1", "-a", make_container().short_id)
    assert (result.returncode, result.stdout, result.stderr) == (status, "", message.format(path=path) + "\n")
    assert path.read_bytes() == content


@pytest.mark.parametrize("ids, status, message", [
    ("", 2, "ERROR: empty container id in ''; give ID[,ID...] without empty items"),
    (",,", 2, "ERROR: empty container id in ',,'; give ID[,ID...] without empty items"),
    ("abc:notaport", 2, "ERROR: port 'notaport' in 'abc:notaport' is not a number; give ID:PORT with PORT in 1..65535"),
    ("abc:70000", 2, "ERROR: port 70000 in 'abc:70000' is out of range; give a port in 1..65535"),
    ("abc,abc", 2, "ERROR: container abc is given more than once in 'abc,abc'; give it once"),
    ("nosuchcontainer", 4, "ERROR: no such container nosuchcontainer; check the id with docker ps"),
])
def test_bad_id_lists(tmp_path, ids: str, status: int, message: str) -> None:
    cfg = write_config(tmp_path)
    before = cfg.path.read_bytes()
    result = add(cfg, ids)
    assert (result.returncode, result.stdout, result.stderr) == (status, "", message + "\n")
    assert cfg.path.read_bytes() == before


def test_the_same_container_twice_under_two_names(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    c = make_container(name="hdc-twice")
    before = cfg.path.read_bytes()
    result = add(cfg, "hdc-twice", c.short_id)
    assert (result.returncode, result.stderr) == (
        2, f"ERROR: {c.short_id} and hdc-twice are the same container; give it once\n")
    assert cfg.path.read_bytes() == before


def test_an_ambiguous_prefix(tmp_path, docker_client) -> None:
    cfg = write_config(tmp_path)
    made, by_first = [], {}
    try:
        while True:  # create (not start) containers until two ids share their first character
            c = docker_client.containers.create(IMAGE, labels={LABEL: RUN})
            made.append(c)
            if c.id[0] in by_first:
                break
            by_first[c.id[0]] = c
        before = cfg.path.read_bytes()
        result = add(cfg, c.id[0])
    finally:
        for c in made:
            c.remove(force=True)
    assert result.returncode == 4
    assert result.stderr.startswith(f"ERROR: container {c.id[0]}: ")
    assert result.stderr.endswith("; give a longer id or the name\n")
    assert cfg.path.read_bytes() == before


def test_a_wrong_docker_url(tmp_path) -> None:
    cfg = write_config(tmp_path)
    result = add(cfg, "abc", extra=("--docker-url", "tcp://127.0.0.1:1"))
    assert result.returncode == 4
    assert result.stderr == ("ERROR: cannot reach the Docker engine at tcp://127.0.0.1:1 (Connection refused); "
                             "start dockerd or give --docker-url\n")


def test_second_identical_delete_changes_nothing(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    c = make_container()
    assert add(cfg, c.short_id).returncode == 0
    first = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-d", c.short_id, "--json")
    after_first, inode = cfg.path.read_bytes(), cfg.path.stat().st_ino
    second = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-d", c.short_id, "--json")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert '"changed": true' in first.stdout and '"changed": false' in second.stdout
    assert cfg.path.read_bytes() == after_first and cfg.path.stat().st_ino == inode


def test_unvalidated_change_is_rolled_back_when_the_restart_fails(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    cfg.pidfile.write_text("999999\n")
    before = cfg.path.read_bytes()
    result = add(cfg, make_container().short_id, extra=("--no-validate", "-h", str(cfg.pidfile)))
    assert result.returncode == 5
    assert result.stderr.splitlines()[-1] == (
        f"ERROR: pidfile {cfg.pidfile} names no running haproxy; start haproxy or use -r; "
        f"the change was not validated, so the previous {cfg.path} is restored")
    assert cfg.path.read_bytes() == before


def test_haproxy_bin_names_the_haproxy_to_use(tmp_path, make_container) -> None:
    """The validation is counted where it runs: in the wrapper given as --haproxy-bin (no haproxy on PATH)."""
    cfg = write_config(tmp_path)
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    wrapper, checks = counting_haproxy(tmp_path)
    c = make_container()
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--haproxy-bin", str(wrapper),
                     env=env)
    assert result.returncode == 0, result.stderr
    (check,) = checks.read_text().splitlines()
    assert check.startswith("-c -f ") and f"server {c.short_id} " in cfg.path.read_text()
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-d", c.short_id, "--haproxy-bin", "/nonexistent/haproxy")
    assert (result.returncode, result.stderr) == (
        5, "ERROR: haproxy not found (/nonexistent/haproxy); install it, give --haproxy-bin, or --no-validate\n")
