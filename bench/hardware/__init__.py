"""Hardware: what machine a run is on, what an hour of it costs, and how fast its memory is."""

from bench.hardware.detect import detect, fingerprint
from bench.hardware.profiles import (
    Profile,
    current,
    get_profile,
    load_profiles,
    match_profile,
)

__all__ = ["Profile", "current", "detect", "fingerprint", "get_profile", "load_profiles", "match_profile"]
