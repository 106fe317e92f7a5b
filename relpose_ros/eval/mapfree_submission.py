"""The Map-free benchmark submission format: write it, read it back and score it against ground truth.

A submission is a zip of ``pose_sXXXXX.txt`` files, one line per query frame::

    seq1/frame_NNNNN.jpg qw qx qy qz tx ty tz confidence

with ``(R(q), t) = T_query_from_ref`` (world-to-camera with world = the seq0 reference) and confidence >= 0.
Failed estimates are left out: a missing line or a NaN / Inf line counts as a failure when scoring.
Scoring uses the Map-free protocol (every 5th seq1 frame) and :mod:`relpose_ros.eval.metrics`; the reported
medians are per-scene medians averaged over scenes, precision and AUC pool all queries.
"""
from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from ..geometry import matrix_to_quat, quat_to_matrix
from . import metrics as M

_POSE_FILE = re.compile(r'^(?:.*/)?pose_(s\d+)\.txt$')

#: One estimate: (R 3x3, t (3,), confidence)
Estimate = tuple[np.ndarray, np.ndarray, float]


def format_line(frame_path: str, R, t, confidence: float) -> str:
    q = matrix_to_quat(R)
    vals = [*q, *np.asarray(t, dtype=float).reshape(3), max(float(confidence), 0.0)]
    return frame_path + ' ' + ' '.join(f'{v:.9g}' for v in vals)


def write_submission(path: str | Path, scenes: Mapping[str, Iterable[tuple[str, np.ndarray, np.ndarray, float]]]) -> Path:
    """Write ``{scene: [(frame_path, R, t, confidence), ...]}`` as a submission zip; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        for scene, rows in scenes.items():
            lines = [format_line(*row) for row in rows]
            z.writestr(f'pose_{scene}.txt', '\n'.join(lines) + ('\n' if lines else ''))
    return path


def write_submission_from_result(result, sequence, path: str | Path) -> Path:
    """The successful estimates of an eval result on a Map-free scene (reference 0) as a submission zip."""
    frames = getattr(sequence, 'frames', None)
    if frames is None or not hasattr(sequence, 'query_numbers'):
        raise ConfigError('--mapfree-submission needs a Map-free dataset (--dataset mapfree:SCENE_DIR)')
    rows = [(frames[p.query], p.R, p.t, p.confidence) for p in result.pairs
            if p.reference == 0 and p.ok and np.all(np.isfinite(p.R)) and np.all(np.isfinite(p.t))]
    return write_submission(path, {sequence.name: rows})


def read_submission(path: str | Path) -> dict[str, dict[str, Estimate | None]]:
    """Submission zip -> ``{scene: {frame_path: (R, t, confidence) or None for a NaN/Inf line}}``."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise DatasetError(f'{path} is not a zip file (a Map-free submission is a zip of pose_sXXXXX.txt files)')
    out: dict[str, dict[str, Estimate | None]] = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            m = _POSE_FILE.match(name)
            if not m:
                continue
            entries: dict[str, Estimate | None] = {}
            for n, line in enumerate(io.TextIOWrapper(z.open(name), encoding='utf-8'), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 9:
                    raise DatasetError(f'{name}:{n}: expected "frame qw qx qy qz tx ty tz confidence", '
                                       f'got {len(parts)} fields')
                try:
                    v = np.array([float(x) for x in parts[1:]])
                except ValueError:
                    raise DatasetError(f'{name}:{n}: non-numeric value in {line.strip()!r}') from None
                if not np.all(np.isfinite(v)) or np.linalg.norm(v[:4]) < 1e-12:
                    entries[parts[0]] = None
                else:
                    entries[parts[0]] = (quat_to_matrix(v[:4]), v[4:7], float(v[7]))
            out[m.group(1)] = entries
    if not out:
        raise DatasetError(f'{path} holds no pose_sXXXXX.txt file')
    return out


def scene_folders(root: str | Path) -> list[Path]:
    """A Map-free scene folder itself, or the ``sXXXXX`` scene folders of a split folder."""
    root = Path(root)
    if (root / 'intrinsics.txt').is_file():
        return [root]
    scenes = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r's\d+', p.name)) if root.is_dir() else []
    if not scenes:
        raise DatasetError(f'{root} is neither a Map-free scene folder (intrinsics.txt, poses.txt, seq0, seq1) '
                           f'nor a split folder of sXXXXX scenes')
    return scenes


def score_submission(path: str | Path, ground_truth_root: str | Path, every: int = 5) -> dict:
    """Score a submission zip against Map-free ground truth (a scene folder or a split folder of scenes).

    Returns ``{'summary': ..., 'per_scene': {scene: summary}, 'pairs': [...]}`` with the metrics.json summary
    keys; ``summary`` medians are per-scene medians averaged over scenes.
    """
    from ..data.mapfree import MapFreeSequence

    submission = read_submission(path)
    per_scene, all_pairs = {}, []
    for folder in scene_folders(ground_truth_root):
        seq = MapFreeSequence(folder)
        estimates = submission.get(seq.name, {})
        pairs = []
        for index, number in seq.query_numbers():
            if number % every:
                continue
            T_gt = seq.gt_relative_pose(0, index)
            frame = seq.frames[index]
            K, W, H = seq.intrinsics[frame]
            est = estimates.get(frame)
            if est is None:
                p = M.score_pair(0, index, np.eye(3), np.zeros(3), 0.0, False, T_gt, K, W, H, gap=number,
                                 reason='missing' if frame not in estimates else 'NaN/Inf line')
            else:
                p = M.score_pair(0, index, est[0], est[1], est[2], True, T_gt, K, W, H, gap=number)
            p.extra['frame'] = frame
            p.extra['scene'] = seq.name
            pairs.append(p)
        per_scene[seq.name] = M.summarize(pairs)
        all_pairs += pairs
    summary = M.summarize(all_pairs)
    for key in ('median_rot_err_deg', 'median_trans_err_m', 'median_vcre_px'):
        vals = [s[key] for s in per_scene.values() if np.isfinite(s[key])]
        summary[key] = float(np.mean(vals)) if vals else float('nan')
    return {'summary': summary, 'per_scene': per_scene, 'pairs': [p.to_json() for p in all_pairs]}
