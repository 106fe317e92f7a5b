"""The one estimator interface every backend implements.

``prepare_reference(frame)`` runs once per reference keyframe and caches whatever can be cached
(features, descriptors, 3-D points); ``estimate(reference, frame)`` runs per live frame.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import ConfigError
from ..types import Frame, PoseEstimate


@dataclass
class Reference:
    """A prepared reference keyframe: the frame and the backend's cached features."""

    frame: Frame
    features: Any = None
    timings: dict[str, float] = field(default_factory=dict)


class Estimator(ABC):
    """Base class of all backends. Subclasses set ``name`` and ``default_config``."""

    name: str = ''
    #: Which frames need depth: 'none', 'reference' (PnP) or 'any' (uses depth when present).
    depth_usage: str = 'none'
    default_config: Mapping[str, Any] = {}

    def __init__(self, config: Mapping[str, Any] | None = None, device: str = 'auto') -> None:
        from ..device import resolve_device

        self.config = merge_config(self.default_config, config or {}, self.name)
        self.device = resolve_device(device)

    @abstractmethod
    def prepare_reference(self, frame: Frame) -> Reference:
        """Compute and cache the reference's features (once per reference)."""

    @abstractmethod
    def estimate(self, reference: Reference, frame: Frame) -> PoseEstimate:
        """Estimate ``T_query_from_ref`` of ``frame`` against a prepared reference.

        Never raises for bad image content: returns ``PoseEstimate.failure(reason)`` instead.
        """

    def estimate_pair(self, reference_frame: Frame, query_frame: Frame) -> PoseEstimate:
        """Convenience: prepare the reference and estimate one query (no caching across calls)."""
        ref = self.prepare_reference(reference_frame)
        est = self.estimate(ref, query_frame)
        for k, v in ref.timings.items():
            est.timings.setdefault('reference_' + k, v)
        return est

    def describe(self) -> dict[str, Any]:
        """Short description for diagnostics and reports."""
        return {'backend': self.name, 'device': str(self.device)}


def merge_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any], name: str = '') -> dict[str, Any]:
    """Recursively merge ``overrides`` into ``defaults``; unknown keys are a :class:`ConfigError`."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in defaults.items()}
    for k, v in overrides.items():
        if k not in defaults:
            known = ', '.join(sorted(defaults)) or '(none)'
            raise ConfigError(f"unknown parameter '{k}' for backend '{name}'; known: {known}")
        if isinstance(defaults[k], Mapping):
            if not isinstance(v, Mapping):
                raise ConfigError(f"parameter '{k}' of backend '{name}' must be a mapping, got {v!r}")
            out[k] = merge_config(defaults[k], v, f'{name}.{k}')
        else:
            out[k] = v
    return out


class StageTimer:
    """Collects per-stage wall-clock seconds: ``with timer('match'): ...``; ``timer.timings``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
