"""NSFW level mapping: Civitai's bit levels and old strings onto one comparable scale."""
import pytest

from lora_core.library.civitai_nsfw import BLOCKED, PG, PG13, R, X, XXX, is_blurred, level_name, nsfw_level


@pytest.mark.parametrize("value, level", [
    (1, PG), (2, PG13), (4, R), (8, X), (16, XXX), (32, BLOCKED),
    (3, PG13), (5, R), (31, XXX), (28, XXX), (64, BLOCKED), (0, BLOCKED), (-4, BLOCKED),
    ("None", PG), ("Soft", PG13), ("Mature", R), ("X", X), ("pg13", PG13), ("XXX", XXX), ("8", X),
    (True, X), (False, PG), (None, BLOCKED), ("weird", BLOCKED), (4.0, R), (2.5, BLOCKED), ([1], BLOCKED),
])
def test_nsfw_level(value, level):
    assert nsfw_level(value) == level


def test_levels_are_ordered():
    assert PG < PG13 < R < X < XXX < BLOCKED
    assert [level_name(v) for v in (1, 2, 4, 8, 16, 32)] == ["PG", "PG13", "R", "X", "XXX", "Blocked"]


@pytest.mark.parametrize("level, threshold, blurred", [
    (1, "PG", False), (2, "PG", True), (2, "PG13", False), (4, "PG13", True), (4, R, False),
    ("Mature", "R", False), ("X", "R", True), (16, X, True), (16, XXX, False),
    (None, "XXX", True),  # unrated content is blurred under any real threshold
    (None, None, False), (32, "all", False), (16, "show all", False),  # no threshold: show everything
    (3, "PG", True), (3, "PG13", False),  # a version's OR'ed levels: the most explicit bit counts
])
def test_is_blurred(level, threshold, blurred):
    assert is_blurred(level, threshold) is blurred
