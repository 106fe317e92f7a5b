"""``relpose bench mickey``: per live frame with a cached reference vs a full pair forward, peak memory.

Both numbers come from the same backend code: *live* = ``estimate(reference, query)`` (query extraction, matching,
sampling, solver), *pair* = ``estimate_pair(reference_frame, query)`` (both extractions and the rest), so the ratio
shows what caching the reference saves (target <= 0.55). Weights: ``--weights-dir`` with ``heads.pt`` /
``dinov2.pt`` (e.g. the golden kit's synthetic weights), or ``--checkpoint`` / ``--dinov2``; without them the model
is randomly initialised (times do not depend on the weight values). On CUDA the backbone runs in float16 autocast
(heads float32) and an extra row measures 480x640.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CUDA_SIZE = (480, 640)


def parse_size(text: str) -> tuple[int, int]:
    """'HEIGHTxWIDTH' -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH (e.g. 230x300), got '{text}'") from exc
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--weights-dir', type=Path, default=None, help='folder with heads.pt and dinov2.pt')
    p.add_argument('--checkpoint', type=Path, default=None, help='MicKey checkpoint (overrides --weights-dir)')
    p.add_argument('--dinov2', type=Path, default=None, help='DINOv2 weights (overrides --weights-dir)')
    p.add_argument('--backbone', default='vitl14', choices=['vitl14', 'vits14'])
    p.add_argument('--sizes', nargs='+', type=parse_size, default=[(230, 300), (360, 480)],
                   help='image sizes HEIGHTxWIDTH (processed at native size)')
    p.add_argument('--repeats', type=int, default=3, help='timed runs per measurement (median reported)')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--no-fp16', action='store_true', help='CUDA: keep the backbone in float32')


def pattern_image(H: int, W: int, dx: int = 0, dy: int = 0) -> np.ndarray:
    """A textured integer pattern (the golden kit's formula), HxWx3 uint8."""
    y, x, c = np.meshgrid(np.arange(H) + dy, np.arange(W) + dx, np.arange(3), indexing='ij')
    a = ((x // 18 + y // 15 + c) % 3) * 60
    b = (3 * x + 5 * y + 40 * c) % 97
    n = (((1103 * x + 2029 * y + 3203 * c + (x * y) % 251) * 2654435761) >> 16) % 38
    return (a + b + n).astype(np.uint8)


def _model(args):
    from ..models.mickey import MickeyConfig, MickeyModel, load_mickey

    ckpt, dino = args.checkpoint, args.dinov2
    if args.weights_dir is not None:
        ckpt = ckpt or args.weights_dir / 'heads.pt'
        dino = dino or args.weights_dir / 'dinov2.pt'
    if ckpt is None:
        torch.manual_seed(0)
        return MickeyModel(MickeyConfig(args.backbone)).eval(), 'random initialisation'
    return load_mickey(ckpt, dino, MickeyConfig(args.backbone)), f'{ckpt} + {dino}'


def _interleaved(fns: dict[str, Any], repeats: int, sync) -> dict[str, tuple[float, float, Any]]:
    """Median and minimum seconds (and last output) of each function, runs interleaved so that load changes
    hit all alike (on a shared machine the minimum is the least disturbed run)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            outs[k] = fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v), outs[k]) for k, v in times.items()}


def _measure(est, H: int, W: int, repeats: int) -> dict[str, Any]:
    from ..types import Frame

    K = np.array([[0.8 * W, 0, W / 2], [0, 0.8 * W, H / 2], [0, 0, 1]])
    ref_frame, query = Frame(pattern_image(H, W), K), Frame(pattern_image(H, W, dx=21, dy=7), K)
    cuda = est.device.type == 'cuda'
    sync = (lambda: torch.cuda.synchronize(est.device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(est.device)
    ref = est.prepare_reference(ref_frame)
    est.estimate(ref, query)                                        # warm-up (kernels, page-in)
    timed = _interleaved({'live': lambda: est.estimate(ref, query),
                          'pair': lambda: est.estimate_pair(ref_frame, query)}, repeats, sync)
    (live_s, live_min, live), (pair_s, pair_min, _) = timed['live'], timed['pair']
    row = {'size': f'{H}x{W}', 'grid': list(ref.features['kp'].grid), 'live_ms': 1e3 * live_s,
           'pair_ms': 1e3 * pair_s, 'ratio': live_s / pair_s, 'live_min_ms': 1e3 * live_min,
           'pair_min_ms': 1e3 * pair_min, 'ratio_min': live_min / pair_min,
           'stages_ms': {k: 1e3 * v for k, v in live.timings.items()}, 'ok': live.ok, 'reason': live.reason,
           'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if cuda:
        row['peak_cuda_mb'] = torch.cuda.max_memory_allocated(est.device) / 2 ** 20
    return row


def run(args) -> dict[str, Any]:
    from ..backends.mickey import MickeyEstimator
    from ..device import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model, source = _model(args)
    build_s = time.perf_counter() - t0
    est = MickeyEstimator({'image_size': [], 'backbone': args.backbone,
                           'backbone_fp16': False if args.no_fp16 else 'auto'}, device=str(device), model=model)
    rows = [_measure(est, H, W, args.repeats) for H, W in args.sizes]
    if device.type == 'cuda' and tuple(CUDA_SIZE) not in [tuple(s) for s in args.sizes]:
        rows.append(_measure(est, *CUDA_SIZE, args.repeats))
    result = {'backbone': args.backbone, 'weights': source, 'device': str(device),
              'backbone_fp16': est.model.extractor.backbone_fp16, 'threads': args.threads,
              'repeats': args.repeats, 'build_s': build_s, 'rows': rows}
    print(f'MicKey bench: backbone {args.backbone}, weights: {source}, device {device}'
          f'{" (backbone fp16)" if result["backbone_fp16"] else ""}, {args.threads} CPU threads, '
          f'median of {args.repeats}; model ready in {build_s:.1f} s')
    print(f'{"size HxW":>10} {"grid":>7} {"live ms":>9} {"pair ms":>9} {"ratio":>6} {"(min)":>6} {"extract":>8} '
          f'{"match":>6} {"sample":>7} {"solve":>6} {"peak RSS MB":>11}  ok')
    for r in rows:
        s = r['stages_ms']
        print(f'{r["size"]:>10} {"x".join(map(str, r["grid"])):>7} {r["live_ms"]:9.1f} {r["pair_ms"]:9.1f} '
              f'{r["ratio"]:6.3f} {r["ratio_min"]:6.3f} {s.get("extract", 0):8.1f} {s.get("match", 0):6.1f} '
              f'{s.get("sample", 0):7.1f} {s.get("solve", 0):6.1f} {r["peak_rss_mb"]:11.0f}  {r["ok"]}'
              + (f' (peak CUDA {r["peak_cuda_mb"]:.0f} MB)' if 'peak_cuda_mb' in r else ''))
    return result
