"""The pose regressor: frozen LoFTR coarse stage -> hard matching and warping -> PreAct ResNet head.

Output convention (what the network regresses and what the loss sees): the pose of the QUERY camera in the
REFERENCE camera frame, ``T_ref_from_query``: ``quat`` = rotation R_ref_from_query (w, x, y, z), ``dir * scale``
= the query camera centre in the reference frame (metres). This is the paper's "relative position": its position
error is exactly the camera-centre error. The backend inverts it to ``T_query_from_ref`` (see
:func:`pose_to_T_query_from_ref`).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from kornia.geometry.conversions import quaternion_to_rotation_matrix
from torch import nn

from ...errors import ConfigError
from .calibration import calibration_factor
from .head import PoseHead
from .loftr import LoFTRCoarse
from .matching import cmap_channels, hard_match_and_warp, match_confidence
from .rotation_augment import compose_rotation, rotate_reference_positions
from .two_way import TWO_WAY_CHOICES, fuse_two_way

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    'loftr_weights': None,      # local LoFTR checkpoint; None = seeded random init (testing / CPU proof only)
    'loftr_seed': 0,
    'image_size': [256, 336],   # (H, W) network input for landscape frames; swapped for portrait frames
    'temperature': 0.1,         # softmax temperature of the matching confidence
    'head_channels': [256, 256, 128],
    'head_pool': 3,             # 128 channels x 3 x 3 = 1152 features, as in the paper
    'mlp_hidden': 256,
    'head_dropout': 0.0,        # dropout on the head's pooled features while training (the paper has none)
    'subcell_positions': False,  # refine the warped positions below one cell (local soft-argmax; not in the paper)
    'appearance_channels': True,  # False: the head sees only positions + confidence (feature channels zeroed)
    'unfreeze_loftr': 'none',   # none | transformer | all
    'confidence': 'mutual',     # mutual | softmax | mutual_softmax (see matching.match_confidence)
    # none | eval | always: also match reference -> query and average the inverted backward pose in
    # (two_way.py; not in the paper); eval = only when not training
    'two_way': 'none',
    # second head pass on the map with the reference camera rotated by the first pass's rotation, so the match
    # displacement left is translation parallax (needs the intrinsics and appearance_channels: false; not in the
    # paper; see _derotated)
    'derotate': False,
}
UNFREEZE_CHOICES = ('none', 'transformer', 'all')


def model_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with ``overrides``; unknown keys or bad values raise :class:`ConfigError`."""
    from ...backends.base import merge_config

    cfg = merge_config(DEFAULT_MODEL_CONFIG, overrides or {}, 'regression model')
    if cfg['unfreeze_loftr'] not in UNFREEZE_CHOICES:
        raise ConfigError(f"unfreeze_loftr must be one of {UNFREEZE_CHOICES}, got {cfg['unfreeze_loftr']!r}")
    if cfg['derotate'] and cfg['appearance_channels']:
        raise ConfigError('derotate changes only the match geometry: it needs appearance_channels: false')
    if cfg['two_way'] not in TWO_WAY_CHOICES:
        raise ConfigError(f"two_way must be one of {TWO_WAY_CHOICES}, got {cfg['two_way']!r}")
    size = cfg['image_size']
    if size is not None and (len(size) != 2 or min(int(s) for s in size) < 16):
        raise ConfigError(f'image_size must be [H, W] with both >= 16 pixels, got {size!r}')
    return cfg


class RegressionModel(nn.Module):
    """Query/reference grayscale images -> T_ref_from_query (quat, dir, scale) + match confidence.

    ``scale`` is the calibrated scale (``scale_raw`` times the held-out calibration factor, 1 unless training
    fitted one); the loss trains ``scale_raw``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = model_config(config)
        self.loftr = LoFTRCoarse(self.config['loftr_weights'], seed=int(self.config['loftr_seed']))
        c = self.loftr.dim
        self.head = PoseHead(2 * c + 5, tuple(self.config['head_channels']), int(self.config['head_pool']),
                             int(self.config['mlp_hidden']), float(self.config['head_dropout']))
        # (a, b) of the held-out scale calibration (calibration.py); (1, 0) = the head's own scale
        self.register_buffer('scale_calibration', torch.tensor([1.0, 0.0]))
        self._set_trainable()

    def _set_trainable(self) -> None:
        mode = self.config['unfreeze_loftr']
        for name, p in self.loftr.named_parameters():
            p.requires_grad_(mode == 'all' or (mode == 'transformer' and name.startswith('loftr_coarse.')))

    @property
    def backbone_frozen(self) -> bool:
        return self.config['unfreeze_loftr'] != 'all'

    def train(self, mode: bool = True) -> 'RegressionModel':
        super().train(mode)
        if self.backbone_frozen:  # frozen BatchNorm statistics stay frozen
            self.loftr.backbone.eval()
        if self.config['unfreeze_loftr'] == 'none':
            self.loftr.eval()
        return self

    def extract(self, gray: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> position-encoded coarse features (B, 256, H/8, W/8); cacheable per image."""
        if self.backbone_frozen:
            with torch.no_grad():
                return self.loftr.extract(gray)
        return self.loftr.extract(gray)

    def forward_features(self, feat_q: torch.Tensor, feat_r: torch.Tensor,
                         reference_rotation: tuple[torch.Tensor, torch.Tensor] | None = None,
                         K: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Pose from the two images' coarse CNN features (B, C, h, w) (query first).

        ``K``: (K_query, K_ref) (B, 3, 3) at network resolution, required by ``derotate``. When the two-way
        fusion runs (:attr:`uses_two_way`), the forward pose before fusion is also returned as ``one_way_quat``,
        ``one_way_dir`` and ``one_way_scale_raw``.

        ``reference_rotation`` (training augmentation, geometry-only head): (R_a (B, 3, 3), K (B, 3, 3) of the
        reference at network resolution): the matched reference positions are those of the reference camera
        rotated by R_a (models/regression/rotation_augment.py); the caller rotates the targets.
        """
        if self.config['derotate'] and K is None:
            raise ConfigError('derotate needs the intrinsics of both images (K)')
        if self.config['unfreeze_loftr'] == 'none':
            with torch.no_grad():
                tok_q, tok_r = self.loftr.attend(feat_q, feat_r)
        else:
            tok_q, tok_r = self.loftr.attend(feat_q, feat_r)
        hw_q, hw_r = tuple(feat_q.shape[2:]), tuple(feat_r.shape[2:])
        K_q, K_r = K if K is not None else (None, None)
        out, stats = self._one_way(tok_q, tok_r, hw_q, hw_r, reference_rotation, 'pos_b', K_r)
        confidence = match_confidence(stats, self.config['confidence'])
        mutual, softmax_conf = stats['mutual'].float().mean(dim=1), stats['softmax_conf'].mean(dim=1)
        if self.uses_two_way:   # reference cells matched into the query: T_query_from_ref, inverted and averaged in
            back, stats_b = self._one_way(tok_r, tok_q, hw_r, hw_q, reference_rotation, 'pos_a', K_q)
            one_way = {'one_way_quat': out['quat'], 'one_way_dir': out['dir'], 'one_way_scale_raw': out['scale']}
            out = {**out, **one_way, **fuse_two_way(out, back)}
            confidence = 0.5 * (confidence + match_confidence(stats_b, self.config['confidence']))
            mutual = 0.5 * (mutual + stats_b['mutual'].float().mean(dim=1))
            softmax_conf = 0.5 * (softmax_conf + stats_b['softmax_conf'].mean(dim=1))
        out['confidence'] = confidence
        out['scale_raw'] = out['scale']                   # what the loss trains (B,)
        out['scale'] = out['scale_raw'] * calibration_factor(self.scale_calibration, confidence.detach())
        out['mutual_fraction'] = mutual
        out['softmax_conf'] = softmax_conf
        return out

    @property
    def uses_two_way(self) -> bool:
        mode = self.config['two_way']
        return mode == 'always' or (mode == 'eval' and not self.training)

    def _one_way(self, tok_a: torch.Tensor, tok_b: torch.Tensor, hw_a: tuple[int, int], hw_b: tuple[int, int],
                 reference_rotation: tuple[torch.Tensor, torch.Tensor] | None, reference_channel: str,
                 K_b: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Head outputs (pose of camera A in camera B's frame) and match statistics of A's cells matched into B.
        ``reference_channel``: the map's reference positions ('pos_b' when A is the query, 'pos_a' when A is
        the reference), the ones a ``reference_rotation`` moves. ``K_b``: B's intrinsics (``derotate``)."""
        cmap, stats = hard_match_and_warp(tok_a, tok_b, hw_a, hw_b, float(self.config['temperature']),
                                          bool(self.config['subcell_positions']))
        if reference_rotation is not None:
            ref_hw = hw_b if reference_channel == 'pos_b' else hw_a
            cmap = self._rotate_reference(cmap, *reference_rotation, ref_hw, reference_channel)
        out = self.head(self.head_input(cmap))
        if self.config['derotate']:
            out = self._derotated(cmap, out, K_b, hw_b)
        return out, stats

    def _derotated(self, cmap: torch.Tensor, first: dict[str, torch.Tensor], K_b: torch.Tensor,
                   hw_b: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Second pass: camera B virtually rotated by R_a = R̂ᵀ (R̂ = the first pass's R_B_from_A, detached), so
        the displacement of the matches left is (mostly) translation parallax; the head's pose (R', c') of A in
        the rotated B is mapped back exactly: R = R_aᵀ R', c = R_aᵀ c' (rotation_augment.py, the same algebra as
        the training rotation). The first pass's outputs are kept as ``*_first`` (the loss trains both)."""
        R_a = quaternion_to_rotation_matrix(first['quat'].detach()).transpose(1, 2)        # (B, 3, 3)
        second = self.head(self.head_input(self._rotate_reference(cmap, R_a, K_b, hw_b, 'pos_b')))
        centre_rot = second['dir'] * second['scale'][:, None]                             # (B, 3) c'
        quat, centre = compose_rotation(R_a.transpose(1, 2), second['quat'], centre_rot)
        scale = centre.norm(dim=1)
        return {'quat': quat, 'dir': centre / scale[:, None].clamp(min=1e-9), 'scale': scale,
                **{f'{k}_first': v for k, v in first.items()}}

    def _rotate_reference(self, cmap: torch.Tensor, R_a: torch.Tensor, K: torch.Tensor,
                          ref_hw: tuple[int, int], channel: str = 'pos_b') -> torch.Tensor:
        if self.config['appearance_channels']:
            raise ConfigError('reference rotation changes only the match geometry: it needs '
                              'appearance_channels: false')
        b, ch, h, w = cmap.shape
        pos = cmap_channels(ch)[channel]
        pos_r = cmap[:, pos].flatten(2).transpose(1, 2)                              # (B, h*w, 2)
        pos_r = rotate_reference_positions(pos_r, R_a.to(cmap), K.to(cmap), ref_hw)
        out = cmap.clone()
        out[:, pos] = pos_r.transpose(1, 2).reshape(b, 2, h, w)
        return out

    def head_input(self, cmap: torch.Tensor) -> torch.Tensor:
        """The correspondence map as the head sees it: all of it, or (``appearance_channels: false``) only
        p_q, p_r and the confidence, with f_q and the warped f_r zeroed (same head shapes, same checkpoints)."""
        if self.config['appearance_channels']:
            return cmap
        ch = cmap_channels(cmap.shape[1])
        mask = torch.zeros(1, cmap.shape[1], 1, 1, dtype=cmap.dtype, device=cmap.device)
        for kept in ('pos_a', 'pos_b', 'conf'):
            mask[:, ch[kept]] = 1.0
        return cmap * mask

    def forward(self, gray_q: torch.Tensor, gray_r: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pose of the query camera in the reference frame from two (B, 1, H, W) grayscale images."""
        if gray_q.shape == gray_r.shape:  # one backbone pass for both
            both = self.extract(torch.cat([gray_q, gray_r], dim=0))
            feat_q, feat_r = both.chunk(2, dim=0)
        else:
            feat_q, feat_r = self.extract(gray_q), self.extract(gray_r)
        return self.forward_features(feat_q, feat_r)


def pose_to_T_query_from_ref(quat, direction, scale) -> tuple[np.ndarray, np.ndarray]:
    """Network output (T_ref_from_query as quaternion, unit direction, scale) -> (R, t) of T_query_from_ref."""
    from ...geometry import quat_to_matrix

    R_ref_from_query = quat_to_matrix(np.asarray(quat, dtype=np.float64))
    centre = np.asarray(direction, dtype=np.float64).reshape(3) * float(scale)   # query centre in ref frame
    R = R_ref_from_query.T
    return R, -R @ centre


def T_to_targets(T_query_from_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth T_query_from_ref (4x4) -> training targets (quat w>=0 of R_ref_from_query, centre (3,))."""
    from ...geometry import inverse_T, matrix_to_quat

    T_rq = inverse_T(T_query_from_ref)
    q = matrix_to_quat(T_rq[:3, :3])
    q = q if q[0] >= 0 else -q
    return q, T_rq[:3, 3].copy()


def clone_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(cfg))
