"""``relpose bench mickey``: per live frame with a cached reference vs a full pair forward, peak memory.

Both numbers come from the same backend code: *live* = ``estimate(reference, query)`` (query extraction, matching,
sampling, solver), *pair* = ``estimate_pair(reference_frame, query)`` (both extractions and the rest), so the ratio
shows what caching the reference saves (target <= 0.55). Weights: ``--weights-dir`` with ``heads.pt`` /
``dinov2.pt`` (e.g. the golden kit's synthetic weights), or ``--checkpoint`` / ``--dinov2``; without them the model
is randomly initialised (times do not depend on the weight values). On CUDA the backbone runs in float16 autocast
(heads float32) and an extra row measures 480x640.

Memory, per size and mode: after the timed runs, one more live and one more pair call, each after handing the
memory freed so far back to the system (``gc`` + glibc ``malloc_trim``) and resetting the peak (:class:`RssProbe`):
``*_peak_rss_mb`` = peak resident memory during that call, ``*_extra_rss_mb`` = that peak minus the resident memory
just before it (the call's working memory on top of the model and the cached reference). ``peak_rss_mb`` is kept for
compatibility: the process-lifetime peak so far (as before; it mostly reflects the largest size run yet).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import resource
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


MB = 2 ** 20


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None where there is no such file."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


class RssProbe:
    """Peak resident memory (RSS, MB) of a block of code, reset for every measurement.

    ``method``: ``'vmhwm'`` - the kernel's high-water mark ``VmHWM``, reset to the current RSS before the block
    (``/proc/self/clear_refs``), exact; ``'sampled'`` - a background thread reads ``VmRSS`` every ``interval``
    seconds during the block (for kernels that refuse the reset; misses peaks shorter than the interval);
    ``'auto'`` picks the first that works; None where ``/proc`` is missing (values are then None).
    """

    def __init__(self, method: str | None = 'auto', interval: float = 0.002) -> None:
        self._lifetime_mb = 0.0
        self._lifetime_mb = self.lifetime_peak_mb()   # before the trial reset below
        if method == 'auto':
            if _status_kb('VmHWM') is not None and _reset_hwm():
                method = 'vmhwm'
            else:
                method = 'sampled' if _status_kb('VmRSS') is not None else None
        if method not in ('vmhwm', 'sampled', None):
            raise ValueError(f"RssProbe method must be 'auto', 'vmhwm', 'sampled' or None, got {method!r}")
        self.method, self.interval = method, interval

    @staticmethod
    def current_mb() -> float | None:
        kb = _status_kb('VmRSS')
        return None if kb is None else kb / 1024.0

    def lifetime_peak_mb(self) -> float:
        """The process's peak RSS so far. Resetting VmHWM also resets ``ru_maxrss``, so the probe keeps the maximum
        it saw before each reset."""
        return max(self._lifetime_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)

    @contextmanager
    def measure(self) -> Iterator[dict[str, float | None]]:
        """Yields a dict filled on exit: ``before_mb`` (RSS at the start), ``peak_mb``, ``extra_mb`` = peak - before."""
        out: dict[str, float | None] = {'before_mb': None, 'peak_mb': None, 'extra_mb': None}
        if self.method is None:
            yield out
            return
        stop, peak = threading.Event(), [0.0]
        sampler = None
        if self.method == 'vmhwm':
            self._lifetime_mb = self.lifetime_peak_mb()
            _reset_hwm()
        else:
            def sample() -> None:
                while not stop.wait(self.interval):
                    peak[0] = max(peak[0], self.current_mb() or 0.0)

            sampler = threading.Thread(target=sample, name='rss-probe', daemon=True)
        before = self.current_mb() or 0.0
        peak[0] = before
        if sampler is not None:
            sampler.start()
        try:
            yield out
        finally:
            if sampler is not None:
                stop.set()
                sampler.join()
                peak[0] = max(peak[0], self.current_mb() or 0.0)
            else:
                peak[0] = max(before, (_status_kb('VmHWM') or 0) / 1024.0)
            out.update(before_mb=before, peak_mb=peak[0], extra_mb=peak[0] - before)


_LIBC = None


def release_memory() -> None:
    """Hand freed memory back to the system (``gc`` and glibc ``malloc_trim``), so that a following measurement
    starts from what is really in use, not from what earlier calls left in the allocator."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, 'malloc_trim'):
        _LIBC.malloc_trim(0)


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


def _measure(est, H: int, W: int, repeats: int, probe: RssProbe | None = None) -> dict[str, Any]:
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
           'stages_ms': {k: 1e3 * v for k, v in live.timings.items()}, 'ok': live.ok, 'reason': live.reason}
    if cuda:
        row['peak_cuda_mb'] = torch.cuda.max_memory_allocated(est.device) / MB
    probe = probe or RssProbe()
    row.update(_memory(est, ref, ref_frame, query, probe, sync))
    row['peak_rss_mb'] = probe.lifetime_peak_mb()      # kept for compatibility: process peak so far, all sizes
    return row


def _memory(est, ref, ref_frame, query, probe: RssProbe, sync) -> dict[str, Any]:
    """Peak memory of one more live and one more pair call (untimed), each measured from a reset."""
    out: dict[str, Any] = {}
    cuda = est.device.type == 'cuda'
    for mode, fn in (('live', lambda: est.estimate(ref, query)), ('pair', lambda: est.estimate_pair(ref_frame, query))):
        sync()
        release_memory()
        if cuda:
            torch.cuda.reset_peak_memory_stats(est.device)
            cuda_before = torch.cuda.memory_allocated(est.device)
        with probe.measure() as m:
            fn()
            sync()
        if mode == 'live':
            out['rss_before_mb'] = m['before_mb']
        out[f'{mode}_peak_rss_mb'], out[f'{mode}_extra_rss_mb'] = m['peak_mb'], m['extra_mb']
        if cuda:
            out[f'{mode}_extra_cuda_mb'] = (torch.cuda.max_memory_allocated(est.device) - cuda_before) / MB
    return out


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
    release_memory()
    probe = RssProbe()
    load_rss_mb = probe.current_mb()
    rows = [_measure(est, H, W, args.repeats, probe) for H, W in args.sizes]
    if device.type == 'cuda' and tuple(CUDA_SIZE) not in [tuple(s) for s in args.sizes]:
        rows.append(_measure(est, *CUDA_SIZE, args.repeats, probe))
    result = {'backbone': args.backbone, 'weights': source, 'device': str(device),
              'backbone_fp16': est.model.extractor.backbone_fp16, 'threads': args.threads,
              'repeats': args.repeats, 'build_s': build_s, 'load_rss_mb': load_rss_mb, 'rss_method': probe.method,
              'rows': rows}
    print(f'MicKey bench: backbone {args.backbone}, weights: {source}, device {device}'
          f'{" (backbone fp16)" if result["backbone_fp16"] else ""}, {args.threads} CPU threads, '
          f'median of {args.repeats}; model ready in {build_s:.1f} s, RSS after loading {_mb(load_rss_mb)} MB')
    print(f'{"size HxW":>10} {"grid":>7} {"live ms":>9} {"pair ms":>9} {"ratio":>6} {"(min)":>6} {"extract":>8} '
          f'{"match":>6} {"sample":>7} {"solve":>6} {"RSS MB":>7} {"+live":>6} {"+pair":>6}  ok')
    for r in rows:
        s = r['stages_ms']
        peaks = [v for v in (r['live_peak_rss_mb'], r['pair_peak_rss_mb']) if v is not None]
        print(f'{r["size"]:>10} {"x".join(map(str, r["grid"])):>7} {r["live_ms"]:9.1f} {r["pair_ms"]:9.1f} '
              f'{r["ratio"]:6.3f} {r["ratio_min"]:6.3f} {s.get("extract", 0):8.1f} {s.get("match", 0):6.1f} '
              f'{s.get("sample", 0):7.1f} {s.get("solve", 0):6.1f} {_mb(max(peaks) if peaks else None):>7} '
              f'{_mb(r["live_extra_rss_mb"]):>6} {_mb(r["pair_extra_rss_mb"]):>6}  {r["ok"]}'
              + (f' (CUDA peak {r["peak_cuda_mb"]:.0f} MB, +live {r["live_extra_cuda_mb"]:.0f}, '
                 f'+pair {r["pair_extra_cuda_mb"]:.0f})' if 'peak_cuda_mb' in r else ''))
    print(f'RSS MB: peak resident memory during one live / pair call of that size; +live / +pair: above the resident '
          f'memory just before the call (model, cached reference), measured from a reset ({probe.method or "n/a"})')
    return result


def _mb(v: float | None) -> str:
    return '-' if v is None else f'{v:.0f}'
