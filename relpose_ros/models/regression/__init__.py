"""LoFTR-feature relative pose regression (second paper in shared/papers): model, loss, checkpoint I/O."""
from .loss import pose_loss
from .model import DEFAULT_MODEL_CONFIG, RegressionModel, model_config, pose_to_T_query_from_ref, T_to_targets

__all__ = ['DEFAULT_MODEL_CONFIG', 'RegressionModel', 'T_to_targets', 'model_config', 'pose_loss',
           'pose_to_T_query_from_ref']
