"""Training configuration: defaults, YAML loading and validation (unknown keys are errors)."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..backends.base import merge_config
from ..errors import ConfigError
from ..models.regression.model import DEFAULT_MODEL_CONFIG, model_config

DEFAULT_TRAIN_CONFIG: dict[str, Any] = {
    'seed': 0,
    'out_dir': 'runs/regression',
    'model': copy.deepcopy(DEFAULT_MODEL_CONFIG),
    'data': {
        'train': [],            # list of {dataset: 'FORMAT:PATH', frames: [start, stop(, step)] | null}
        'val': [],
        # held-out pairs for the scale calibration (train.scale_calibration); never trained on
        'calib': [],
        'calib_num_pairs': 400,
        'pairs': {'mode': 'gap', 'min_gap': 5, 'max_gap': 40, 'min_overlap': 0.3, 'max_overlap': 0.95},
        'pairs_per_epoch': 1000,
        'val_num_pairs': 200,
        'subset_seed': None,    # seed of the fixed validation / calibration pair subsets; None = the run's seed
                                # (set it to compare runs with other seeds on the same pairs)
        'batch_size': 8,
        'num_workers': 0,
        'augment': True,        # photometric: brightness, contrast, gamma, noise (training only)
        'mirror': False,        # also train on every pair with both images flipped left-right (pose mirrored)
        # > 0: rotate the reference camera virtually by up to this many degrees per training pair (geometry-only
        # head: model.appearance_channels false; models/regression/rotation_augment.py)
        'rotate_reference_deg': 0.0,
    },
    # loss weights: the paper's rotation + direction + scale (unit weights); 'centre' adds |s d - t| (metres)
    'loss': {'rot': 1.0, 'dir': 1.0, 'scale': 1.0, 'centre': 0.0},
    # LoFTR coarse stage trained on ground-truth coarse matches (depth + poses of data.train) before the head,
    # when no pretrained LoFTR file exists; steps: 0 = off. See relpose_ros/train/matching.py.
    'pretrain_matching': {
        'steps': 0, 'lr': 1e-3, 'schedule': 'onecycle', 'batch_size': 4, 'min_gap': 3, 'max_gap': 40,
        'temperature': 0.1, 'occlusion_tol': 0.15, 'augment': True, 'eval_every': 100, 'eval_pairs': 64,
        'max_time_s': None, 'out': None,
        'warmup_steps': 0, 'warmup_size': [120, 160],  # optional first stage at a smaller (cheaper) size
    },
    # schedule 'step' (the paper): lr x lr_decay every lr_decay_every epochs; 'cosine': cosine annealing from lr
    # to lr * min_lr_factor over train.max_epochs (not in the paper)
    'optim': {'lr': 1e-4, 'weight_decay': 0.0, 'schedule': 'step', 'lr_decay': 0.9, 'lr_decay_every': 6,
              'min_lr_factor': 0.01},
    'train': {
        'max_epochs': 20,
        'max_steps': -1,
        'max_time': None,       # e.g. '00:00:25:00' (DD:HH:MM:SS)
        'accelerator': 'auto',
        'devices': 1,
        'strategy': 'auto',
        'precision': 'auto',    # auto = 16-mixed on CUDA (AMP), 32-true on CPU
        'cache_backbone': False,  # keep frozen CNN features per frame in memory (needs augment off)
        'validate_before_fit': True,
        'log_every_n_steps': 10,
        'progress_bar': True,
        'num_threads': None,    # torch CPU threads
        # none | scalar | confidence: after every validation, fit the centre's scale factor on data.calib
        # (models/regression/calibration.py); the checkpoint carries it
        'scale_calibration': 'none',
    },
}


def train_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with ``overrides`` and checked."""
    overrides = dict(overrides or {})
    cfg = merge_config(DEFAULT_TRAIN_CONFIG, overrides, 'train config')
    cfg['model'] = model_config(cfg['model'])
    for key in ('train', 'val', 'calib'):
        for src in cfg['data'][key]:
            if not isinstance(src, Mapping) or 'dataset' not in src or set(src) - {'dataset', 'frames'}:
                raise ConfigError(f"data.{key} entries must be {{dataset: 'FORMAT:PATH', frames: [start, stop]}}, "
                                  f'got {src!r}')
    if cfg['train']['cache_backbone'] and cfg['data']['augment']:
        raise ConfigError('train.cache_backbone needs data.augment: false (augmented images have other features)')
    if cfg['train']['cache_backbone'] and cfg['model']['unfreeze_loftr'] == 'all':
        raise ConfigError('train.cache_backbone needs a frozen LoFTR backbone (model.unfreeze_loftr != all)')
    if float(cfg['data']['rotate_reference_deg']) > 0 and cfg['model']['appearance_channels']:
        raise ConfigError('data.rotate_reference_deg changes only the match geometry: it needs '
                          'model.appearance_channels: false')
    if cfg['optim']['schedule'] not in ('step', 'cosine'):
        raise ConfigError(f"optim.schedule must be step or cosine, got {cfg['optim']['schedule']!r}")
    if cfg['optim']['schedule'] == 'cosine' and int(cfg['train']['max_epochs']) <= 0:
        raise ConfigError('optim.schedule: cosine anneals over train.max_epochs, which must be > 0')
    from ..models.regression.calibration import CALIBRATION_MODES
    mode = cfg['train']['scale_calibration']
    if mode not in CALIBRATION_MODES:
        raise ConfigError(f'train.scale_calibration must be one of {CALIBRATION_MODES}, got {mode!r}')
    if mode != 'none' and not cfg['data']['calib']:
        raise ConfigError(f'train.scale_calibration: {mode} needs held-out pairs: data.calib lists no datasets')
    from .matching import check_config
    check_config(cfg['pretrain_matching'])
    return cfg


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML training config and apply dotted ``overrides`` ({'train.max_steps': 10})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'training config {path} does not exist')
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f'training config {path} must be a YAML mapping')
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split('.')
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return train_config(raw)
