"""``relpose bench regression``: per-live-frame time of the regression backend (cached vs uncached reference)
and per-training-step time (frozen LoFTR, and with the coarse transformer unfrozen).

Without ``--checkpoint`` a randomly initialised model of the default architecture is timed (speed does not
depend on the weight values). Frames: 7-Scenes when ``--data`` exists, else synthetic renders.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / '7scenes-1000'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--checkpoint', default=None, help='regression checkpoint (default: random weights)')
    p.add_argument('--size', type=int, nargs=2, default=[256, 336], metavar=('H', 'W'), help='network input size')
    p.add_argument('--frames', type=int, default=8, help='live frames to time')
    p.add_argument('--batch', type=int, default=4, help='pairs per training step')
    p.add_argument('--steps', type=int, default=3, help='training steps to time')
    p.add_argument('--two-way', default='', choices=['', 'none', 'eval', 'always'],
                   help="regression.two_way for the live frames ('' = as the checkpoint was trained)")
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help='7-Scenes folder (else synthetic frames)')


def _frames(data: Path, n: int):
    if (data / 'camera-intrinsics.txt').is_file():
        from ..data.seven_scenes import SevenScenesSequence
        seq = SevenScenesSequence(data, use_depth=False)
        return [seq[i * 10].frame for i in range(n + 1)], '7scenes'
    from ..data.synthetic import SyntheticSequence
    seq = SyntheticSequence(num_frames=n + 1, width=640, height=480, use_depth=False)
    return [seq[i].frame for i in range(n + 1)], 'synthetic'


def _ms(values) -> dict[str, float]:
    return {'median_ms': 1e3 * statistics.median(values), 'mean_ms': 1e3 * statistics.fmean(values)}


def _train_step_time(size, batch: int, steps: int, unfreeze: str, device) -> dict[str, float]:
    import torch

    from ..models.regression import RegressionModel, pose_loss
    model = RegressionModel({'image_size': list(size), 'unfreeze_loftr': unfreeze}).to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gq, gr = (torch.rand(batch, 1, *size, device=device) for _ in range(2))
    q_gt = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device).expand(batch, 4)
    t_gt = torch.full((batch, 3), 0.1, device=device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(gq, gr)
        loss = pose_loss(out['quat'], out['dir'], out['scale_raw'], q_gt, t_gt)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if i:  # first step is warm-up
            times.append(time.perf_counter() - t0)
    r = _ms(times)
    r['per_pair_ms'] = r['median_ms'] / batch
    return r


def run(args) -> dict:
    import torch

    from ..backends import create
    from ..device import resolve_device
    from ..models.regression import RegressionModel
    from ..models.regression.checkpoint import save_model_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or str(save_model_checkpoint(RegressionModel({'image_size': list(args.size)}),
                                                        Path(tmp.name) / 'random.ckpt'))
    est = create('regression', {'checkpoint': ckpt, 'image_size': list(args.size), 'two_way': args.two_way},
                 device=str(device))
    frames, source = _frames(args.data, args.frames)
    ref_frame, live = frames[0], frames[1:]
    est.estimate(est.prepare_reference(ref_frame), live[0])        # warm-up
    t0 = time.perf_counter()
    ref = est.prepare_reference(ref_frame)
    prepare_s = time.perf_counter() - t0
    cached, uncached, stages = [], [], {}
    for f in live:
        t0 = time.perf_counter()
        r = est.estimate(ref, f)
        cached.append(time.perf_counter() - t0)
        for k, v in r.timings.items():
            stages.setdefault(k, []).append(v)
        t0 = time.perf_counter()
        est.estimate_pair(ref_frame, f)
        uncached.append(time.perf_counter() - t0)
    result = {
        'device': str(device), 'threads': torch.get_num_threads(), 'size': list(args.size), 'frames': len(live),
        'source': source, 'checkpoint': args.checkpoint or 'random weights', 'two_way': est.model.config['two_way'],
        'derotate': bool(est.model.config['derotate']),
        'prepare_reference_ms': 1e3 * prepare_s,
        'live_cached': _ms(cached), 'live_uncached': _ms(uncached),
        'stages_ms': {k: 1e3 * statistics.median(v) for k, v in stages.items()},
    }
    result['cache_saving'] = 1.0 - result['live_cached']['median_ms'] / result['live_uncached']['median_ms']
    result['train_step_frozen'] = _train_step_time(args.size, args.batch, args.steps, 'none', device)
    result['train_step_transformer'] = _train_step_time(args.size, args.batch, args.steps, 'transformer', device)
    tmp.cleanup()
    print(f"regression backend, {result['device']} ({result['threads']} threads), input {args.size[0]}x{args.size[1]},"
          f" {len(live)} {source} frames, two_way {result['two_way']}, derotate {result['derotate']}")
    print(f"  prepare_reference            {result['prepare_reference_ms']:8.1f} ms")
    print(f"  live frame, cached reference {result['live_cached']['median_ms']:8.1f} ms (median)")
    print(f"  live frame, uncached         {result['live_uncached']['median_ms']:8.1f} ms (median)  "
          f"cache saves {100 * result['cache_saving']:.0f} %")
    print('  stages (cached): ' + ', '.join(f'{k} {v:.1f} ms' for k, v in result['stages_ms'].items()))
    for key, label in (('train_step_frozen', 'frozen LoFTR'), ('train_step_transformer', 'transformer unfrozen')):
        r = result[key]
        print(f"  training step, batch {args.batch}, {label:20s} {r['median_ms']:8.1f} ms "
              f"({r['per_pair_ms']:.1f} ms per pair)")
    return result
