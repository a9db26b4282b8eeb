"""Civitai NSFW ratings mapped to one comparable scale, and the blur decision.

Civitai rates images and model versions with `nsfwLevel`, a bit set: 1=PG, 2=PG13, 4=R, 8=X,
16=XXX, 32=Blocked. A version's level can OR several bits (3 = PG|PG13); the most explicit bit
is what matters for display. Older answers carry a string `nsfw` ("None", "Soft", "Mature", "X")
or a boolean. Everything maps to one of the single-bit levels below so levels compare with `<`.
An unrated or unreadable value maps to BLOCKED: it is blurred under every threshold but "show all".
"""
from __future__ import annotations

PG = 1
PG13 = 2
R = 4
X = 8
XXX = 16
BLOCKED = 32

LEVEL_NAMES = {PG: "PG", PG13: "PG13", R: "R", X: "X", XXX: "XXX", BLOCKED: "Blocked"}

# Names accepted for a level or a threshold, lower-cased. The old Civitai strings map onto the
# nearest bit level ("Soft" images were suggestive, "Mature" were explicit-ish).
_NAME_TO_LEVEL = {
    "pg": PG, "none": PG, "sfw": PG, "safe": PG,
    "pg13": PG13, "pg-13": PG13, "soft": PG13,
    "r": R, "mature": R,
    "x": X,
    "xxx": XXX,
    "blocked": BLOCKED,
}


def nsfw_level(value: object) -> int:
    """Map any Civitai rating (bit-set int, old string, bool) to PG..BLOCKED.

    Unknown or missing values give BLOCKED so that unrated content is never shown unblurred.
    """
    if isinstance(value, bool):
        # A bare flag only says "some NSFW": assume explicit rather than under-blur.
        return X if value else PG
    if isinstance(value, int):
        if value <= 0:
            return BLOCKED
        if value >= BLOCKED:
            return BLOCKED
        return 1 << (value.bit_length() - 1)  # most explicit bit set
    if isinstance(value, float) and value.is_integer():
        return nsfw_level(int(value))
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return nsfw_level(int(text))
        return _NAME_TO_LEVEL.get(text, BLOCKED)
    return BLOCKED


def threshold_level(threshold: object) -> int:
    """A user threshold ("PG13", 2, "show all"/None) as the highest level shown unblurred."""
    if threshold is None:
        return BLOCKED  # no threshold: show everything
    if isinstance(threshold, str) and threshold.strip().lower() in ("all", "show all", "any"):
        return BLOCKED
    return nsfw_level(threshold)


def is_blurred(level: object, threshold: object) -> bool:
    """True when content rated `level` is more explicit than `threshold` allows.

    Both accept what `nsfw_level` accepts; `threshold=None` or "all" shows everything.
    """
    return nsfw_level(level) > threshold_level(threshold)


def level_name(level: object) -> str:
    return LEVEL_NAMES[nsfw_level(level)]
