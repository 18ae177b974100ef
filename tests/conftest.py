"""Shared pytest setup. Area-specific fixtures live next to their tests."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# CI runs on 2 shared cores: no deadline flakiness, bounded example counts.
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci")
