"""Choosing the torch device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
from __future__ import annotations

from .errors import ConfigError

DEVICE_CHOICES = ('auto', 'cpu', 'cuda')


def resolve_device(device: str = 'auto'):
    """Return a ``torch.device``; ``cuda`` without a GPU is a :class:`ConfigError`."""
    import torch

    name = str(device).strip().lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' requested but CUDA is not available (use 'auto' or 'cpu')")
        return torch.device(name)
    if name == 'cpu':
        return torch.device('cpu')
    raise ConfigError(f"unknown device '{device}', expected one of {', '.join(DEVICE_CHOICES)}")
