"""``relpose eval``: score a backend on a dataset, offline (direct calls) or replay (through the live node).

    relpose eval --backend rgbd --dataset 7scenes:../shared/data/7scenes-1000 \\
        --protocol keyframe --every 40 --gaps 30 60 100 --out eval_out
    relpose eval --mode replay --backend constant --dataset bag:run.mcap --out replay_out

Writes ``OUT/metrics.json``, ``OUT/report.md`` and PNG plots (see docs/eval.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('eval', help='evaluate a backend on a dataset (offline or replayed through the node)',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--backend', help='backend name (rgbd, mickey, regression, constant)')
    p.add_argument('--dataset', required=True, help='FORMAT:PATH with FORMAT in 7scenes, tum, mapfree, bag, synthetic')
    p.add_argument('--dataset-option', '-D', action='append', default=[], metavar='KEY=VALUE',
                   help='reader option, repeatable (e.g. -D image_topic=/cam/image_raw -D camera=fr1)')
    p.add_argument('--config', type=Path, default=None, help='backend parameters, YAML or JSON file')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='backend parameter override, repeatable; nested keys with dots (ransac.iterations=200)')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--mode', default='offline', choices=('offline', 'replay'))
    g = p.add_argument_group('pair protocol')
    g.add_argument('--protocol', default=None, choices=('fixed', 'keyframe', 'mapfree'),
                   help='fixed: one reference vs every later frame; keyframe: a keyframe every --every frames '
                        'with queries --gaps later; mapfree: seq0 reference vs every 5th seq1 query. Default: '
                        'keyframe offline, fixed in replay mode (the only one replay supports)')
    g.add_argument('--reference', type=int, default=0, help='reference index (fixed) or first keyframe (keyframe)')
    g.add_argument('--step', type=int, default=1, help='fixed protocol: score every STEP-th later frame')
    g.add_argument('--every', type=int, default=40, help='keyframe protocol: keyframe interval (frames)')
    g.add_argument('--gaps', type=int, nargs='+', default=[30, 60, 100], help='keyframe protocol: query gaps')
    g.add_argument('--max-pairs', type=int, default=None, help='score only the first N pairs (replay: play N frames)')
    g.add_argument('--gap-bin', type=int, default=None,
                   help='per_gap groups gaps into bins of this many frames (default 1; 10 for fixed and replay, '
                        '100 for mapfree)')
    r = p.add_argument_group('replay mode')
    r.add_argument('--rate', type=float, default=1.0, help='playback speed factor (1 = recorded rate)')
    r.add_argument('--rate-hz', type=float, default=None, help='play frames at this fixed rate instead')
    r.add_argument('--namespace', default='/relpose_replay', help='namespace of the node (spawned or running)')
    r.add_argument('--node', default='spawn', choices=('spawn', 'running'),
                   help='spawn a relocalize_node, or use one already running')
    r.add_argument('--timeout', type=float, default=10.0, help='seconds to wait for outputs after the last frame')
    p.add_argument('--out', type=Path, required=True, help='output folder (metrics.json, report.md, plots)')
    p.add_argument('--no-plots', action='store_true', help='skip the PNG plots')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--mapfree-submission', type=Path, default=None, metavar='ZIP',
                   help='also write the estimates in the Map-free submission format')
    p.add_argument('--score-mapfree-submission', type=Path, default=None, metavar='ZIP',
                   help='score a Map-free submission zip against --dataset mapfree:DIR (a scene or split folder) '
                        'instead of running a backend')
    p.set_defaults(func=run)
    return p


def load_backend_config(path: Path | None, overrides: list[str]) -> dict:
    """Backend config from a YAML/JSON file plus ``key.sub=value`` overrides."""
    import yaml

    from ..data.datasets import parse_option_value
    from ..errors import ConfigError

    cfg: dict = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f'backend config file {path} does not exist')
        cfg = yaml.safe_load(path.read_text()) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f'backend config file {path} must hold a mapping, got {type(cfg).__name__}')
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f"--set '{item}' must be KEY=VALUE")
        key, value = item.split('=', 1)
        node = cfg
        parts = key.strip().split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_option_value(value)
    return cfg


def run(args) -> int:
    from ..backends import create
    from ..data.datasets import open_dataset, parse_options
    from ..eval.protocols import build_pairs
    from ..errors import ConfigError
    from ..eval.report import markdown_table, write_report

    if args.score_mapfree_submission is not None:
        return score_submission_command(args)
    if not args.backend:
        raise ConfigError('--backend is required (one of rgbd, mickey, regression, constant)')
    protocol = args.protocol or ('fixed' if args.mode == 'replay' else 'keyframe')
    if args.mode == 'replay' and protocol != 'fixed':
        raise ConfigError(f'replay mode plays one reference into the node: use --protocol fixed, not {protocol}')
    sequence = open_dataset(args.dataset, **parse_options(args.dataset_option))
    config = load_backend_config(args.config, args.set)
    gap_bin = args.gap_bin or {'fixed': 10, 'mapfree': 100}.get(protocol, 1)
    meta = {'backend': args.backend, 'dataset': args.dataset, 'protocol': protocol, 'frames': len(sequence),
            'config': config}
    if protocol == 'keyframe':
        meta['protocol'] = f'keyframe every {args.every}, gaps {sorted(set(args.gaps))}'
    elif protocol == 'fixed':
        meta['protocol'] = f'fixed reference {args.reference}' + (f', step {args.step}' if args.mode == 'offline' else '')
    if args.mode == 'offline':
        from ..eval.offline import evaluate_offline

        pairs = build_pairs(protocol, sequence, reference=args.reference, step=args.step, every=args.every,
                            gaps=args.gaps, max_pairs=args.max_pairs)
        estimator = create(args.backend, config, device=args.device)
        meta['device'] = str(estimator.device)
        result = evaluate_offline(estimator, sequence, pairs, progress=not args.no_progress, meta=meta)
    else:
        from ..eval.replay import evaluate_replay

        result = evaluate_replay(sequence, args.backend, config, out_dir=args.out, reference=args.reference,
                                 speed=args.rate, rate_hz=args.rate_hz, spawn=args.node == 'spawn',
                                 namespace=args.namespace, device=args.device, max_frames=args.max_pairs,
                                 drain_timeout_s=args.timeout, progress=not args.no_progress, meta=meta)
    result.gap_bin = gap_bin
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = write_report(result, args.out, plots=not args.no_plots)
    if args.mapfree_submission is not None:
        from ..eval.mapfree_submission import write_submission_from_result

        write_submission_from_result(result, sequence, args.mapfree_submission)
        print(f'wrote {args.mapfree_submission}')
    print(markdown_table(metrics))
    if result.partial:
        print(f'PARTIAL RESULTS: {result.partial_reason}')
    print(f'wrote {args.out / "metrics.json"} and {args.out / "report.md"}')
    return 0


def score_submission_command(args) -> int:
    """``--score-mapfree-submission ZIP``: score a submission against Map-free ground truth."""
    import json

    from ..data.datasets import parse_spec
    from ..errors import ConfigError
    from ..eval.mapfree_submission import score_submission
    from ..eval.report import _clean, markdown_table

    fmt, path = parse_spec(args.dataset)
    if fmt != 'mapfree':
        raise ConfigError('--score-mapfree-submission needs --dataset mapfree:DIR (a scene or a split folder)')
    scored = _clean(score_submission(args.score_mapfree_submission, path))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'metrics.json').write_text(json.dumps(scored, indent=1) + '\n')
    print(markdown_table({'summary': scored['summary'], 'per_gap': scored['per_scene']}).replace('| gap |', '| scene |'))
    print(f'wrote {args.out / "metrics.json"}')
    return 0
