"""The replica router's policy alone (no Ray, no HTTP): prefix routing by the longest
known run of full blocks, least-loaded fallback, capacity (429), sessions pinned and lost
with their replica, metrics relabelled per replica."""

from __future__ import annotations

import pytest

from thinkstream.distributed.replicas.proxy import relabel
from thinkstream.distributed.replicas.routing import (
    NoReplicaError,
    Router,
    SessionLostError,
    prefix_keys,
)


def test_longest_known_prefix_wins_else_least_loaded() -> None:
    router = Router(["a", "b"], block_size=2, prefix_blocks=3, max_load=4)
    first = router.for_prompt([1, 2, 3, 4, 5, 6, 7])
    first.in_flight += 1
    assert router.for_prompt([1, 2, 3, 4, 9, 9]).index == first.index  # 2 blocks shared
    other = router.for_prompt([8, 8, 8, 8])  # unknown prefix: the idle replica
    assert other.index != first.index
    assert router.for_prompt([1]).index == other.index  # shorter than a block: least loaded
    assert len(prefix_keys([1, 2, 3, 4, 5, 6, 7], 2, 3)) == 3


def test_capacity_falls_back_then_refuses() -> None:
    router = Router(["a", "b"], block_size=2, max_load=1)
    a = router.for_prompt([1, 2])
    a.in_flight = 1
    b = router.for_prompt([1, 2])  # the owner is full: the other one
    assert b.index != a.index
    b.in_flight = 1
    with pytest.raises(NoReplicaError) as exc:
        router.for_prompt([1, 2])
    assert exc.value.overloaded


def test_sessions_pinned_and_lost_with_their_replica() -> None:
    router = Router(["a", "b"])
    r0 = router.least_loaded()
    router.opened("s1", r0)
    assert router.least_loaded().index != r0.index  # an open session counts as load
    router.mark_dead(r0, "ActorDiedError")
    with pytest.raises(SessionLostError, match="replica 0 .* died \\(ActorDiedError\\)"):
        router.for_session("s1")
    assert router.for_session("unknown") is None
    assert router.least_loaded().index == 1
    router.mark_dead(router.replicas[1], "gone")
    with pytest.raises(NoReplicaError) as exc:
        router.least_loaded()
    assert not exc.value.overloaded


def test_metrics_relabelled_per_replica() -> None:
    text = '# TYPE x gauge\nx{model_name="m"} 1.0\ny 2\n'
    assert relabel([(0, text), (1, text)]) == [
        "# TYPE x gauge", 'x{replica="0",model_name="m"} 1.0', 'y{replica="0"} 2',
        'x{replica="1",model_name="m"} 1.0', 'y{replica="1"} 2']
