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

``auto`` picks OpenCV SIFT on the CPU and kornia SIFT on CUDA (measured: docs/rgbd.md).
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


def auto_extractor(device: torch.device) -> str:
    """The weight-free extractor that is fastest on ``device`` (see docs/rgbd.md for the measurement)."""
    return 'kornia_sift' if torch.device(device).type == 'cuda' else 'opencv_sift'


def build_pipeline(extractor: str, matcher: str, options: Mapping[str, Any], device: torch.device
                   ) -> tuple[Extractor, Matcher]:
    """Build (extractor, matcher). ``options``: num_features, contrast_threshold, root_sift, ratio, mutual,
    weights {'extractor': path, 'matcher': path}. Raises ConfigError / WeightsError naming the problem."""
    device = torch.device(device)
    if extractor == 'auto':
        extractor = auto_extractor(device)
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
