"""Backend registry: ``create(name, config=None, device='auto')`` and ``available()``.

Backends are imported lazily, so listing them or building one does not import the others.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import Estimator, Reference

_REGISTRY: dict[str, str] = {
    'rgbd': 'relpose_ros.backends.rgbd:RGBDEstimator',
    'mickey': 'relpose_ros.backends.mickey:MickeyEstimator',
    'regression': 'relpose_ros.backends.regression:RegressionEstimator',
    'constant': 'relpose_ros.backends.constant:ConstantEstimator',
}


def available() -> list[str]:
    """Names of the registered backends."""
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Register a backend as ``'package.module:ClassName'`` (for plug-ins and tests)."""
    _REGISTRY[name] = target


def backend_class(name: str) -> type[Estimator]:
    """The estimator class registered under ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend '{name}'; available: {', '.join(available())}")
    module, cls = _REGISTRY[name].split(':')
    return getattr(importlib.import_module(module), cls)


def create(name: str, config: Mapping[str, Any] | None = None, device: str = 'auto') -> Estimator:
    """Build the backend ``name`` with its config dict on ``device`` (auto|cpu|cuda)."""
    return backend_class(name)(config=config, device=device)


__all__ = ['Estimator', 'Reference', 'available', 'backend_class', 'create', 'register']
