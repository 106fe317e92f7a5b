"""The frozen LoFTR coarse stage (kornia): CNN backbone + positional encoding, then the coarse transformer.

Only the coarse half is used: ``extract`` (per image, cacheable) gives the position-encoded 1/8-resolution
features, ``attend`` runs the interleaved self/cross attention layers on a pair (cannot be cached: every
query changes the reference's output). Weights come from a LOCAL file only, never from a ``pretrained`` name.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ...errors import WeightsError

#: Prefixes of the LoFTR state-dict keys that the coarse stage needs.
COARSE_PREFIXES = ('backbone.', 'pos_encoding.', 'loftr_coarse.')
#: Prefixes of the keys of the (unused) fine stage; accepted in a checkpoint and ignored.
FINE_PREFIXES = ('coarse_matching.', 'fine_preprocess.', 'loftr_fine.', 'fine_matching.')


def _default_config() -> dict:
    from kornia.feature.loftr.loftr import default_cfg

    return copy.deepcopy(default_cfg)


def read_loftr_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The coarse-stage tensors of a local LoFTR checkpoint (``state_dict``, optional ``matcher.`` prefix)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f'LoFTR weights file {path} does not exist (regression.loftr_weights / '
                           f'model.loftr_weights must name a local LoFTR checkpoint, e.g. loftr_indoor.ckpt)')
    try:
        blob = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a weights problem
        raise WeightsError(f'cannot read LoFTR weights {path}: {exc}') from exc
    state = blob.get('state_dict', blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f'LoFTR weights {path}: expected a dict with a "state_dict" of tensors, got {type(blob)}')
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        key = key[len('matcher.'):] if key.startswith('matcher.') else key
        if key.startswith(COARSE_PREFIXES):
            out[key] = value
        elif not key.startswith(FINE_PREFIXES):
            unexpected.append(key)
    if unexpected:
        raise WeightsError(f'LoFTR weights {path}: {len(unexpected)} keys that are not LoFTR keys, '
                           f'e.g. {unexpected[:5]} (is this a LoFTR checkpoint?)')
    return out


class LoFTRCoarse(nn.Module):
    """LoFTR's coarse stage. Input: grayscale (B, 1, H, W) in [0, 1]; features (B, 256, ceil(H/8), ceil(W/8))."""

    def __init__(self, weights: str | Path | None = None, seed: int = 0) -> None:
        super().__init__()
        from kornia.feature.loftr.backbone import build_backbone
        from kornia.feature.loftr.loftr_module import LocalFeatureTransformer
        from kornia.feature.loftr.utils.position_encoding import PositionEncodingSine

        cfg = _default_config()
        self.config = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random init is reproducible (only used without weights)
            self.backbone = build_backbone(cfg)
            self.pos_encoding = PositionEncodingSine(cfg['coarse']['d_model'],
                                                     temp_bug_fix=cfg['coarse']['temp_bug_fix'])
            self.loftr_coarse = LocalFeatureTransformer(cfg['coarse'])
        self.dim = int(cfg['coarse']['d_model'])
        self.stride = int(cfg['resolution'][0])
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str | Path) -> None:
        """Load a local LoFTR checkpoint; missing or mis-shaped coarse keys raise :class:`WeightsError`."""
        state = read_loftr_state_dict(path)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        bad_shape = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                     for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or bad_shape:
            raise WeightsError(f'LoFTR weights {path} do not match the LoFTR coarse stage: '
                               f'{len(missing)} missing keys {missing[:5]}, {len(bad_shape)} shape mismatches '
                               f'{bad_shape[:3]}')
        self.load_state_dict({k: state[k] for k in own})

    def extract(self, gray: torch.Tensor) -> torch.Tensor:
        """Position-encoded coarse CNN features (B, C, h, w): depend on one image only (cacheable)."""
        bb = self.backbone   # the ResNet half of kornia's ResNetFPN_8_2 up to its 1/8 output; the FPN branch
        x = bb.relu(bb.bn1(bb.conv1(gray)))     # that builds the unused 1/2-resolution fine map is skipped
        x = bb.layer3(bb.layer2(bb.layer1(x)))  # (B, 256, H/8, W/8)
        return self.pos_encoding(bb.layer3_outconv(x))

    def attend(self, feat_a: torch.Tensor, feat_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse transformer on a pair of (B, C, h, w) maps -> token maps (B, hw, C) of both images."""
        a = feat_a.flatten(2).transpose(1, 2).contiguous()  # (B, ha*wa, C)
        b = feat_b.flatten(2).transpose(1, 2).contiguous()  # (B, hb*wb, C)
        return self.loftr_coarse(a, b)
