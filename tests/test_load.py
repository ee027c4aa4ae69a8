"""No request lost while containers come and go (live and by hot restart), under steady load."""

from __future__ import annotations

import load  # bench/load.py, the same scenario as a script (conftest puts bench/ on the path)


def test_steady_load_loses_no_request_while_containers_change(docker_client) -> None:
    outcome = load.run_scenario(seconds=30, clients=4)
    assert outcome.rounds >= 6 and outcome.reloads >= 6, "the scenario should change things many times"
    assert len(outcome.latencies) > 1000
    assert outcome.failures == []
    assert max(outcome.serve_delays) <= 1.0, "each added container serves within 1 s of the command returning"
