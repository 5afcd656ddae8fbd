"""Infinity's scale schedules: 13 latent (h, w) maps per aspect ratio, and the prefixes used for
smaller images (0.06M = 7 scales, 0.25M = 10, 0.60M = 12, 1M = 13). Pixels = 16 x the last map.

The tables are facts of the reference (`dynamic_resolution.py`); the sizes of the last maps and
the token totals are checked in tests against the published numbers."""

from __future__ import annotations

Schedule = tuple[tuple[int, int], ...]

# h/w ratio -> the 1M schedule (h, w). Ratios r != 1 also serve 1/r with h and w swapped.
_TALL: dict[float, Schedule] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24),
            (32, 32), (40, 40), (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24),
            (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21),
            (36, 27), (48, 36), (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22),
            (39, 26), (48, 32), (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20),
            (42, 24), (56, 32), (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19),
            (46, 23), (60, 30), (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16),
            (50, 20), (65, 26), (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15),
            (54, 18), (72, 24), (90, 30), (111, 37)),
}
# The reference keys a transposed table by int(1/r * 1000) / 1000 (0.8, 0.75, 0.666, ...).
RATIO_SCHEDULES: dict[float, Schedule] = {**_TALL, **{
    int(1000 / r) / 1000: tuple((w, h) for h, w in s) for r, s in _TALL.items() if r != 1.0}}
PN_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def h_div_w_template(h_div_w: float) -> float:
    """The nearest supported height/width ratio (the reference picks the closest template)."""
    if h_div_w <= 0:
        raise ValueError(f"h_div_w must be > 0, got {h_div_w}")
    return min(RATIO_SCHEDULES, key=lambda r: abs(r - h_div_w))


def full_schedule(h_div_w: float = 1.0) -> Schedule:
    """The 13-scale 1M schedule of the nearest template; RoPE positions are normalised to its
    last map for every pn."""
    return RATIO_SCHEDULES[h_div_w_template(h_div_w)]


def scale_schedule(h_div_w: float = 1.0, pn: str = "1M") -> Schedule:
    """(h, w) per scale for an aspect ratio and a pixel budget, e.g. (1.0, "1M") -> 13 scales up
    to (64, 64) = 1024x1024 px."""
    if pn not in PN_SCALES:
        raise ValueError(f"pn must be one of {', '.join(PN_SCALES)}, got {pn!r}")
    return full_schedule(h_div_w)[:PN_SCALES[pn]]
