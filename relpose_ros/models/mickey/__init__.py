"""MicKey (Barroso-Laguna et al., CVPR 2024): metric keypoints from a DINOv2 backbone, dual-softmax matching."""
from .model import KeypointFeatures, MickeyConfig, MickeyExtractor, MickeyModel, crop_to_patches
from .weights import export_official, load_mickey

__all__ = ['KeypointFeatures', 'MickeyConfig', 'MickeyExtractor', 'MickeyModel', 'crop_to_patches',
           'export_official', 'load_mickey']
