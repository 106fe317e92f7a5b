"""Local features and matching for the rgbd backend: one ``Extractor`` / ``Matcher`` interface.

``build_pipeline(extractor, matcher, options, device)`` picks the implementation:

=============  ================================  ==================  ============
extractor      implementation                    default matcher     weights
=============  ================================  ==================  ============
opencv_sift    OpenCV SIFT + RootSIFT            mnn_ratio           none
kornia_sift    kornia SIFT + RootSIFT (GPU)      mnn_ratio           none
disk           kornia DISK                       lightglue           local files
aliked         kornia ALIKED                     lightglue           local files
loftr          image holder (dense matcher)      loftr               local file
=============  ================================  ==================  ============

``auto`` picks OpenCV SIFT on the CPU (measured there: ~35x faster than kornia's) and, on a GPU, whichever
SIFT runs faster there, timed once when the backend is built.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .base import Extractor, Features, Matcher, Matches
from .matching import MutualRatioMatcher
from .sift import KorniaSIFT, OpenCVSIFT, root_sift

EXTRACTORS = ('opencv_sift', 'kornia_sift', 'disk', 'aliked', 'loftr')
MATCHERS = ('mnn_ratio', 'lightglue', 'loftr')
_DEFAULT_MATCHER = {'opencv_sift': 'mnn_ratio', 'kornia_sift': 'mnn_ratio', 'disk': 'lightglue',
                    'aliked': 'lightglue', 'loftr': 'loftr'}
_ALLOWED = {'mnn_ratio': {'opencv_sift', 'kornia_sift', 'disk', 'aliked'}, 'lightglue': {'disk', 'aliked'},
            'loftr': {'loftr'}}


def auto_extractor(device: torch.device, options: Mapping[str, Any] | None = None) -> str:
    """The weight-free SIFT that is fastest on ``device``.

    CPU: OpenCV (measured on 640x480 7-Scenes frames with 2 cores: 0.15 s CPU vs 5 s for kornia's SIFT, whose
    scale space is built with generic tensor ops). Other devices: both are timed once on a 640x480 textured
    image (kornia on the device, OpenCV on the CPU plus the copy of its output) and the faster one is used.
    """
    device = torch.device(device)
    if device.type == 'cpu':
        return 'opencv_sift'
    return _fastest_sift(device, dict(options or {}))


def _fastest_sift(device: torch.device, options: dict[str, Any]) -> str:
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    img = (rng.random((60, 80)) * 255).astype(np.uint8)
    img = np.repeat(np.repeat(img, 8, 0), 8, 1)[..., None].repeat(3, 2)    # 640x480, blocky texture
    n = int(options.get('num_features', 4000))
    candidates = {'opencv_sift': OpenCVSIFT(device, n, float(options.get('contrast_threshold', 0.01))),
                  'kornia_sift': KorniaSIFT(device, n)}
    seconds = {}
    for name, ext in candidates.items():
        ext.extract(img)                                    # warm-up (kernels, allocations)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        ext.extract(img)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        seconds[name] = time.perf_counter() - t0
    return min(seconds, key=seconds.get)


def build_pipeline(extractor: str, matcher: str, options: Mapping[str, Any], device: torch.device
                   ) -> tuple[Extractor, Matcher]:
    """Build (extractor, matcher). ``options``: num_features, contrast_threshold, root_sift, ratio, mutual,
    weights {'extractor': path, 'matcher': path}. Raises ConfigError / WeightsError naming the problem."""
    device = torch.device(device)
    if extractor == 'auto':
        extractor = auto_extractor(device, options)
    if extractor not in EXTRACTORS:
        raise ConfigError(f"unknown extractor '{extractor}'; known: auto, {', '.join(EXTRACTORS)}")
    if matcher == 'auto':
        matcher = _DEFAULT_MATCHER[extractor]
    if matcher not in MATCHERS:
        raise ConfigError(f"unknown matcher '{matcher}'; known: auto, {', '.join(MATCHERS)}")
    if extractor not in _ALLOWED[matcher]:
        raise ConfigError(f"matcher '{matcher}' cannot match '{extractor}' features; it works with: "
                          f"{', '.join(sorted(_ALLOWED[matcher]))}")
    n = int(options.get('num_features', 4000))
    weights = options.get('weights', {}) or {}
    if extractor == 'opencv_sift':
        ext: Extractor = OpenCVSIFT(device, n, float(options.get('contrast_threshold', 0.02)),
                                    root=bool(options.get('root_sift', True)))
    elif extractor == 'kornia_sift':
        ext = KorniaSIFT(device, n, root=bool(options.get('root_sift', True)))
    else:
        from . import learned

        ext = learned.build_extractor(extractor, weights.get('extractor', ''), n, device)
    if matcher == 'mnn_ratio':
        mat: Matcher = MutualRatioMatcher(float(options.get('ratio', 0.8)), bool(options.get('mutual', True)))
    else:
        from . import learned

        mat = learned.build_matcher(matcher, extractor, weights.get('matcher', ''), device)
    return ext, mat


__all__ = ['EXTRACTORS', 'MATCHERS', 'Extractor', 'Features', 'Matcher', 'Matches', 'MutualRatioMatcher',
           'KorniaSIFT', 'OpenCVSIFT', 'auto_extractor', 'build_pipeline', 'root_sift']
