"""`dscnn.timing_retry.retry_until`: the one loop that times again while a timing is not trusted."""

from __future__ import annotations

import pytest

import dscnn.timing_retry
from dscnn.timing_retry import retry_until


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(dscnn.timing_retry.time, "sleep", slept.append)
    return slept


@pytest.mark.parametrize(("values", "attempts", "taken"), [
    ([5, 1, 9], 3, [5, 1]),  # stops at the first good one
    ([1], 3, [1]),  # a good first timing waits for nothing
    ([5, 6, 7, 8], 3, [5, 6, 7]),  # never more than ``attempts``, the last one bad
    ([5, 1], 1, [5]),  # one attempt: no retry at all
])
def test_takes_again_until_good_or_out_of_attempts_pausing_between(
        pauses: list[float], values: list[int], attempts: int, taken: list[int]) -> None:
    source = iter(values)
    told: list[tuple[int, int]] = []
    got = retry_until(lambda: next(source), lambda v: v < 2, attempts, 7.5,
                      lambda last, attempt: told.append((last, attempt)))
    assert got == taken
    assert pauses == [7.5] * (len(taken) - 1)  # one pause before each retry, none after the last
    assert told == [(v, n) for n, v in enumerate(taken[:-1], start=2)]  # the bad one, and the attempt about to come


def test_zero_attempts_is_refused(pauses: list[float]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry_until(lambda: 1, lambda v: True, 0, 1.0)
