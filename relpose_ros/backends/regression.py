"""The ``regression`` backend: one forward pass of the LoFTR-feature pose regressor, no RANSAC, no depth.

Reference caching: the reference's LoFTR CNN features (backbone + positional encoding) are computed once in
``prepare_reference``. The coarse transformer attends across both images, so it, the matching and the head run
per live frame. Output: the network regresses T_ref_from_query (the query camera's pose in the reference frame);
``estimate`` returns its inverse, T_query_from_ref, as every estimator does. The network itself learned the
camera implicitly from its training data (train on data from a similar camera); only a head trained with
``derotate`` uses the frames' intrinsics (scaled to the network resolution) for its derotated second pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from ..types import Frame, PoseEstimate
from .base import Estimator, Reference, StageTimer


class RegressionEstimator(Estimator):
    name = 'regression'
    depth_usage = 'none'
    default_config: dict[str, Any] = {
        'checkpoint': '',        # file written by `relpose train` (required)
        'loftr_weights': '',     # optional: LoFTR checkpoint the head was trained with (checked, must match)
        'image_size': [0, 0],    # [H, W] for landscape frames (swapped for portrait); [0, 0] = the training size
        'confidence': '',        # mutual | softmax | mutual_softmax; '' = as trained
        'two_way': '',           # none | eval | always: average in the reference->query pose; '' = as trained
    }

    def __init__(self, config=None, device: str = 'auto') -> None:
        super().__init__(config, device)
        from ..models.regression.checkpoint import load_regression_model

        if not self.config['checkpoint']:
            raise WeightsError('regression.checkpoint is not set: give the path of a checkpoint written by '
                               '`relpose train` (e.g. runs/regression/checkpoints/best.ckpt)')
        overrides = {}
        size = self.config['image_size']
        if size is not None and any(int(v) for v in size):
            overrides['image_size'] = [int(v) for v in size]
        for key in ('confidence', 'two_way'):
            if self.config[key]:
                overrides[key] = self.config[key]
        self.model = load_regression_model(self.config['checkpoint'], overrides).to(self.device).eval()
        if self.config['loftr_weights']:
            self._check_loftr(self.config['loftr_weights'])
        self.image_size = self.model.config['image_size']

    def _check_loftr(self, path) -> None:
        """The given LoFTR file must hold exactly the LoFTR weights stored in the checkpoint."""
        from ..models.regression.loftr import LoFTRCoarse

        given = LoFTRCoarse(path).state_dict()
        own = self.model.loftr.state_dict()
        differ = [k for k in own if not torch.equal(own[k].cpu(), given[k])]
        if differ:
            raise WeightsError(f'regression.loftr_weights {path} differ from the LoFTR weights the head in '
                               f'{self.config["checkpoint"]} was trained with ({len(differ)} tensors differ, e.g. '
                               f'{differ[:3]}); leave loftr_weights empty to use the checkpoint\'s own')

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), 'checkpoint': str(self.config['checkpoint']),
                'image_size': self.image_size, 'confidence': self.model.config['confidence'],
                'two_way': self.model.config['two_way']}

    def _gray(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 1, H, W) network input in [0, 1] and the frame's intrinsics at that resolution (1, 3, 3)."""
        from ..geometry import resize_intrinsics
        from ..train.data import network_size, to_gray

        size = network_size(self.image_size, frame.height, frame.width)
        gray = to_gray(frame.rgb, size)
        K = resize_intrinsics(frame.K, (frame.width, frame.height), (size[1], size[0]))
        return (torch.from_numpy(gray).to(self.device, torch.float32).div_(255.0)[None, None],
                torch.from_numpy(K).to(self.device, torch.float32)[None])

    def prepare_reference(self, frame: Frame) -> Reference:
        frame.validate()
        timer = StageTimer()
        with torch.inference_mode():
            with timer('preprocess'):
                gray, K = self._gray(frame)
            with timer('backbone'):
                feat = self.model.extract(gray)            # (1, 256, H/8, W/8), position encoded
        return Reference(frame=frame, features=(feat, K), timings=timer.timings)

    def estimate(self, reference: Reference, frame: Frame) -> PoseEstimate:
        frame.validate()
        timer = StageTimer()
        try:
            with torch.inference_mode():
                with timer('preprocess'):
                    gray, K_q = self._gray(frame)
                with timer('backbone'):
                    feat_q = self.model.extract(gray)
                with timer('regress'):
                    feat_r, K_r = reference.features
                    out = self.model.forward_features(feat_q, feat_r, K=(K_q, K_r))
                    out = {k: v[0].float().cpu().numpy() for k, v in out.items()}
        except (RuntimeError, ValueError) as exc:
            return PoseEstimate.failure(f'regression forward failed: {exc}', timings=timer.timings)
        from ..models.regression.model import pose_to_T_query_from_ref

        if not all(np.all(np.isfinite(out[k])) for k in ('quat', 'dir', 'scale', 'confidence')):
            return PoseEstimate.failure('regression produced a non-finite pose', timings=timer.timings)
        R, t = pose_to_T_query_from_ref(out['quat'], out['dir'], out['scale'])
        n_cells = feat_q.shape[2] * feat_q.shape[3]
        return PoseEstimate(R=R, t=t, confidence=float(out['confidence']), score=float(out['confidence']),
                            num_inliers=int(round(float(out['mutual_fraction']) * n_cells)), ok=True,
                            reason='', timings=timer.timings)
