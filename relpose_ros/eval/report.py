"""Evaluation results: ``metrics.json`` (stable schema), ``report.md`` (Markdown tables) and plots.

metrics.json (keys other tools read; keep them stable)::

    summary:  n_pairs, n_failed, median_rot_err_deg, median_trans_err_m, median_vcre_px, precision_pose,
              precision_vcre, auc_pose, auc_vcre, spearman_conf_err
              (+ latency_ms_p50, latency_ms_p95, dropped_frames in replay mode)
    per_gap:  {gap: the same keys}
    pairs:    [{reference, query, gap, R, t (T_query_from_ref), confidence, ok, rot_err_deg, trans_err_m,
                vcre_px, ...}]
    partial, partial_reason, meta (backend, dataset, protocol, mode, frames_without_gt, skipped_no_depth,
    skipped_no_camera_info, ...; replay: node_dropped_frames, confidence_missing, ...), details (n_no_gt,
    failure reasons, latency percentiles, median translation-direction error), plots (file names)

NaN values are written as JSON ``null``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as M
from . import plots as P


@dataclass
class EvalResult:
    """What one evaluation run produced (offline or replay)."""

    pairs: list[M.PairResult]
    mode: str = 'offline'
    meta: dict = field(default_factory=dict)
    partial: bool = False
    partial_reason: str = ''
    dropped_frames: int = 0
    #: per_gap groups gaps into bins of this many frames (1 = every gap on its own)
    gap_bin: int = 1
    #: camera centres for the top-view plot: {'gt': (N,3), 'est': (N,3), 'ref': (M,3)} or None
    trajectory: dict | None = None

    @property
    def with_latency(self) -> bool:
        return self.mode == 'replay'


def _clean(x):
    """JSON-safe copy: NaN/Inf -> None, numpy -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def build_metrics(result: EvalResult) -> dict:
    """The metrics.json dictionary of a result."""
    return _clean({
        'summary': M.summarize(result.pairs, result.dropped_frames, with_latency=result.with_latency),
        'per_gap': M.summarize_per_gap(result.pairs, with_latency=result.with_latency, gap_bin=result.gap_bin),
        'pairs': [p.to_json() for p in result.pairs],
        'partial': bool(result.partial),
        'partial_reason': result.partial_reason,
        'meta': dict(result.meta, mode=result.mode, gap_bin=result.gap_bin),
        'details': M.details(result.pairs),
    })


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '-'
    if isinstance(v, int):
        return str(v)
    return f'{v:.{digits}f}'


def markdown_table(metrics: dict) -> str:
    """Per-gap rows plus an overall row, Map-free columns (and latency columns in replay mode)."""
    replay = 'latency_ms_p50' in metrics['summary']
    cols = ['gap', 'pairs', 'failed', 'med. rot (deg)', 'med. centre (m)', 'med. VCRE (px)',
            'prec. 25cm/5deg', 'prec. VCRE<90px', 'AUC pose', 'AUC VCRE', 'Spearman conf/err']
    if replay:
        cols += ['latency p50 (ms)', 'latency p95 (ms)', 'dropped']
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]

    def row(name, s):
        vals = [name, _fmt(s['n_pairs']), _fmt(s['n_failed']), _fmt(s['median_rot_err_deg'], 2),
                _fmt(s['median_trans_err_m']), _fmt(s['median_vcre_px'], 1), _fmt(s['precision_pose']),
                _fmt(s['precision_vcre']), _fmt(s['auc_pose']), _fmt(s['auc_vcre']), _fmt(s['spearman_conf_err'], 2)]
        if replay:
            vals += [_fmt(s.get('latency_ms_p50'), 1), _fmt(s.get('latency_ms_p95'), 1), _fmt(s.get('dropped_frames'))]
        return '| ' + ' | '.join(vals) + ' |'

    for gap, s in metrics['per_gap'].items():
        lines.append(row(gap, s))
    lines.append(row('**all**', metrics['summary']))
    return '\n'.join(lines)


def frame_counts_line(meta: dict) -> str:
    """The report's sentence on frames the readers could not pair (``meta``: frames_without_gt, skipped_no_depth,
    skipped_no_camera_info) and, in replay mode, the node's own counts; '' when there is none."""
    parts = []
    if meta.get('frames_without_gt') is not None:
        parts.append(f"{meta['frames_without_gt']} without ground truth (kept, not scored)")
    skipped = [f'{meta[k]} without {what}' for k, what in (('skipped_no_depth', 'depth'),
                                                            ('skipped_no_camera_info', 'camera_info'))
               if meta.get(k) is not None]
    if skipped:
        parts.append('skipped by the reader: ' + ', '.join(skipped))
    if meta.get('node_dropped_frames') is not None:
        parts.append(f"{meta['node_dropped_frames']} replaced in the node's latest-only queue "
                     f"(node diagnostics dropped_frames)")
    if meta.get('confidence_missing'):
        parts.append(f"{meta['confidence_missing']} poses published without a confidence (scored with confidence 0)")
    return ('Frames: ' + '; '.join(parts) + '.') if parts else ''


def markdown_report(metrics: dict) -> str:
    """The whole report.md text."""
    meta, det = metrics['meta'], metrics['details']
    out = ['# relpose eval report', '']
    if metrics['partial']:
        out += [f"**PARTIAL RESULTS**: {metrics['partial_reason']}", '']
    for k in ('backend', 'dataset', 'protocol', 'mode', 'device', 'frames', 'config'):
        if k in meta:
            out.append(f'- {k}: `{meta[k]}`')
    out += ['', markdown_table(metrics), '',
            f"Pairs without ground truth (not scored): {det['n_no_gt']}. "
            f"Median translation-direction error: {_fmt(det['median_transdir_err_deg'], 2)} deg.",
            '']
    counts = frame_counts_line(meta)
    if counts:
        out += [counts, '']
    lat = det['latency_ms']
    if lat['n']:
        what = 'end-to-end latency (stamp to arrival)' if meta.get('mode') == 'replay' else 'estimate time per query'
        out.append(f"{what}: p50 {_fmt(lat['p50'], 1)} ms, p90 {_fmt(lat['p90'], 1)} ms, "
                   f"p95 {_fmt(lat['p95'], 1)} ms, max {_fmt(lat['max'], 1)} ms over {lat['n']} frames.")
        out.append('')
    if det['failure_reasons']:
        out += ['Failures by reason:', '']
        out += [f'- {r}: {n}' for r, n in sorted(det['failure_reasons'].items(), key=lambda kv: -kv[1])]
        out.append('')
    out += ['Accepted pose: < 0.25 m and < 5 deg; accepted VCRE: < 90 px. Precision and AUC count failures '
            '(no estimate, not ok, non-finite) in the denominator; medians are over successful pairs.', '']
    for name, fname in metrics.get('plots', {}).items():
        out += [f'![{name}]({fname})', '']
    return '\n'.join(out)


def write_report(result: EvalResult, out_dir: str | Path, plots: bool = True) -> dict:
    """Write ``metrics.json``, ``report.md`` and the plots into ``out_dir``; returns the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(result)
    if plots:
        metrics['plots'] = P.write_all(result.pairs, out_dir, trajectory=result.trajectory)
    (out_dir / 'metrics.json').write_text(json.dumps(metrics, indent=1) + '\n')
    (out_dir / 'report.md').write_text(markdown_report(metrics))
    return metrics
