"""``relpose demo``: the whole product on a synthetic scene, end to end, with no dataset and no weights.

1. render a posed RGB-D sequence of a textured room (:mod:`relpose_ros.data.synthetic`);
2. write it as a ROS 2 bag (MCAP: image, camera_info, depth, ground-truth pose and /tf);
3. start the real ``relocalize_node`` (rgbd backend) as a subprocess and replay the bag into it over DDS at
   camera rate, the first frame being the reference keyframe (:mod:`relpose_ros.ros.replay`);
4. score what the node published on ``relpose`` against the ground truth (:mod:`relpose_ros.eval.metrics`),
   print a per-frame table and a summary, write ``report.md``, ``summary.json``, ``metrics.json`` and the PNG
   plots (:mod:`relpose_ros.eval.plots`) into the output folder.

DDS: unless the user set them, discovery is limited to this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``)
and a random ``ROS_DOMAIN_ID`` in 101..200 is used, so the demo never talks to a robot on the network.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RelposeError

BAG_NAME = 'synthetic_bag'


@dataclass
class DemoConfig:
    """Everything the demo can vary (the CLI exposes each field)."""

    out: Path = Path('demo_output')
    frames: int = 240                 # 8 s at 30 Hz: one loop of the default camera path
    width: int = 640
    height: int = 480
    fps: float = 30.0                 # camera rate = replay rate
    seed: int = 0
    backend: str = 'rgbd'
    device: str = 'auto'
    reference_index: int = 0
    node_params: dict[str, Any] = field(default_factory=dict)
    plots: bool = True
    exact: bool = False               # True: exact images and depth; False: the Kinect-like sensor model below
    depth_noise: float = 1.0          # see SyntheticSequence
    rgb_noise: float = 2.0
    max_depth: float = 5.0


@dataclass
class DemoResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out: Path
    files: dict[str, str]


class DemoError(RelposeError):
    """The demo ran but the node produced nothing usable."""


def isolate_dds(env: dict[str, str] | None = None) -> dict[str, str]:
    """Localhost-only discovery and a random domain unless the user chose them; returns what was set."""
    env = os.environ if env is None else env
    chosen = {}
    if 'ROS_AUTOMATIC_DISCOVERY_RANGE' not in env and 'ROS_LOCALHOST_ONLY' not in env:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = chosen['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if 'ROS_DOMAIN_ID' not in env:
        env['ROS_DOMAIN_ID'] = chosen['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(101, 200))
    return chosen


# ----------------------------------------------------------------------------- scoring


def score_replay(result, K: np.ndarray, width: int, height: int):
    """Per-frame rows and :class:`~relpose_ros.eval.metrics.PairResult` list (estimated frames only) of a replay."""
    from .eval.metrics import POSE_ROT_THRESHOLD_DEG, POSE_TRANS_THRESHOLD_M, score_pair
    from .geometry import rotation_error_deg

    rows, pairs = [], []
    for f in result.frames:
        gt = result.gt_T_query_from_ref(f)
        row = {'frame': f.index, 't_s': f.sent_s, 'status': f.status, 'confidence': f.confidence,
               'rot_err_deg': None, 'centre_err_m': None,
               'latency_ms': None if f.latency_s is None else f.latency_s * 1e3,
               'gt_distance_m': None if gt is None else float(np.linalg.norm(np.linalg.inv(gt)[:3, 3])),
               'gt_angle_deg': None if gt is None else rotation_error_deg(gt[:3, :3], np.eye(3)), 'accepted': None}
        if f.status != 'dropped':
            T = f.T_query_from_ref if f.published else np.eye(4)
            pair = score_pair(result.reference_index, f.index, T[:3, :3], T[:3, 3], f.confidence or 0.0, f.published,
                              gt, K, width, height, latency_ms=row['latency_ms'],
                              reason='' if f.published else 'estimate failed or below min_confidence')
            pairs.append(pair)
            if pair.has_gt and not pair.failed:
                row['rot_err_deg'], row['centre_err_m'] = pair.rot_err_deg, pair.trans_err_m
                row['accepted'] = bool(pair.rot_err_deg < POSE_ROT_THRESHOLD_DEG
                                       and pair.trans_err_m < POSE_TRANS_THRESHOLD_M)
            elif pair.has_gt:
                row['accepted'] = False
        rows.append(row)
    return rows, pairs


def summarize_demo(result, rows: list[dict], timings: dict[str, float]) -> dict[str, Any]:
    """Headline numbers: accuracy over the estimated frames, latency, dropped frames, wall times."""
    from .eval.metrics import latency_percentiles

    estimated = [r for r in rows if r['status'] != 'dropped']
    scored = [r for r in estimated if r['accepted'] is not None]
    good = [r for r in scored if r['rot_err_deg'] is not None]
    lat = latency_percentiles(r['latency_ms'] for r in rows)

    def med(key):
        v = [r[key] for r in good]
        return float(np.median(v)) if v else float('nan')

    return {
        'frames_sent': len(rows), 'estimated': len(estimated), 'published': result.published,
        'not_published': sum(r['status'] == 'not published' for r in rows), 'dropped': result.dropped_frames,
        'node_dropped_frames': _as_int(result.diagnostics.get('dropped_frames')),
        'median_rot_err_deg': med('rot_err_deg'), 'median_centre_err_m': med('centre_err_m'),
        'max_centre_err_m': max((r['centre_err_m'] for r in good), default=float('nan')),
        'within_25cm_5deg': (sum(bool(r['accepted']) for r in scored) / len(scored)) if scored else float('nan'),
        'latency_ms_p50': lat['p50'], 'latency_ms_p90': lat['p90'], 'latency_ms_p95': lat['p95'],
        'latency_ms_max': lat['max'], 'rate_hz': result.rate_hz, 'node_startup_s': result.startup_s,
        **{f'{k}_s': v for k, v in timings.items()},
    }


# ----------------------------------------------------------------------------- text output


def _f(v, fmt: str) -> str:
    return '-' if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


TABLE_HEADER = ('frame', 't (s)', 'status', 'conf', 'rot err (deg)', 'centre err (cm)', 'latency (ms)',
                'GT motion (m / deg)')


def table_row(r: dict) -> tuple[str, ...]:
    return (str(r['frame']), _f(r['t_s'], '.2f'), r['status'], _f(r['confidence'], '.3f'), _f(r['rot_err_deg'], '.3f'),
            _f(None if r['centre_err_m'] is None else r['centre_err_m'] * 100, '.2f'), _f(r['latency_ms'], '.0f'),
            f"{_f(r['gt_distance_m'], '.2f')} / {_f(r['gt_angle_deg'], '.1f')}")


def format_table(rows: list[dict]) -> str:
    cells = [TABLE_HEADER] + [table_row(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_HEADER))]
    return '\n'.join('  '.join(c[i].rjust(widths[i]) for i in range(len(c))) for c in cells)


def markdown_rows(rows: list[dict]) -> str:
    lines = ['| ' + ' | '.join(TABLE_HEADER) + ' |', '|' + '---|' * len(TABLE_HEADER)]
    lines += ['| ' + ' | '.join(table_row(r)) + ' |' for r in rows]
    return '\n'.join(lines)


def format_summary(s: dict) -> str:
    pct = _f(None if not np.isfinite(s['within_25cm_5deg']) else 100 * s['within_25cm_5deg'], '.1f')
    return '\n'.join([
        f"frames sent {s['frames_sent']} at {s['rate_hz']:.1f} Hz: estimated {s['estimated']} "
        f"(published {s['published']}, not published {s['not_published']}), dropped {s['dropped']} "
        f"(latest-only; the node counted {s['node_dropped_frames']})",
        f"median rotation error {_f(s['median_rot_err_deg'], '.3f')} deg, median camera-centre error "
        f"{_f(s['median_centre_err_m'] * 100 if np.isfinite(s['median_centre_err_m']) else None, '.2f')} cm, "
        f"within 25 cm / 5 deg: {pct} % of the estimated frames",
        f"latency (frame sent -> pose received): p50 {_f(s['latency_ms_p50'], '.0f')} ms, "
        f"p90 {_f(s['latency_ms_p90'], '.0f')} ms, p95 {_f(s['latency_ms_p95'], '.0f')} ms, "
        f"max {_f(s['latency_ms_max'], '.0f')} ms",
        f"wall time: render + bag {s['render_and_bag_s']:.1f} s (rendering {_f(s['render_fps'], '.1f')} frames/s), "
        f"node start-up {s['node_startup_s']:.1f} s, "
        f"replay {s['replay_s']:.1f} s, total {s['total_s']:.1f} s",
    ])


def write_report(cfg: DemoConfig, result, rows: list[dict], summary: dict, eval_metrics: dict | None,
                 files: dict[str, str]) -> Path:
    from .eval.report import markdown_table

    lines = ['# relpose demo', '',
             f'Synthetic room (seed {cfg.seed}), {cfg.frames} frames of {cfg.width}x{cfg.height} RGB-D at '
             f'{cfg.fps:g} Hz ({_sensor_text(cfg)}) written to `{BAG_NAME}/` (MCAP), replayed over DDS into '
             f"`relocalize_node` (backend `{cfg.backend}`, reference = frame {result.reference_index}, not replayed "
             'as a live frame).', '',
             '## Summary', '', '```', format_summary(summary), '```', '']
    if eval_metrics is not None:
        table = markdown_table(eval_metrics).splitlines()
        lines += ['Map-free style metrics over the estimated frames (`relpose eval` format; metrics.json has them '
                  'per frame gap):', '', table[0], table[1], table[-1], '']
    for name in ('trajectory', 'error_per_frame', 'confidence_vs_error', 'latency_histogram'):
        if name in files:
            lines += [f'![{name}]({files[name]})', '']
    lines += ['## Per frame', '', 'Status: *published* on `relpose`; *not published*: estimated but failed or '
              'below `min_confidence` (attributed to the newest unanswered frame); *dropped*: replaced by a newer '
              'frame before the worker took it (latest-only processing).', '', markdown_rows(rows), '',
              '## Node', '', '```', ' '.join(result.node_command), '```', '']
    path = cfg.out / 'report.md'
    path.write_text('\n'.join(lines))
    return path


def _sensor_text(cfg: DemoConfig) -> str:
    if cfg.exact:
        return 'exact images and depth'
    return (f'Kinect-like depth noise x{cfg.depth_noise:g}, image noise {cfg.rgb_noise:g} grey levels, depth range '
            f'{cfg.max_depth:g} m')


# ----------------------------------------------------------------------------- the demo


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo and write its outputs into ``cfg.out``; raises :class:`DemoError` if nothing was published."""
    from .data.bag_writer import write_bag
    from .data.synthetic import SyntheticSequence
    from .ros.replay import ReplayOptions, replay_bag

    t_start = time.monotonic()
    cfg.out = Path(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    chosen = isolate_dds()
    if chosen:
        echo('DDS isolated for the demo: ' + ', '.join(f'{k}={v}' for k, v in chosen.items()))

    sensor = {} if cfg.exact else {'depth_noise': cfg.depth_noise, 'rgb_noise': cfg.rgb_noise,
                                   'max_depth': cfg.max_depth}
    seq = SyntheticSequence(num_frames=cfg.frames, width=cfg.width, height=cfg.height, fps=cfg.fps, seed=cfg.seed,
                            **sensor)
    echo(f'rendering {cfg.frames} frames of {cfg.width}x{cfg.height} RGB-D ({_sensor_text(cfg)}) and writing '
         f'{cfg.out / BAG_NAME} (MCAP) ...')
    bag = write_bag(seq, cfg.out / BAG_NAME, overwrite=True)
    t_bag = time.monotonic()
    render_fps = seq.rendered_frames / max(seq.render_seconds, 1e-9)
    echo(f'  {bag.num_frames} frames ({bag.duration_s:.1f} s of camera time) in {t_bag - t_start:.1f} s; '
         f'rendering alone ran at {render_fps:.1f} frames/s')

    echo(f"starting relocalize_node (backend {cfg.backend}) and replaying the bag at {cfg.fps:g} Hz ...")
    # the reference frame itself is not replayed as a live frame (its identity pose would flatter the summary)
    opts = ReplayOptions(backend=cfg.backend, reference_index=cfg.reference_index, restamp=True,
                         include_reference=False, node_log=cfg.out / 'node.log',
                         node_params={'device': cfg.device, **cfg.node_params})
    from tqdm import tqdm

    with tqdm(total=cfg.frames - 1, desc='replaying', unit='frame', disable=not sys.stderr.isatty(), leave=False) as bar:
        result = replay_bag(bag.path, opts, progress=lambda k, n: bar.update(k - bar.n))
    t_replay = time.monotonic()

    rows, pairs = score_replay(result, seq.K, cfg.width, cfg.height)
    timings = {'render': seq.render_seconds, 'render_and_bag': t_bag - t_start, 'replay': t_replay - t_bag}
    files: dict[str, str] = {}
    eval_metrics = None
    if pairs:
        from .eval.report import EvalResult, build_metrics
        eval_result = EvalResult(pairs=pairs, mode='replay', dropped_frames=result.dropped_frames,
                                 meta={'backend': cfg.backend, 'dataset': f'synthetic:seed={cfg.seed}',
                                       'protocol': f'fixed reference {result.reference_index}'},
                                 trajectory=_trajectory(result, pairs))
        eval_metrics = build_metrics(eval_result)
        if cfg.plots:
            from .eval import plots as P
            files = P.write_all(pairs, cfg.out, trajectory=eval_result.trajectory)
            eval_metrics['plots'] = files
        (cfg.out / 'metrics.json').write_text(json.dumps(eval_metrics, indent=1) + '\n')
    timings['total'] = time.monotonic() - t_start
    summary = summarize_demo(result, rows, timings)
    summary['render_fps'] = render_fps
    (cfg.out / 'summary.json').write_text(json.dumps(_jsonable({'config': asdict(cfg), 'summary': summary,
                                                                'frames': rows}), indent=1) + '\n')
    write_report(cfg, result, rows, summary, eval_metrics, files)

    shown = [r for r in rows if r['status'] != 'dropped']
    echo('')
    echo(format_table(shown))
    echo(f'({len(rows) - len(shown)} dropped frames not shown; every frame is in {cfg.out / "report.md"})')
    echo('')
    echo(format_summary(summary))
    echo(f'wrote {cfg.out / "report.md"}, summary.json, metrics.json, node.log'
         + (f', {", ".join(sorted(files.values()))}' if files else ''))
    if result.published == 0:
        raise DemoError(f'relocalize_node published no pose for the {len(rows)} frames sent (diagnostics: '
                        f'{result.diagnostics}); see {cfg.out / "node.log"}')
    return DemoResult(summary=summary, rows=rows, out=cfg.out, files=files)


def _trajectory(result, pairs) -> dict | None:
    """World-frame camera centres of the estimated frames and the whole true path (for the top-view plot)."""
    from .eval.offline import trajectory_from_pairs

    world = {f.index: f.T_world_from_cam for f in result.frames}
    world[result.reference_index] = result.reference_T_world_from_cam
    return trajectory_from_pairs(world, pairs)


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
