"""The routing watch's retry delays: doubling to a cap, spread over the upper half of each span."""

from __future__ import annotations

import pytest

from guardedmodel_sidecar.status_watch import retry_delay


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_retry_delay_doubles_up_to_the_cap_within_the_upper_half(draw: float) -> None:
    first_s, max_s = 0.5, 5.0
    delays = [retry_delay(n, first_s, max_s, lambda: draw) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(max_s, first_s * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays == sorted(delays)  # never shorter after another failure (one draw)
    assert delays[-1] == pytest.approx(max_s * (0.5 + 0.5 * draw))


def test_retry_delays_of_pods_that_failed_together_spread_out() -> None:
    draws = iter([i / 10 for i in range(10)])
    delays = {round(retry_delay(4, 0.5, 5.0, lambda: next(draws)), 3) for _ in range(10)}
    assert len(delays) == 10 and min(delays) == 2.0 and max(delays) < 4.0
