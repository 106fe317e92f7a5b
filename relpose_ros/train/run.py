"""``fit(config)``: build the Lightning trainer and train the regression model.

Multi-GPU: ``train.devices: 4, train.strategy: ddp`` (or ``relpose train --devices 4 --strategy ddp``) runs
Lightning DDP, one process per GPU; ``pairs_per_epoch`` and the batch size are per process. AMP (float16
mixed precision) is used on CUDA when ``train.precision`` is ``auto``.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _precision(cfg: Mapping[str, Any]) -> str:
    import torch

    p = cfg['train']['precision']
    if p != 'auto':
        return str(p)
    acc = str(cfg['train']['accelerator'])
    cuda = acc in ('gpu', 'cuda') or (acc == 'auto' and torch.cuda.is_available())
    return '16-mixed' if cuda else '32-true'


def build_trainer(cfg: Mapping[str, Any], callbacks: list | None = None):
    """A Lightning Trainer with checkpoints (best by median centre error + last) and a CSV log."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg['train']
    out = Path(cfg['out_dir'])
    # Lightning 2.6 refreshes `save_last` only when the monitored checkpoint improves, so last.ckpt is its own
    # callback without a monitor: overwritten after every epoch (what --resume last continues from).
    last = ModelCheckpoint(dirpath=out / 'checkpoints', filename='last', save_top_k=1, monitor=None,
                           enable_version_counter=False)
    ckpt = [ModelCheckpoint(dirpath=out / 'checkpoints', filename='best', monitor='val/centre_med_m', mode='min',
                            save_top_k=1, enable_version_counter=False)] if cfg['data']['val'] else []
    return L.Trainer(
        max_epochs=t['max_epochs'], max_steps=t['max_steps'], max_time=t['max_time'],
        accelerator=t['accelerator'], devices=t['devices'], strategy=t['strategy'], precision=_precision(cfg),
        default_root_dir=str(out), logger=CSVLogger(str(out), name='logs'), callbacks=[*ckpt, last, *(callbacks or [])],
        log_every_n_steps=t['log_every_n_steps'], enable_progress_bar=t['progress_bar'],
        num_sanity_val_steps=0, deterministic=False)


def prepare(cfg: Mapping[str, Any], sequences: Mapping[str, Any] | None = None):
    """(data module set up, Lightning module, trainer) for ``cfg``; the output folder is created."""
    import lightning as L
    import torch

    from .module import PairDataModule, RegressionLitModule

    if cfg['train']['num_threads']:
        torch.set_num_threads(int(cfg['train']['num_threads']))
    L.seed_everything(int(cfg['seed']), workers=True, verbose=False)
    out = Path(cfg['out_dir'])
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.json').write_text(json.dumps(cfg, indent=2, default=str) + '\n')
    dm = PairDataModule(cfg, sequences)
    dm.setup('fit')
    return dm, RegressionLitModule(cfg), build_trainer(cfg)


def run_matching_stage(cfg: Mapping[str, Any], resume: str | None = None,
                       sequences: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Stage 1 when ``pretrain_matching.steps > 0`` (and not resuming): train the LoFTR coarse stage on GT
    matches, then continue with ``model.loftr_weights`` = the file it wrote. Returns (config, its summary)."""
    import copy

    cfg = copy.deepcopy(dict(cfg))
    if int(cfg['pretrain_matching']['steps']) <= 0 or resume is not None:
        return cfg, None
    import torch

    from .matching import pretrain_matching

    if cfg['train']['num_threads']:
        torch.set_num_threads(int(cfg['train']['num_threads']))
    summary = pretrain_matching(cfg, sequences)
    cfg['model']['loftr_weights'] = summary['weights']
    return cfg, summary


def fit(cfg: Mapping[str, Any], resume: str | None = None, sequences: Mapping[str, Any] | None = None
        ) -> dict[str, Any]:
    """Train; returns a summary (trivial-predictor and initial/final validation metrics, paths, seconds).

    ``resume``: a checkpoint path, or 'last' for OUT/checkpoints/last.ckpt (optimizer, epoch and step restored).
    """
    cfg, matching = run_matching_stage(cfg, resume, sequences)
    dm, module, trainer = prepare(cfg, sequences)
    out = Path(cfg['out_dir'])
    summary: dict[str, Any] = {'train_pairs': int(len(dm.train_pairs)),
                               'val_pairs': 0 if dm.val_pairs is None else int(len(dm.val_pairs))}
    if matching is not None:
        summary['pretrain_matching'] = matching
    summary['trivial'] = dm.trivial_val_metrics()
    if summary['trivial'] is not None:
        log.info('trivial predictor (mean training pose) on validation: %s', json.dumps(summary['trivial']))
    t0 = time.perf_counter()
    if cfg['train']['cache_backbone']:
        n = module.warm_cache(dm.train_scenes + dm.val_scenes + dm.calib_scenes)
        if cfg['data']['mirror']:
            n = module.warm_cache(dm.train_scenes, mirrored=True)
        summary['cache_seconds'] = time.perf_counter() - t0
        log.info('cached frozen LoFTR CNN features of %d frames in %.1f s', n, summary['cache_seconds'])
    if cfg['train']['validate_before_fit'] and dm.val_pairs is not None and resume is None:
        trainer.validate(module, datamodule=dm, verbose=False)
        summary['initial'] = module.history[-1] if module.history else None
    ckpt_path = resume
    if resume == 'last':
        ckpt_path = str(out / 'checkpoints' / 'last.ckpt')
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        from ..errors import ConfigError
        raise ConfigError(f'cannot resume: checkpoint {ckpt_path} does not exist')
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    summary['seconds'] = time.perf_counter() - t0
    summary['steps'] = int(trainer.global_step)
    summary['final'] = module.history[-1] if module.history else None
    summary['best'] = min(module.history, key=lambda r: r['centre_med_m']) if module.history else None
    cb = trainer.checkpoint_callback
    summary['best_checkpoint'] = getattr(cb, 'best_model_path', '') or None
    summary['last_checkpoint'] = str(out / 'checkpoints' / 'last.ckpt')
    if trainer.is_global_zero:
        (out / 'summary.json').write_text(json.dumps(summary, indent=2, default=float) + '\n')
    return summary


INFERENCE_KEYS = ('two_way', 'confidence')


def validate_checkpoint(cfg: Mapping[str, Any], checkpoint: str, sequences: Mapping[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Validation metrics of a trained checkpoint on ``cfg``'s validation pairs, with the config's inference
    settings (``model.two_way``, ``model.confidence``) instead of the trained ones;
    also the trivial predictor's. Nothing is trained."""
    from ..models.regression.checkpoint import load_regression_model

    dm, module, trainer = prepare(cfg, sequences)
    if dm.val_pairs is None:
        from ..errors import ConfigError
        raise ConfigError('validating a checkpoint needs data.val')
    module.model = load_regression_model(checkpoint, {k: cfg['model'][k] for k in INFERENCE_KEYS})
    trainer.validate(module, datamodule=dm, verbose=False)
    return {'checkpoint': str(checkpoint), **{k: cfg['model'][k] for k in INFERENCE_KEYS},
            'trivial': dm.trivial_val_metrics(), 'metrics': module.history[-1]}
