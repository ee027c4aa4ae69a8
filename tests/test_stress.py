"""Many runs at once, and runs killed at random moments: the config stays whole and valid."""

from __future__ import annotations

import random
import signal
import subprocess
import tempfile
from pathlib import Path

from conftest import CLI, counting_haproxy, run_cli, wait_until, write_config


def haproxy_accepts(path) -> bool:
    return subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True).returncode == 0


def server_names(path) -> list[str]:
    return [ln.split()[1] for ln in path.read_text().splitlines() if ln.strip().startswith("server ")]


def start_all(cfg, flag: str, ids: list[str]) -> list[subprocess.Popen]:
    return [subprocess.Popen([str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", flag, i, "--lock-timeout", "120"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in ids]


def test_concurrent_adds_then_deletes_lose_no_update(tmp_path, make_container) -> None:
    ids = [make_container().short_id for _ in range(14)]
    cfg = write_config(tmp_path)
    for proc in start_all(cfg, "-a", ids):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    assert sorted(server_names(cfg.path)) == sorted(ids)
    for proc in start_all(cfg, "-d", ids[::2]):
        assert proc.wait(timeout=180) == 0
    assert sorted(server_names(cfg.path)) == sorted(ids[1::2])
    assert haproxy_accepts(cfg.path)


def test_killed_at_random_moments_the_config_is_old_or_new_and_valid(tmp_path, make_container) -> None:
    """SIGKILL at moments chosen by what the run has done, not by a clock: at a random point before its
    validation, while haproxy -c runs (a --haproxy-bin wrapper marks it), and once the new file is there."""
    c = make_container()
    cfg = write_config(tmp_path)
    old = cfg.path.read_bytes()
    marker = tmp_path / "validating"
    wrapper, _ = counting_haproxy(tmp_path, f"touch {marker}")
    args = [str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--lock-timeout", "5",
            "--haproxy-bin", str(wrapper)]
    assert subprocess.run(args, capture_output=True).returncode == 0
    new = cfg.path.read_bytes()
    rng = random.Random(1234)
    lens_dirs = set(Path(tempfile.gettempdir()).glob("hdc-lens-*"))
    outcomes = []
    for i in range(48):
        cfg.path.write_bytes(old)
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stage = ("before", "validating", "written")[i % 3]
        if stage == "before":  # somewhere from start-up to the validation, or at once
            wait_until(lambda: marker.exists() or proc.poll() is not None or rng.random() < 0.05, 60)
        elif stage == "validating":
            wait_until(lambda: marker.exists() or proc.poll() is not None, 60)
        else:
            wait_until(lambda: cfg.path.read_bytes() == new or proc.poll() is not None, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = cfg.path.read_bytes()
        assert content in (old, new), stage
        assert haproxy_accepts(cfg.path)
        if stage != "before":
            assert content == (old if stage == "validating" else new), stage
        outcomes.append(content == new)
    assert any(outcomes) and not all(outcomes)
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-d", c.short_id, "--lock-timeout", "5")
    assert result.returncode == 0, result.stderr
    assert cfg.path.read_bytes() == old
    assert not list(tmp_path.glob(".haproxy.cfg.*")), "temp files of killed runs are cleaned up"
    assert set(Path(tempfile.gettempdir()).glob("hdc-lens-*")) == lens_dirs, "the lens is cached, not left in /tmp"
