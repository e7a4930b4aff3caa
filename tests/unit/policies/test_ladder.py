"""Algorithm 1's index arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capinfer_sidecar.policies.ladder import (
    LadderSearch,
    Move,
    index_at_or_below,
    nearest_index,
)


def test_index_at_or_below() -> None:
    ladder = (1, 2, 4, 8)
    assert index_at_or_below(ladder, 0) == 0
    assert index_at_or_below(ladder, 1) == 0
    assert index_at_or_below(ladder, 3) == 1
    assert index_at_or_below(ladder, 8) == 3
    assert index_at_or_below(ladder, 100) == 3


def test_nearest_index_prefers_the_lower_rung_on_a_tie() -> None:
    assert nearest_index((8, 16, 32), 16) == 1
    assert nearest_index((8, 24), 16) == 0
    assert nearest_index((10, 20), 16) == 1


def test_up_from_the_bottom_takes_the_ceiling_of_the_middle() -> None:
    # Paper, 1-based: minBS = 1, maxBS = 9 -> currentBS = ceil(10 / 2) = 5, i.e. batch 16.
    search, move = LadderSearch.begin(9).up()
    assert move is Move.MOVED
    assert (search.low, search.current, search.high) == (0, 4, 8)


def test_down_takes_the_floor_of_the_middle() -> None:
    search, move = LadderSearch(9, low=4, high=8, current=6).down()
    assert move is Move.MOVED
    assert (search.low, search.current, search.high) == (4, 5, 6)


def test_over_at_the_lower_bound_resets_it_to_the_first_rung() -> None:
    # Lines 14-17: currentBS = minBS -> maxBS = currentBS, minBS = 1.
    search, move = LadderSearch(9, low=4, high=6, current=4).down()
    assert move is Move.MOVED
    assert (search.low, search.current, search.high) == (0, 2, 4)


def test_under_at_the_upper_bound_reopens_it_to_the_top() -> None:
    search, move = LadderSearch(9, low=4, high=5, current=5).up()
    assert move is Move.MOVED
    assert (search.low, search.current, search.high) == (5, 7, 8)


def test_ends_of_the_ladder() -> None:
    top = LadderSearch(9, low=0, high=8, current=8)
    assert top.up() == (top, Move.AT_TOP)
    bottom = LadderSearch.begin(9)
    assert bottom.down() == (bottom, Move.AT_BOTTOM)


def test_restart_keeps_the_rung_and_reopens_the_bounds() -> None:
    search = LadderSearch(9, low=4, high=5, current=5).restart()
    assert (search.low, search.current, search.high) == (0, 5, 8)


def test_invalid_states_are_refused() -> None:
    with pytest.raises(ValueError, match="low <= current"):
        LadderSearch(9, low=5, high=8, current=4)
    with pytest.raises(ValueError, match="at least one rung"):
        LadderSearch.begin(0)


@given(
    size=st.integers(min_value=1, max_value=40),
    moves=st.lists(st.booleans(), max_size=60),
)
def test_any_walk_keeps_the_invariant(size: int, moves: list[bool]) -> None:
    search = LadderSearch.begin(size)
    for go_up in moves:
        before = search.current
        search, move = search.up() if go_up else search.down()
        # __post_init__ re-checks 0 <= low <= current <= high < size on every step.
        if move is Move.MOVED:
            assert (search.current > before) if go_up else (search.current < before)
        else:
            assert search.current == before
