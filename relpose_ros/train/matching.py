"""Matching pre-training of the LoFTR coarse stage with ground-truth correspondences (LoFTR's coarse loss).

When no pretrained LoFTR file is at hand, the coarse stage (CNN + coarse transformer) can be trained here the way
LoFTR itself is trained, from posed RGB-D frames:

* ground-truth coarse matches (:func:`gt_coarse_matches`): every query coarse-cell centre is lifted with its
  depth, moved into the reference camera with ``T_ref_from_query`` and projected; its GT match is the reference
  cell it lands in. Invalid (-1) when the query cell has no depth, the point lands behind the reference camera or
  outside its image, the reference has no depth there, or the reference depth disagrees (occlusion);
* loss (:func:`dual_softmax_nll`): ``S_ij = <f_q,i, f_r,j> / C / T``, ``P = softmax_i(S) * softmax_j(S)`` (dual
  softmax), ``L = -mean_{valid i} log P_{i, gt(i)}`` (LoFTR paper, Sec. 3.5 coarse loss);
* accuracy (:func:`match_accuracy`): share of valid query cells whose hard match ``argmax_j S_ij`` (the one the
  regression model uses) lies within one cell of the GT cell.

:func:`pretrain_matching` runs it from the training config's ``pretrain_matching`` section and writes the coarse
stage's ``state_dict`` (kornia LoFTR key names) to a file that ``model.loftr_weights`` accepts.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..geometry import relative_pose, scale_intrinsics

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ground truth


def cell_centres(h: int, w: int, stride: int) -> np.ndarray:
    """(h*w, 2) pixel positions (u, v) of the coarse-cell centres, row-major (pixel-corner convention)."""
    v, u = np.mgrid[0:h, 0:w]
    return np.stack([u.ravel(), v.ravel()], axis=1) * float(stride) + stride / 2.0


def gt_coarse_matches(depth_q: np.ndarray, depth_r: np.ndarray, K_q: np.ndarray, K_r: np.ndarray,
                      T_ref_from_query: np.ndarray, stride: int = 8, occlusion_tol: float = 0.15) -> np.ndarray:
    """Ground-truth reference cell of every query coarse cell, (hq*wq,) int64, -1 = no valid match.

    depth_*: (H, W) metres at the network image size (NaN / <= 0 = no depth); K_*: intrinsics at that size;
    a point is occluded when the reference depth at its pixel differs from its depth by more than
    ``occlusion_tol`` (relative).
    """
    hq, wq = depth_q.shape[0] // stride, depth_q.shape[1] // stride
    hr, wr = depth_r.shape[0] // stride, depth_r.shape[1] // stride
    uv = cell_centres(hq, wq, stride)                                             # (N, 2)
    d = depth_q[uv[:, 1].astype(int), uv[:, 0].astype(int)].astype(np.float64)    # (N,)
    rays = np.linalg.solve(np.asarray(K_q, np.float64), np.stack([uv[:, 0], uv[:, 1], np.ones(len(uv))]))
    X_q = (rays * d).T                                                            # (N, 3) query camera
    X_r = X_q @ T_ref_from_query[:3, :3].T + T_ref_from_query[:3, 3]             # (N, 3) reference camera
    z = X_r[:, 2]
    with np.errstate(invalid='ignore', divide='ignore'):
        pix = X_r @ np.asarray(K_r, np.float64).T
        u, v = pix[:, 0] / z, pix[:, 1] / z
    H, W = depth_r.shape
    ok = np.isfinite(d) & (d > 0) & np.isfinite(z) & (z > 1e-3) & (u >= 0) & (u < wr * stride) & (v >= 0) \
        & (v < hr * stride) & (u < W) & (v < H)
    ui, vi = np.where(ok, u, 0).astype(int), np.where(ok, v, 0).astype(int)
    d_ref = depth_r[vi, ui].astype(np.float64)
    with np.errstate(invalid='ignore'):
        ok &= np.isfinite(d_ref) & (d_ref > 0) & (np.abs(d_ref - z) <= occlusion_tol * z)
    cell = (vi // stride) * wr + ui // stride
    return np.where(ok, cell, -1).astype(np.int64)


# ----------------------------------------------------------------------------- loss and accuracy


def similarity(tok_q: torch.Tensor, tok_r: torch.Tensor) -> torch.Tensor:
    """S_ij = <f_q,i, f_r,j> / C for tokens (B, Nq, C), (B, Nr, C) -> (B, Nq, Nr), as the hard matching uses."""
    return torch.einsum('bic,bjc->bij', tok_q, tok_r) / tok_q.shape[-1]


def dual_softmax_nll(tok_q: torch.Tensor, tok_r: torch.Tensor, gt: torch.Tensor,
                     temperature: float = 0.1) -> torch.Tensor:
    """LoFTR's coarse loss: -mean log P_{i,gt(i)} over valid GT (gt (B, Nq) int64, -1 invalid); P = dual softmax."""
    s = similarity(tok_q, tok_r) / temperature                                    # (B, Nq, Nr)
    log_p = torch.log_softmax(s, dim=1) + torch.log_softmax(s, dim=2)             # log dual-softmax
    valid = gt >= 0
    if not bool(valid.any()):
        return s.sum() * 0.0
    picked = log_p.gather(2, gt.clamp(min=0)[..., None]).squeeze(2)               # (B, Nq)
    return -(picked[valid]).mean()


def within_one_cell(pred: torch.Tensor, gt: torch.Tensor, w_r: int) -> torch.Tensor:
    """(B, Nq) bool: predicted reference cell within one cell (8-neighbourhood) of the GT cell."""
    return ((pred // w_r - gt // w_r).abs() <= 1) & ((pred % w_r - gt % w_r).abs() <= 1)


def match_accuracy(tok_q: torch.Tensor, tok_r: torch.Tensor, gt: torch.Tensor, w_r: int) -> tuple[int, int]:
    """(hits, valid cells): hard matches argmax_j S_ij within one cell of the GT match."""
    pred = similarity(tok_q, tok_r).argmax(dim=2)
    valid = gt >= 0
    return int((within_one_cell(pred, gt, w_r) & valid).sum()), int(valid.sum())


def identity_accuracy(gt: torch.Tensor, hw_q: tuple[int, int], hw_r: tuple[int, int]) -> tuple[int, int]:
    """(hits, valid) of the 'identity match' (every query cell matched to the same position) for comparison."""
    (hq, wq), (hr, wr) = hw_q, hw_r
    cell = torch.arange(hq * wq)
    same = ((cell // wq).clamp(max=hr - 1) * wr + (cell % wq).clamp(max=wr - 1)).expand_as(gt)
    valid = gt >= 0
    return int((within_one_cell(same, gt, wr) & valid).sum()), int(valid.sum())


# ----------------------------------------------------------------------------- data


@dataclass
class DepthScene:
    """Posed RGB-D frames at the network size: gray (N, H, W) uint8, depth (N, H, W) float32, poses, K."""

    name: str
    gray: np.ndarray
    depth: np.ndarray
    poses: np.ndarray
    K: np.ndarray


def load_depth_scene(seq, frames, size) -> DepthScene:
    """Frames ``[start, stop(, step)]`` of a Sequence with depth and pose, resized to the network size."""
    from .data import network_size, to_gray

    start, stop, step = (0, len(seq), 1) if frames is None else (int(frames[0]), int(frames[1]),
                                                                  int(frames[2]) if len(frames) > 2 else 1)
    grays, depths, poses, K = [], [], [], None
    for i in range(start, min(stop, len(seq)), step):
        pf = seq[i]
        if not pf.has_pose:
            continue
        if pf.frame.depth is None:
            raise DatasetError(f'matching pre-training needs depth, but {seq.name} frame {i} has none')
        h, w = pf.frame.rgb.shape[:2]
        hn, wn = network_size(size, h, w)
        grays.append(to_gray(pf.frame.rgb, (hn, wn)))
        depths.append(cv2.resize(pf.frame.depth.astype(np.float32), (wn, hn), interpolation=cv2.INTER_NEAREST))
        poses.append(np.asarray(pf.T_world_from_cam, np.float64))
        K = scale_intrinsics(pf.frame.K, wn / w, hn / h)
    if len(grays) < 2:
        raise DatasetError(f'{seq.name}: fewer than two posed frames with depth for matching pre-training')
    return DepthScene(seq.name, np.stack(grays), np.stack(depths), np.stack(poses), K)


def scene_pairs(scene: DepthScene, min_gap: int, max_gap: int) -> np.ndarray:
    """(P, 2) (query, reference) local indices with min_gap <= |i - j| <= max_gap, both orders."""
    n = len(scene.poses)
    out = [(j, i) for i in range(n) for j in range(i + min_gap, min(n, i + max_gap + 1))]
    out += [(b, a) for a, b in out]
    if not out:
        raise DatasetError(f'{scene.name}: no pairs with gap {min_gap}-{max_gap}')
    return np.asarray(out, dtype=np.int64)


def pair_batch(scenes: list[DepthScene], pairs: np.ndarray, stride: int, occlusion_tol: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pairs (B, 3) scene, query, ref -> gray_q, gray_r (B, 1, H, W) in [0, 1], gt (B, Nq) int64."""
    gq, gr, gts = [], [], []
    for s, q, r in pairs:
        sc = scenes[int(s)]
        T_ref_from_query = relative_pose(sc.poses[q], sc.poses[r])   # X_ref = T X_query
        gts.append(gt_coarse_matches(sc.depth[q], sc.depth[r], sc.K, sc.K, T_ref_from_query, stride, occlusion_tol))
        gq.append(sc.gray[q])
        gr.append(sc.gray[r])
    to_t = lambda a: torch.from_numpy(np.stack(a)).float().div_(255.0)[:, None]  # noqa: E731
    return to_t(gq), to_t(gr), torch.from_numpy(np.stack(gts))


# ----------------------------------------------------------------------------- training loop


def _evaluate(loftr, scenes, pairs, stride, tol, batch_size, temperature) -> dict[str, float]:
    """Mean loss, hard-match accuracy (within one cell) and the identity-match accuracy on ``pairs``."""
    was = loftr.training
    loftr.eval()
    hits = valid = id_hits = 0
    losses = []
    with torch.no_grad():
        for k in range(0, len(pairs), batch_size):
            gq, gr, gt = pair_batch(scenes, pairs[k:k + batch_size], stride, tol)
            fq, fr = loftr.extract(gq), loftr.extract(gr)
            tq, tr = loftr.attend(fq, fr)
            losses.append(float(dual_softmax_nll(tq, tr, gt, temperature)))
            h, n = match_accuracy(tq, tr, gt, fr.shape[3])
            ih, _ = identity_accuracy(gt, tuple(fq.shape[2:]), tuple(fr.shape[2:]))
            hits, valid, id_hits = hits + h, valid + n, id_hits + ih
    loftr.train(was)
    return {'loss': float(np.mean(losses)), 'accuracy': hits / max(valid, 1),
            'identity_accuracy': id_hits / max(valid, 1), 'valid_cells_per_pair': valid / max(len(pairs), 1)}


def _load_scenes(sources, size, sequences) -> list[DepthScene]:
    from .data import open_source

    return [load_depth_scene(sequences.get(src['dataset']) or open_source(src['dataset'], use_depth=True),
                             src.get('frames'), size) for src in sources]


def _all_pairs(scenes: list[DepthScene], gap: tuple[int, int]) -> np.ndarray:
    """(P, 3) scene, query, reference over all scenes."""
    return np.concatenate([np.column_stack([np.full(len(c), s), c])
                           for s, c in ((s, scene_pairs(sc, *gap)) for s, sc in enumerate(scenes))])


def _train_steps(loftr, p: Mapping[str, Any], size, steps: int, cfg: Mapping[str, Any], sequences,
                 rng: np.random.Generator, history: list[dict], stage: str, max_s: float) -> int:
    """``steps`` Adam steps of the coarse loss on training pairs at ``size`` (one-cycle or constant lr)."""
    from .module import photometric_augmentation

    t0 = time.perf_counter()
    gap = (int(p['min_gap']), int(p['max_gap']))
    train = _load_scenes(cfg['data']['train'], size, sequences)
    val = _load_scenes(cfg['data']['val'], size, sequences) if cfg['data']['val'] else []
    train_pairs = _all_pairs(train, gap)
    eval_scenes, eval_set = (val, 'val') if val else (train, 'train')
    eval_all = _all_pairs(eval_scenes, gap)
    eval_pairs = eval_all[np.sort(np.random.default_rng(int(cfg['seed'])).choice(
        len(eval_all), min(int(p['eval_pairs']), len(eval_all)), replace=False))]
    stride, tol, temp, bs = loftr.stride, float(p['occlusion_tol']), float(p['temperature']), int(p['batch_size'])
    log.info('matching pre-training (%s, %s): %d training pairs, %d %s pairs for accuracy (data %.1f s)', stage,
             list(size), len(train_pairs), len(eval_pairs), eval_set, time.perf_counter() - t0)
    evaluate = lambda: _evaluate(loftr, eval_scenes, eval_pairs, stride, tol, bs, temp)  # noqa: E731
    tag = {'stage': stage, 'image_size': list(size), 'eval_set': eval_set}
    history.append({'step': 0, **tag, **evaluate()})
    log.info('matching before: %s', json.dumps(history[-1]))
    augment = photometric_augmentation() if p['augment'] else None
    opt = torch.optim.Adam(loftr.parameters(), lr=float(p['lr']))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(p['lr']), total_steps=max(steps, 1),
                                                pct_start=0.05) if p['schedule'] == 'onecycle' else None
    loftr.train()
    t_train, step, running = time.perf_counter(), 0, []
    while step < steps and time.perf_counter() - t_train < max_s:
        batch = train_pairs[rng.choice(len(train_pairs), bs)]
        gq, gr, gt = pair_batch(train, batch, stride, tol)
        if augment is not None:
            gq, gr = augment(gq).clamp(0, 1), augment(gr).clamp(0, 1)
        fq, fr = loftr.extract(torch.cat([gq, gr])).chunk(2)      # (B, 256, h, w) each
        tq, tr = loftr.attend(fq, fr)                              # (B, h*w, 256) each
        loss = dual_softmax_nll(tq, tr, gt, temp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(loftr.parameters(), 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        step += 1
        running.append(float(loss.detach()))
        if step % int(p['eval_every']) == 0 or step == steps:
            history.append({'step': step, **tag, 'train_loss': float(np.mean(running)), **evaluate(),
                            'seconds': time.perf_counter() - t_train})
            running.clear()
            log.info('matching: %s', json.dumps(history[-1]))
    if history[-1]['step'] != step:
        history.append({'step': step, **tag, **evaluate(), 'seconds': time.perf_counter() - t_train})
    loftr.eval()
    return step


def pretrain_matching(cfg: Mapping[str, Any], sequences: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train the LoFTR coarse stage on GT coarse matches of ``cfg['data']['train']`` (needs depth and poses).

    Optional warm-up: ``warmup_steps`` at the smaller ``warmup_size`` (4x cheaper at half the size), then
    ``steps`` at ``model.image_size``. Writes ``{'state_dict': coarse-stage weights}`` (kornia LoFTR keys) to
    ``pretrain_matching.out`` (default OUT/loftr_matching.pth) and returns a summary (hard-match accuracy before
    and after, on the validation frames when there are any, steps, seconds); OUT/matching_history.jsonl has
    every evaluation.
    """
    from ..models.regression.loftr import LoFTRCoarse

    p = cfg['pretrain_matching']
    sequences = dict(sequences or {})
    out_dir = Path(cfg['out_dir'])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(p['out']) if p['out'] else out_dir / 'loftr_matching.pth'
    size = cfg['model']['image_size']
    rng = np.random.default_rng(int(cfg['seed']))
    torch.manual_seed(int(cfg['seed']))
    t0 = time.perf_counter()
    max_s = float(p['max_time_s']) if p['max_time_s'] else float('inf')
    loftr = LoFTRCoarse(cfg['model']['loftr_weights'], seed=int(cfg['model']['loftr_seed']))
    history: list[dict] = []
    steps = {}
    if int(p['warmup_steps']) > 0:
        steps['warmup'] = _train_steps(loftr, p, p['warmup_size'], int(p['warmup_steps']), cfg, sequences, rng,
                                       history, 'warmup', max_s)
    start = len(history)
    steps['main'] = _train_steps(loftr, p, size, int(p['steps']), cfg, sequences, rng, history, 'main',
                                 max_s - (time.perf_counter() - t0))
    torch.save({'state_dict': loftr.state_dict(), 'pretrain_matching': dict(p),
                'image_size': list(size) if size is not None else None}, path)
    summary = {'weights': str(path), 'steps': steps, 'seconds': time.perf_counter() - t0,
               'before': history[start], 'after': history[-1]}
    if start:
        summary['warmup_before'], summary['warmup_after'] = history[0], history[start - 1]
    with open(out_dir / 'matching_history.jsonl', 'w') as fh:
        for row in history:
            fh.write(json.dumps(row) + '\n')
    (out_dir / 'matching_summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    log.info('matching pre-training done: %s', json.dumps(summary))
    return summary


def check_config(p: Mapping[str, Any]) -> None:
    """Validate the ``pretrain_matching`` section."""
    if int(p['steps']) < 0 or int(p['batch_size']) < 1 or int(p['min_gap']) < 1 or int(p['max_gap']) < int(p['min_gap']):
        raise ConfigError(f'pretrain_matching: need steps >= 0, batch_size >= 1, 1 <= min_gap <= max_gap, got {dict(p)}')
    if p['schedule'] not in ('constant', 'onecycle'):
        raise ConfigError(f"pretrain_matching.schedule must be constant or onecycle, got {p['schedule']!r}")
    if int(p['warmup_steps']) < 0 or (int(p['warmup_steps']) > 0 and len(p['warmup_size'] or []) != 2):
        raise ConfigError(f"pretrain_matching.warmup_steps needs warmup_size [H, W], got {p['warmup_size']!r}")
