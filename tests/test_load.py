"""No request lost while containers come and go (live and by hot restart), under steady load."""

from __future__ import annotations

import load  # bench/load.py, the same scenario as a script (conftest puts bench/ on the path)


def test_steady_load_loses_no_request_while_containers_change(docker_client) -> None:
    """How soon an added container serves is bench/load.py's figure (docs/load.md); here, that every one does."""
    # 6 rounds at least, 3 of them by hot restart, however slow (or busy) the machine is
    outcome = load.run_scenario(seconds=30, clients=4, min_rounds=6)
    assert len(outcome.latencies) > 1000
    assert outcome.failures == []
    assert outcome.never_served == [] and len(outcome.serve_delays) == outcome.rounds >= 6
