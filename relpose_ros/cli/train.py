"""``relpose train --config config/train/<x>.yaml``: train the regression backend's model (Lightning)."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('train', help='train the regression backend (Lightning; DDP with --devices/--strategy)',
                       description='Train the LoFTR-feature pose regressor. The checkpoint written '
                                   '(OUT/checkpoints/best.ckpt or last.ckpt) is what regression.checkpoint loads.')
    p.add_argument('--config', required=True, help='training YAML, e.g. config/train/7scenes_cpu.yaml')
    p.add_argument('--out', default=None, help='output folder (overrides out_dir)')
    p.add_argument('--devices', default=None, help='Lightning devices (e.g. 4, or auto)')
    p.add_argument('--strategy', default=None, help='Lightning strategy (e.g. ddp)')
    p.add_argument('--accelerator', default=None, help='cpu | gpu | auto')
    p.add_argument('--precision', default=None, help='auto (16-mixed on CUDA) | 32-true | bf16-mixed ...')
    p.add_argument('--max-steps', type=int, default=None)
    p.add_argument('--max-epochs', type=int, default=None)
    p.add_argument('--resume', default=None, help="checkpoint to resume from, or 'last' (OUT/checkpoints/last.ckpt)")
    p.add_argument('--stage', choices=('all', 'matching', 'head'), default='all',
                   help='all: matching pre-training (if pretrain_matching.steps > 0) then the head; matching: only '
                        'the LoFTR matching pre-training (writes OUT/loftr_matching.pth); head: skip it')
    p.add_argument('--validate', default=None, metavar='CKPT',
                   help='train nothing: validation metrics of CKPT on the config\'s validation pairs, with the '
                        'config\'s inference settings (model.two_way, model.confidence)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override any config value, e.g. --set data.batch_size=4 (YAML value syntax)')
    p.set_defaults(func=run)
    return p


def _devices(value: str):
    return int(value) if value.isdigit() else value


def run(args) -> int:
    import logging

    import yaml

    from ..errors import ConfigError
    from ..train.config import load_train_config
    from ..train.run import fit

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    overrides = {}
    for item in args.set:
        if '=' not in item:
            raise ConfigError(f'--set expects KEY=VALUE, got {item!r}')
        k, v = item.split('=', 1)
        overrides[k] = yaml.safe_load(v)
    for flag, key, conv in (('out', 'out_dir', str), ('devices', 'train.devices', _devices),
                            ('strategy', 'train.strategy', str), ('accelerator', 'train.accelerator', str),
                            ('precision', 'train.precision', str), ('max_steps', 'train.max_steps', int),
                            ('max_epochs', 'train.max_epochs', int)):
        if getattr(args, flag) is not None:
            overrides[key] = conv(getattr(args, flag))
    if args.stage == 'head':
        overrides['pretrain_matching.steps'] = 0
    cfg = load_train_config(args.config, overrides)
    if args.validate:
        from ..train.run import validate_checkpoint
        print(json.dumps(validate_checkpoint(cfg, args.validate), indent=2, default=float))
        return 0
    if args.stage == 'matching':
        from ..train.run import run_matching_stage
        if int(cfg['pretrain_matching']['steps']) <= 0:
            raise ConfigError('--stage matching needs pretrain_matching.steps > 0')
        _, summary = run_matching_stage(cfg)
        print(json.dumps(summary, indent=2, default=float))
        return 0
    summary = fit(cfg, resume=args.resume)
    print(json.dumps({k: summary[k] for k in ('pretrain_matching', 'trivial', 'initial', 'final', 'best', 'seconds', 'steps',
                                               'best_checkpoint', 'last_checkpoint') if k in summary},
                     indent=2, default=float))
    return 0
