"""Learned extractors / matchers from kornia, loaded ONLY from local weight files.

- ``disk`` / ``aliked``: kornia DISK / ALIKED (aliked-n16) detectors + descriptors;
- ``lightglue``: kornia LightGlue configured for DISK or ALIKED (128-d descriptors);
- ``loftr``: kornia LoFTR (dense, detector-free): the "extractor" keeps the grey image, the matcher runs LoFTR
  on the pair.

Nothing is ever downloaded: every model is built without pretrained weights and then loaded from the path
the user gives. A missing file or one whose keys / shapes do not fit the model is a :class:`WeightsError`
naming the file.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from .base import Extractor, Features, Matcher, Matches, empty_matches, rgb_to_tensor

_PREFIXES = ('module.', 'model.', 'matcher.', 'extractor.')


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a local file (plain, or nested under 'state_dict' / 'model' / 'extractor')."""
    if not path:
        raise WeightsError(f'{what} needs a local weights file: set weights.extractor / weights.matcher '
                           f'(no weights are ever downloaded)')
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f'{what} weights file not found: {p}')
    try:
        obj = torch.load(p, map_location='cpu', weights_only=True)
    except Exception:  # Lightning checkpoints and other pickles
        try:
            obj = torch.load(p, map_location='cpu', weights_only=False)
        except Exception as exc:
            raise WeightsError(f'{what} weights file {p} cannot be read: {exc}') from exc
    for key in ('state_dict', 'model', 'extractor'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f'{what} weights file {p} holds no state dict of tensors')
    out = {}
    for k, v in obj.items():
        for pre in _PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def load_weights(model: torch.nn.Module, path: str | Path, what: str,
                 rename: Any = None) -> torch.nn.Module:
    """Load ``path`` into ``model`` (eval mode). Every learnable parameter must be in the file with its shape;
    buffers derived from the configuration (e.g. LightGlue's confidence thresholds, absent from released files)
    keep the model's values and extra keys are ignored. Anything else is a WeightsError naming the file."""
    sd = read_state_dict(path, what)
    if rename is not None:
        sd = rename(sd)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:                                   # shape mismatches
        first = ' '.join(str(exc).splitlines()[:3])
        raise WeightsError(f'{what} weights file {path} does not match the model: {first}') from exc
    params = {name for name, _ in model.named_parameters()}
    missing = [k for k in result.missing_keys if k in params]
    if missing:
        raise WeightsError(f'{what} weights file {path} does not match the model: {len(missing)} of {len(params)} '
                           f'parameters missing (e.g. {", ".join(missing[:3])}); '
                           f'file keys look like: {", ".join(list(sd)[:3])}')
    return model.eval()


class DiskExtractor(Extractor):
    """kornia DISK (128-d descriptors)."""

    name = 'disk'

    def __init__(self, device: torch.device, weights: str, num_features: int = 4000) -> None:
        super().__init__(device)
        import kornia.feature as KF

        self.model = load_weights(KF.DISK(desc_dim=128), weights, 'DISK').to(self.device)
        self.n = int(num_features)

    @torch.inference_mode()
    def extract(self, rgb: np.ndarray) -> Features:
        img = rgb_to_tensor(rgb, self.device)
        f = self.model(img, n=self.n, pad_if_not_divisible=True)[0]
        d = torch.nn.functional.normalize(f.descriptors.float(), dim=-1)
        return Features(f.keypoints.float(), d, (rgb.shape[1], rgb.shape[0]), f.detection_scores.float())


class AlikedExtractor(Extractor):
    """kornia ALIKED (aliked-n16, 128-d descriptors)."""

    name = 'aliked'

    def __init__(self, device: torch.device, weights: str, num_features: int = 4000) -> None:
        super().__init__(device)
        import kornia.feature as KF

        model = KF.ALIKED(model_name='aliked-n16', max_num_keypoints=int(num_features))
        self.model = load_weights(model, weights, 'ALIKED').to(self.device)

    @torch.inference_mode()
    def extract(self, rgb: np.ndarray) -> Features:
        img = rgb_to_tensor(rgb, self.device)
        f = self.model(img)[0]
        d = torch.nn.functional.normalize(f.descriptors.float(), dim=-1)
        return Features(f.keypoints.float(), d, (rgb.shape[1], rgb.shape[0]), f.keypoint_scores.float())


class ImageHolder(Extractor):
    """For dense matchers (LoFTR): keeps the grey image; no keypoints."""

    name = 'loftr'

    @torch.inference_mode()
    def extract(self, rgb: np.ndarray) -> Features:
        img = rgb_to_tensor(rgb, self.device, gray=True)
        empty = torch.zeros((0, 2), device=self.device)
        return Features(empty, None, (rgb.shape[1], rgb.shape[0]), image=img)


def _rename_lightglue(n_layers: int):
    def rename(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in sd.items():  # the released files name the attention layers self_attn.i / cross_attn.i
            for i in range(n_layers):
                k = k.replace(f'self_attn.{i}.', f'transformers.{i}.self_attn.')
                k = k.replace(f'cross_attn.{i}.', f'transformers.{i}.cross_attn.')
            out[k] = v
        return out
    return rename


class LightGlueMatcher(Matcher):
    """kornia LightGlue for 128-d DISK / ALIKED descriptors, weights from a local file."""

    name = 'lightglue'

    def __init__(self, features: str, weights: str, device: torch.device) -> None:
        import kornia.feature as KF

        conf = {k: v for k, v in KF.LightGlue.features[features].items() if k != 'weights'}
        model = KF.LightGlue(features=None, **conf)
        self.device = torch.device(device)
        self.model = load_weights(model, weights, f'LightGlue ({features})',
                                  rename=_rename_lightglue(model.conf.n_layers)).to(self.device)

    @torch.inference_mode()
    def match(self, a: Features, b: Features) -> Matches:
        if len(a) < 2 or len(b) < 2:
            return empty_matches(a.keypoints.device)

        def pack(f: Features) -> dict[str, torch.Tensor]:
            size = torch.tensor([f.size], dtype=torch.float32, device=self.device)
            return {'keypoints': f.keypoints[None], 'descriptors': f.descriptors[None], 'image_size': size}

        out = self.model({'image0': pack(a), 'image1': pack(b)})
        idx, scores = out['matches'][0], out['scores'][0].float()
        return Matches(a.keypoints[idx[:, 0]], b.keypoints[idx[:, 1]], scores.clamp(0, 1), idx[:, 0])


class LoFTRMatcher(Matcher):
    """kornia LoFTR (dense), weights from a local file; image sizes must be multiples of 8."""

    name = 'loftr'

    def __init__(self, weights: str, device: torch.device) -> None:
        import kornia.feature as KF
        from kornia.feature.loftr.loftr import default_cfg

        model = KF.LoFTR(pretrained=None, config=copy.deepcopy(default_cfg))
        self.device = torch.device(device)
        self.model = load_weights(model, weights, 'LoFTR').to(self.device)

    @torch.inference_mode()
    def match(self, a: Features, b: Features) -> Matches:
        out = self.model({'image0': a.image, 'image1': b.image})
        # kornia's LoFTR returns keypoints in the frame of the reference implementation (pixel centres at
        # x + 0.5, the frame its pretrained models use); the other extractors and ``lift`` put pixel centres
        # at integer coordinates: shift by half a pixel, as kornia's LoFTR documentation says.
        kp0, kp1 = out['keypoints0'].float() - 0.5, out['keypoints1'].float() - 0.5
        return Matches(kp0, kp1, out['confidence'].float().clamp(0, 1))


def build_extractor(name: str, weights: str, num_features: int, device: torch.device) -> Extractor:
    if name == 'disk':
        return DiskExtractor(device, weights, num_features)
    if name == 'aliked':
        return AlikedExtractor(device, weights, num_features)
    return ImageHolder(device)


def build_matcher(name: str, extractor: str, weights: str, device: torch.device) -> Matcher:
    if name == 'lightglue':
        return LightGlueMatcher(extractor, weights, device)
    return LoFTRMatcher(weights, device)
