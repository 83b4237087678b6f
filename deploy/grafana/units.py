"""Values as Grafana shows them in a unit (its unit ids: percentunit, s, ms, bytes, reqps, ...)."""

import math

Scales = list[tuple[float, str]]

SECONDS: Scales = [(1.0, " s"), (1e-3, " ms"), (1e-6, " µs")]
BYTES: Scales = [(2.0**30, " GiB"), (2.0**20, " MiB"), (2.0**10, " KiB"), (1.0, " B")]
SHORT: Scales = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]
# Grafana's unit ids: (multiplier, scales, suffix).
UNITS: dict[str, tuple[float, Scales, str]] = {
    "percentunit": (100.0, [(1.0, "%")], ""),
    "percent": (1.0, [(1.0, "%")], ""),
    "s": (1.0, SECONDS, ""),
    "ms": (1e-3, SECONDS, ""),
    "bytes": (1.0, BYTES, ""),
    "reqps": (1.0, SHORT, " req/s"),
    "short": (1.0, SHORT, ""),
    "none": (1.0, SHORT, ""),
    "": (1.0, SHORT, ""),
}


def plain(value: float) -> str:
    """Up to three significant digits, no exponent: 0.0123, 1.5, 250."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def scaled(value: float, scales: Scales) -> str:
    """`value` in the largest unit of `scales` (factor, suffix) it reaches."""
    for factor, suffix in scales:
        if abs(value) >= factor:
            return f"{plain(value / factor)}{suffix}"
    factor, suffix = scales[-1]
    return f"{plain(value / factor)}{suffix}"


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana would show it in `unit` (a Grafana unit id)."""
    if decimals is not None:
        value = round(value, decimals)
    if value == 0:
        return "0"
    factor, scales, suffix = UNITS.get(unit, (1.0, SHORT, f" {unit}"))
    return scaled(value * factor, scales) + suffix
