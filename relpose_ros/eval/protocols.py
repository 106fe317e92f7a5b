"""Pair protocols: which (reference, query) frame pairs of a sequence are scored.

- ``fixed``: one reference (first frame or a given index) against every later frame (every ``step``-th).
- ``keyframe``: a keyframe every ``every`` frames, each paired with the frames ``gaps`` later.
- ``mapfree``: the Map-free protocol on a :class:`~relpose_ros.data.mapfree.MapFreeSequence`: the seq0
  reference against every 5th query of seq1 (by frame number).
"""
from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import NamedTuple

from ..errors import ConfigError

PROTOCOLS = ('fixed', 'keyframe', 'mapfree')


class Pair(NamedTuple):
    """Indices into the sequence; ``gap`` is the frame distance (or the Map-free query number)."""

    reference: int
    query: int
    gap: int


def fixed_reference(n: int, reference: int = 0, step: int = 1) -> list[Pair]:
    """``reference`` against every ``step``-th later frame."""
    if not 0 <= reference < n:
        raise ConfigError(f'reference index {reference} out of range for a sequence of {n} frames')
    if step < 1:
        raise ConfigError(f'step must be >= 1, got {step}')
    return [Pair(reference, q, q - reference) for q in range(reference + step, n, step)]


def keyframe_pairs(n: int, every: int, gaps: Seq[int], start: int = 0) -> list[Pair]:
    """A keyframe at ``start, start + every, ...``; each paired with the frames ``gap`` later (when they exist)."""
    if every < 1:
        raise ConfigError(f'keyframe interval must be >= 1, got {every}')
    if not gaps or any(g < 1 for g in gaps):
        raise ConfigError(f'gaps must be positive frame counts, got {list(gaps)}')
    return [Pair(r, r + g, g) for r in range(start, n, every) for g in sorted(set(gaps)) if r + g < n]


def mapfree_pairs(sequence, every: int = 5) -> list[Pair]:
    """Map-free protocol: reference seq0 frame 0 against seq1 queries whose frame number is a multiple of ``every``."""
    queries = getattr(sequence, 'query_numbers', None)
    if queries is None:
        raise ConfigError('the mapfree protocol needs a Map-free dataset (--dataset mapfree:PATH)')
    return [Pair(0, i, num) for i, num in queries() if num % every == 0]


def build_pairs(protocol: str, sequence, reference: int = 0, step: int = 1, every: int = 30,
                gaps: Seq[int] = (30, 60, 100), max_pairs: int | None = None) -> list[Pair]:
    """The pairs of ``protocol`` on ``sequence`` (optionally the first ``max_pairs`` only)."""
    n = len(sequence)
    if protocol == 'fixed':
        pairs = fixed_reference(n, reference, step)
    elif protocol == 'keyframe':
        pairs = keyframe_pairs(n, every, gaps, start=reference)
    elif protocol == 'mapfree':
        pairs = mapfree_pairs(sequence)
    else:
        raise ConfigError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not pairs:
        raise ConfigError(f'protocol {protocol} gives no pairs on a sequence of {n} frames '
                          f'(reference={reference}, step={step}, every={every}, gaps={list(gaps)})')
    return pairs
