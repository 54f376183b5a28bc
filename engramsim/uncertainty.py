"""Uncertainty bands: hardware profiles drawn from a profile's spreads, and the p5 / p50 / p95 of a metric over them.

A profile's `uncertainty` maps field paths to spreads (`hardware.profile.Spread`): a preset's
from a stated range, a calibrated profile's from its fit residuals (`sigma_for_p95`). Sample `i`
(1, 2, ...) of a run with seed `s` draws one standard normal per spread, from
`numpy.random.default_rng([s, i, crc32(key)])`: the same seed and index give the same profile
whatever else runs, profiles sharing keys (a sweep's points) get the same quantiles, and a spread
added to a profile leaves the others' draws where they were. A uniform
or triangular spread maps the normal through its CDF to a quantile of low..high (triangular: its
mode at the profile's value); a lognormal one multiplies the value by exp(sigma z). A drawn value
is clipped to what its field accepts (an efficiency at most 1).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from engramsim.errors import InputError
from engramsim.hardware.profile import HardwareProfile, Spread, spread_field

Z95 = 1.959963984540054
"""The 97.5th percentile of the standard normal: |z| is below it 95% of the time."""


def sigma_for_p95(rel_error_p95: float) -> float:
    """The lognormal sigma whose |log error| has `rel_error_p95`'s log as its 95th percentile:
    ln(1 + p95) / 1.96 (a fit's relative errors taken as lognormal around 1)."""
    return math.log1p(rel_error_p95) / Z95


def _draw(value: float, spread: Spread, z: float) -> float:
    if spread.dist == "lognormal":
        assert spread.sigma is not None
        return value * math.exp(spread.sigma * z)
    assert spread.low is not None and spread.high is not None
    low, high, u = spread.low, spread.high, 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    if spread.dist == "uniform" or high == low:
        return low + (high - low) * u
    # triangular, mode at the value: the inverse of its CDF
    if u < (value - low) / (high - low):
        return low + math.sqrt(u * (high - low) * (value - low))
    return high - math.sqrt((1.0 - u) * (high - low) * (high - value))


def sample_profile(profile: HardwareProfile, seed: int, index: int) -> tuple[HardwareProfile, dict[str, float]]:
    """Sample `index` (from 1) of `profile`: the profile with every spread's number drawn, and the drawn values by key.
    Each key draws its own normal from (seed, index, crc32 of the key), so a spread added to a profile
    never moves another's draws."""
    drawn: dict[str, float] = {}
    for key in sorted(profile.uncertainty):
        z = float(np.random.default_rng([seed, index, zlib.crc32(key.encode())]).standard_normal())
        value, (lowest, highest) = spread_field(profile, key)
        drawn[key] = min(max(_draw(value, profile.uncertainty[key], z), lowest), highest)
        profile = _replace(profile, key.split("."), drawn[key])
    return profile, drawn


def _replace(model, path: list[str], value: float):
    """`model` with the field at `path` set to `value` (each section copied)."""
    name, *rest = path
    return model.model_copy(update={name: _replace(getattr(model, name), rest, value) if rest else value})


def sample_profiles(profile: HardwareProfile, n: int, seed: int) -> list[HardwareProfile]:
    """Samples 1..n of `profile` (`sample_profile`)."""
    return [sample_profile(profile, seed, i)[0] for i in range(1, n + 1)]


def check_samples(profile: HardwareProfile, n: int, flag: str = "--samples") -> None:
    """A negative count, or samples of a profile with no spreads, is one line naming the flag."""
    if n < 0:
        raise InputError(flag, f"expected a number of samples, 0 or more, got {n}")
    if n and not profile.uncertainty:
        raise InputError(flag, f"the hardware profile {profile.name!r} has no uncertainty section, so every sample would be "
                         "the profile itself; give its numbers spreads (README: Uncertainty bands) or leave --samples out")


def bands(values: Sequence[float | None]) -> dict[str, float] | None:
    """{p5, p50, p95} of the values (numpy's linear percentiles), or None when any is missing."""
    if not values or any(v is None for v in values):
        return None
    p5, p50, p95 = np.percentile(np.asarray(values, dtype=float), [5, 50, 95])
    return {"p5": float(p5), "p50": float(p50), "p95": float(p95)}
