"""Reference models that generate task targets (e.g. Wong & Wang 2006 for Decision)."""

from colenv.reference.wong_wang import (
    WongWangParams,
    WongWangResult,
    decide,
    firing_rate_hz,
    fit_weibull,
    simulate,
    spontaneous_s,
    stimulus_hz,
)

__all__ = [
    "WongWangParams",
    "WongWangResult",
    "decide",
    "firing_rate_hz",
    "fit_weibull",
    "simulate",
    "spontaneous_s",
    "stimulus_hz",
]
