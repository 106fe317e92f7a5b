"""Lightning module and data module of the regression training pipeline."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from ..models.regression import RegressionModel, pose_loss
from ..models.regression.calibration import calibration_factor, fit_scale_calibration
from ..models.regression.rotation_augment import random_rotations, rotate_reference_targets
from . import data as D
from .metrics import batch_errors, summarize

log = logging.getLogger(__name__)


def photometric_augmentation() -> torch.nn.Module:
    """Random brightness, contrast, gamma and sensor noise on grayscale batches (kornia)."""
    import kornia.augmentation as KA

    return KA.AugmentationSequential(
        KA.RandomBrightness((0.75, 1.25), p=0.8), KA.RandomContrast((0.7, 1.3), p=0.8),
        KA.RandomGamma((0.7, 1.4), p=0.5), KA.RandomGaussianNoise(std=0.02, p=0.3), random_apply=False)


class PairDataModule(L.LightningDataModule):
    """Loads the configured sequences once and serves scene-balanced training pairs and fixed val pairs.

    ``sequences`` (optional) maps the ``dataset`` strings of the config to ready Sequence objects (tests).
    """

    def __init__(self, config: Mapping[str, Any], sequences: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = config
        self.sequences = dict(sequences or {})
        self.train_scenes: list[D.LoadedScene] = []
        self.val_scenes: list[D.LoadedScene] = []
        self.calib_scenes: list[D.LoadedScene] = []
        self.calib_pairs: np.ndarray | None = None
        self.trivial: dict[str, float] | None = None

    def _load(self, sources, first_id: int) -> list[D.LoadedScene]:
        d = self.cfg['data']
        with_depth = d['pairs']['mode'] == 'overlap'
        scenes = []
        for src in sources:
            seq = self.sequences.get(src['dataset']) or D.open_source(src['dataset'], use_depth=with_depth)
            scene = D.load_scene(seq, src.get('frames'), self.cfg['model']['image_size'], first_id, with_depth)
            first_id += len(scene.poses)
            scenes.append(scene)
        return scenes

    def setup(self, stage: str | None = None) -> None:
        if self.train_scenes:
            return
        d = self.cfg['data']
        if not d['train']:
            from ..errors import ConfigError
            raise ConfigError('data.train lists no datasets')
        self.train_scenes = self._load(d['train'], 0)
        n_train = sum(len(s.poses) for s in self.train_scenes)
        self.val_scenes = self._load(d['val'], n_train) if d['val'] else []
        n_val = sum(len(s.poses) for s in self.val_scenes)
        self.calib_scenes = self._load(d['calib'], n_train + n_val) if d['calib'] else []
        pick_seed = self.cfg['seed'] if d['subset_seed'] is None else d['subset_seed']
        self.calib_pairs = (D.fixed_subset(D.build_pairs(self.calib_scenes, d['pairs']), d['calib_num_pairs'],
                                           pick_seed) if self.calib_scenes else None)
        self.train_pairs = D.build_pairs(self.train_scenes, d['pairs'])
        self.val_pairs = (D.fixed_subset(D.build_pairs(self.val_scenes, d['pairs']), d['val_num_pairs'],
                                         pick_seed) if self.val_scenes else None)
        targets = [D.pair_targets(self.train_scenes[s], q, r) for s, q, r in self.train_pairs]
        self.trivial_pose = D.mean_pose(np.stack([t[0] for t in targets]), np.stack([t[1] for t in targets]))
        log.info('training pairs: %d in %d scenes; validation pairs: %s', len(self.train_pairs),
                 len(self.train_scenes), None if self.val_pairs is None else len(self.val_pairs))

    def trivial_val_metrics(self) -> dict[str, float] | None:
        """Validation errors of always predicting the training pairs' mean relative pose."""
        if self.val_pairs is None:
            return None
        q, c = self.trivial_pose
        gts = [D.pair_targets(self.val_scenes[s], qi, ri) for s, qi, ri in self.val_pairs]
        qg = torch.tensor(np.stack([g[0] for g in gts]), dtype=torch.float32)
        tg = torch.tensor(np.stack([g[1] for g in gts]), dtype=torch.float32)
        n = len(gts)
        scale = float(np.linalg.norm(c))
        out = {'quat': torch.tensor(q, dtype=torch.float32).expand(n, 4),
               'dir': torch.tensor(c / max(scale, 1e-9), dtype=torch.float32).expand(n, 3),
               'scale': torch.full((n,), scale)}
        return summarize({k: v.numpy() for k, v in batch_errors(out, qg, tg).items()})

    def train_dataloader(self):
        d = self.cfg['data']
        dataset = D.PairDataset(self.train_scenes, self.train_pairs, mirror=d['mirror'])
        sampler = D.SceneBalancedSampler(dataset.scene_of_item(), d['pairs_per_epoch'], self.cfg['seed'])
        return D.make_loader(dataset, d['batch_size'], sampler=sampler,
                             num_workers=d['num_workers'], drop_last=len(dataset) > d['batch_size'])

    def calib_dataloader(self):
        """The held-out calibration pairs (fixed), or None."""
        if self.calib_pairs is None:
            return None
        return D.make_loader(D.PairDataset(self.calib_scenes, self.calib_pairs), self.cfg['data']['batch_size'],
                             num_workers=self.cfg['data']['num_workers'])

    def val_dataloader(self):
        if self.val_pairs is None:
            return []
        return D.make_loader(D.PairDataset(self.val_scenes, self.val_pairs), self.cfg['data']['batch_size'],
                             num_workers=self.cfg['data']['num_workers'])


class RegressionLitModule(L.LightningModule):
    """Trains the regression head (and optionally LoFTR layers) with the paper's loss."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({'config': dict(config)})
        self.cfg = config
        self.model = RegressionModel(config['model'])
        self.augment = photometric_augmentation() if config['data']['augment'] else None
        self.cache_backbone = bool(config['train']['cache_backbone'])
        self._feature_cache: dict[int, torch.Tensor] = {}
        self._val_outputs: list[dict[str, np.ndarray]] = []
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ forward with optional cache
    def _features(self, gray: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        if not self.cache_backbone:
            return self.model.extract(gray)
        missing = [i for i, k in enumerate(keys.tolist()) if k not in self._feature_cache]
        if missing:
            feats = self.model.extract(gray[missing])
            for i, f in zip(missing, feats):
                self._feature_cache[int(keys[i])] = f.detach()
        return torch.stack([self._feature_cache[int(k)] for k in keys.tolist()])

    @torch.no_grad()
    def warm_cache(self, scenes: list, batch_size: int = 32, mirrored: bool = False) -> int:
        """Fill the frozen-backbone feature cache for every frame of ``scenes`` (cache_backbone only);
        ``mirrored``: of the left-right flipped frames (keys offset by ``MIRROR_KEY_OFFSET``)."""
        if not self.cache_backbone:
            return 0
        self.model.train(self.training)  # keeps the frozen parts in eval mode
        offset = D.MIRROR_KEY_OFFSET if mirrored else 0
        for scene in scenes:
            frames = scene.gray[:, :, ::-1] if mirrored else scene.gray
            for s in range(0, len(frames), batch_size):
                chunk = np.ascontiguousarray(frames[s:s + batch_size])
                gray = torch.from_numpy(chunk).float().div_(255.0)[:, None].to(self.device)
                keys = torch.arange(scene.first_id + s, scene.first_id + s + len(gray)) + offset
                self._features(gray, keys)
        return len(self._feature_cache)

    def _run(self, batch: dict[str, torch.Tensor], augment: bool,
             reference_rotation: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        gq, gr = batch['gray_q'], batch['gray_r']
        if augment and self.augment is not None:
            gq, gr = self.augment(gq).clamp(0, 1), self.augment(gr).clamp(0, 1)
        if self.cache_backbone:
            fq, fr = self._features(gq, batch['key_q']), self._features(gr, batch['key_r'])
        else:
            both = self.model.extract(torch.cat([gq, gr]))
            fq, fr = both.chunk(2)
        K = (batch['K_ref'], batch['K_ref']) if 'K_ref' in batch else None   # one camera per scene
        return self.model.forward_features(fq, fr, reference_rotation, K)

    # ------------------------------------------------------------------ training / validation
    def training_step(self, batch, batch_idx):
        quat_gt, t_gt, rotation = batch['quat_gt'], batch['t_gt'], None
        max_deg = float(self.cfg['data']['rotate_reference_deg'])
        if max_deg > 0:      # virtual reference rotation (rotation_augment.py): positions and targets, exactly
            R_a = random_rotations(len(t_gt), max_deg).to(t_gt)
            rotation = (R_a, batch['K_ref'])
            quat_gt, t_gt = rotate_reference_targets(quat_gt, t_gt, R_a)
        out = self._run(batch, augment=True, reference_rotation=rotation)
        terms = pose_loss(out['quat'].float(), out['dir'].float(), out['scale_raw'].float(), quat_gt, t_gt,
                          weights=self.cfg['loss'])
        if 'quat_first' in out:   # model.derotate: the first pass (whose rotation derotates) is trained too
            first = pose_loss(out['quat_first'].float(), out['dir_first'].float(), out['scale_first'].float(),
                              quat_gt, t_gt, weights=self.cfg['loss'])
            terms['loss'] = terms['loss'] + first['loss']
            self.log('train/loss_first', first['loss'], batch_size=len(t_gt))
        bs = batch['gray_q'].shape[0]
        self.log('train/loss', terms['loss'], prog_bar=True, batch_size=bs)
        for k in ('rot', 'dir', 'scale', 'centre'):
            self.log(f'train/{k}', terms[k], batch_size=bs)
        return terms['loss']

    def validation_step(self, batch, batch_idx):
        out = self._run(batch, augment=False)
        out = {k: v.float() for k, v in out.items()}
        terms = pose_loss(out['quat'], out['dir'], out['scale_raw'], batch['quat_gt'], batch['t_gt'],
                          weights=self.cfg['loss'])
        self.log('val/loss', terms['loss'], batch_size=batch['gray_q'].shape[0], sync_dist=True)
        keep = {k: out[k] for k in ('quat', 'dir', 'scale_raw', 'confidence')}
        keep.update(mutual=out['mutual_fraction'], softmax=out['softmax_conf'], quat_gt=batch['quat_gt'],
                    t_gt=batch['t_gt'])
        if 'one_way_quat' in out:   # two-way fusion ran: its forward pose too, to measure what the fusion changes
            keep.update({k: out[k] for k in ('one_way_quat', 'one_way_dir', 'one_way_scale_raw')})
        self._val_outputs.append({k: v.detach().cpu().numpy() for k, v in keep.items()})

    @torch.no_grad()
    def calibrate_scale(self) -> tuple[float, float] | None:
        """Fit (a, b) of ``train.scale_calibration`` on the held-out calibration pairs and store them in the
        model's ``scale_calibration`` buffer; None when calibration is off."""
        mode = self.cfg['train']['scale_calibration']
        dm = getattr(self.trainer, 'datamodule', None) if self._trainer is not None else None
        loader = dm.calib_dataloader() if mode != 'none' and dm is not None else None
        if loader is None:
            return None
        was_training = self.training
        self.model.eval()
        rows = []
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self._run(batch, augment=False)
            rows.append([out['scale_raw'].float().cpu().numpy(), out['dir'].float().cpu().numpy(),
                         out['confidence'].float().cpu().numpy(), batch['t_gt'].cpu().numpy()])
        self.model.train(was_training)
        a, b = fit_scale_calibration(*[np.concatenate(col) for col in zip(*rows)], mode=mode)
        self.model.scale_calibration.copy_(torch.tensor([a, b]))
        return a, b

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        cat = {k: np.concatenate([o[k] for o in self._val_outputs]) for k in self._val_outputs[0]}
        self._val_outputs.clear()
        calibration = self.calibrate_scale()
        factor = calibration_factor(self.model.scale_calibration.cpu().double(),
                                    torch.from_numpy(cat['confidence']).double()).numpy()
        gt = torch.from_numpy(cat['quat_gt']), torch.from_numpy(cat['t_gt'])

        def errors(scale: np.ndarray, prefix: str = '') -> dict[str, np.ndarray]:
            out = {'quat': torch.from_numpy(cat[prefix + 'quat']), 'dir': torch.from_numpy(cat[prefix + 'dir']),
                   'scale': torch.from_numpy(scale.astype(np.float32))}
            return {k: v.numpy() for k, v in batch_errors(out, *gt).items()}

        calibrated = errors(cat['scale_raw'] * factor)
        summary = summarize(calibrated, cat['confidence'])
        for kind in ('mutual', 'softmax'):
            summary[f'spearman_{kind}_centre'] = summarize(calibrated, cat[kind])['spearman_conf_centre']
        if 'one_way_quat' in cat:
            one = summarize(errors(cat['one_way_scale_raw'] * factor, 'one_way_'))
            summary.update({f'one_way_{k}': one[k] for k in ('rot_med_deg', 'centre_med_m', 'dir_med_deg',
                                                              'prec_25cm_5deg')})
        if calibration is not None:
            raw = summarize(errors(cat['scale_raw']))
            summary.update(raw_centre_med_m=raw['centre_med_m'], raw_prec_25cm_5deg=raw['prec_25cm_5deg'],
                           calib_a=calibration[0], calib_b=calibration[1])
        for k, v in summary.items():
            if np.isfinite(v):
                self.log(f'val/{k}', float(v), prog_bar=k in ('rot_med_deg', 'centre_med_m'), sync_dist=True)
        if self.trainer is not None and not self.trainer.sanity_checking:
            row = {'epoch': int(self.current_epoch), 'step': int(self.global_step), **summary}
            self.history.append(row)
            if self.trainer.is_global_zero:
                log.info('validation %s', json.dumps(row))
                out_dir = Path(self.cfg['out_dir'])
                out_dir.mkdir(parents=True, exist_ok=True)
                with open(out_dir / 'val_history.jsonl', 'a') as fh:
                    fh.write(json.dumps(row) + '\n')

    def configure_optimizers(self):
        o = self.cfg['optim']
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=float(o['lr']), weight_decay=float(o['weight_decay']))
        if o['schedule'] == 'cosine':
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.cfg['train']['max_epochs']),
                                                               eta_min=float(o['lr']) * float(o['min_lr_factor']))
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(o['lr_decay_every']),
                                                    gamma=float(o['lr_decay']))
        return {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'interval': 'epoch'}}
