"""Stream the camera frames of a ROS 2 bag as serialized messages (no rclpy, no deserialised images).

:func:`index_bag` reads header stamps only and matches image / camera_info [/ depth] by stamp (plus ground truth
from a PoseStamped topic); :func:`iter_frame_data` then yields frames with their raw CDR bytes while reading the
bag once, in order, so long recordings never sit in memory. Used by :mod:`relpose_ros.ros.replay`, which publishes
the bytes as they are (like ``ros2 bag play``). Topic names default to :class:`~relpose_ros.data.bag_writer.BagTopics`;
image_transport's ``<image>/compressed`` and ``<depth>/compressedDepth`` are found automatically.

Bags are opened like the offline reader opens them (:func:`relpose_ros.data.bag_reader.open_source`): a truncated
MCAP file is read up to its last complete message with :mod:`relpose_ros.data.mcap_salvage`, and the stream is
then marked ``partial`` with ``partial_reason``.
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..geometry import make_T, quat_to_matrix
from .bag_writer import POSE_STAMPED, TYPESTORE, BagTopics

IMAGE_TYPES = {'sensor_msgs/msg/Image': 'raw', 'sensor_msgs/msg/CompressedImage': 'compressed'}


@dataclass
class BagFrame:
    """One camera frame of a bag: header stamps per channel, ground truth, and (once loaded) the raw CDR bytes."""

    index: int
    stamp_ns: int                               # image header stamp
    info_stamp_ns: int
    depth_stamp_ns: int | None = None
    T_world_from_cam: np.ndarray | None = None
    image: bytes | None = None
    camera_info: bytes | None = None
    depth: bytes | None = None


@dataclass
class BagStream:
    """The frame index of a bag (no image data) plus the message types of its image and depth topics."""

    path: Path
    frames: list[BagFrame]
    image_transport: str            # 'raw' | 'compressed'
    depth_transport: str | None     # 'raw' | 'compressedDepth' | None (no depth)
    topics: BagTopics
    partial: bool = False           # only the intact prefix of a truncated / damaged bag was read
    partial_reason: str = ''


def cdr_stamp_ns(raw: bytes) -> int:
    """Header stamp of a serialized message that starts with std_msgs/Header (ROS 2 CDR, either endianness)."""
    if len(raw) < 12:
        raise DatasetError(f'serialized message of {len(raw)} bytes is too short to hold a header')
    fmt = '<iI' if raw[1] == 1 else '>iI'
    sec, nanosec = struct.unpack_from(fmt, raw, 4)
    return sec * 1_000_000_000 + nanosec


def cdr_restamp(raw: bytes, stamp_ns: int) -> bytes:
    """Copy of a serialized header-first message with its header stamp replaced."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    out = bytearray(raw)
    struct.pack_into('<iI' if raw[1] == 1 else '>iI', out, 4, sec, nanosec)
    return bytes(out)


def _open_bag(path: Path):
    """(message source, partial) of a bag: rosbags, or the MCAP salvage reader for a truncated MCAP file."""
    from .bag_reader import open_source

    return open_source(path)


def _nearest(stamps: np.ndarray, stamp: int, slop_ns: int) -> int | None:
    """Index of the sorted ``stamps`` entry nearest to ``stamp`` if within ``slop_ns``."""
    k = int(np.searchsorted(stamps, stamp))
    best = min((j for j in (k - 1, k) if 0 <= j < len(stamps)), key=lambda j: abs(int(stamps[j]) - stamp),
               default=None)
    return best if best is not None and abs(int(stamps[best]) - stamp) <= slop_ns else None


def index_bag(path: str | Path, topics: BagTopics = BagTopics(), use_depth: bool = True,
              max_frames: int | None = None, sync_slop_s: float = 0.02) -> BagStream:
    """Frames (image + camera_info [+ depth]) of a bag, matched by header stamp within ``sync_slop_s``, with
    ground truth from ``topics.gt_pose`` (PoseStamped) when present. Reads stamps only: no image is kept."""
    path = Path(path)
    source, partial = _open_bag(path)
    partial_reason = source.stop_reason if partial else ''
    try:
        present = dict(source.topics)
        # image_transport names: fall back to <image>/compressed and <depth>/compressedDepth
        if topics.image not in present and topics.image + '/compressed' in present:
            topics = dataclasses.replace(topics, image=topics.image + '/compressed')
        if topics.depth not in present and topics.depth + '/compressedDepth' in present:
            topics = dataclasses.replace(topics, depth=topics.depth + '/compressedDepth')
        for name in (topics.image, topics.camera_info):
            if name not in present:
                raise DatasetError(f'bag {path} has no topic {name}; it has: '
                                   + (', '.join(f'{t} ({m})' for t, m in sorted(present.items())) or '(none)')
                                   + (f' ({partial_reason})' if partial else ''))
        if present[topics.image] not in IMAGE_TYPES:
            raise DatasetError(f'{topics.image} in {path} is {present[topics.image]}, not an image type')
        with_depth = use_depth and topics.depth in present
        wanted = [topics.image, topics.camera_info] + ([topics.depth] if with_depth else [])
        with_gt = topics.gt_pose in present and present[topics.gt_pose] == POSE_STAMPED
        if with_gt:
            wanted.append(topics.gt_pose)
        stamps: dict[str, list[int]] = {t: [] for t in wanted}
        poses: list[np.ndarray] = []
        try:
            for topic, _t, raw, _loc in source.messages(set(stamps)):
                stamp = cdr_stamp_ns(raw)
                if topic == topics.gt_pose:
                    msg = TYPESTORE.deserialize_cdr(bytes(raw), present[topic])
                    q, p = msg.pose.orientation, msg.pose.position
                    poses.append(make_T(quat_to_matrix([q.w, q.x, q.y, q.z]), [p.x, p.y, p.z]))
                stamps[topic].append(stamp)
        except DatasetError:
            raise
        except Exception as exc:  # damage in the middle of a bag: keep what was read, mark partial
            partial = True
            partial_reason = f'bag {path} could not be read past {len(stamps[topics.image])} images: {exc}'
    finally:
        source.close()

    slop_ns = int(sync_slop_s * 1e9)
    info = np.sort(np.asarray(stamps[topics.camera_info], dtype=np.int64))
    depth = np.sort(np.asarray(stamps[topics.depth], dtype=np.int64)) if with_depth else None
    gt_order = np.argsort(np.asarray(stamps[topics.gt_pose], dtype=np.int64), kind='stable') if with_gt else None
    gt = np.asarray(stamps[topics.gt_pose], dtype=np.int64)[gt_order] if with_gt else None
    frames: list[BagFrame] = []
    for stamp in sorted(stamps[topics.image]):
        i_info = _nearest(info, stamp, slop_ns)
        i_depth = _nearest(depth, stamp, slop_ns) if with_depth else None
        if i_info is None or (with_depth and i_depth is None):
            continue
        i_gt = _nearest(gt, stamp, slop_ns) if with_gt else None
        frames.append(BagFrame(len(frames), stamp, int(info[i_info]),
                               None if i_depth is None else int(depth[i_depth]),
                               None if i_gt is None else poses[int(gt_order[i_gt])]))
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise DatasetError(f'bag {path}: no frame has an image, camera_info{" and depth" if with_depth else ""} '
                           f'with matching stamps (within {sync_slop_s} s)')
    depth_transport = None
    if with_depth:
        depth_transport = 'raw' if present[topics.depth] == 'sensor_msgs/msg/Image' else 'compressedDepth'
    return BagStream(path, frames, IMAGE_TYPES[present[topics.image]], depth_transport, topics, partial,
                     partial_reason)


def iter_frame_data(stream: BagStream, indices) -> Iterator[BagFrame]:
    """Yield ``stream.frames[i]`` for the ascending ``indices`` with their raw messages, reading the bag once in
    order and keeping only the frames not yet yielded in memory (a long bag never sits in RAM)."""
    indices = list(indices)
    if not indices:
        return
    topics = stream.topics
    channel_of = {topics.image: 'image', topics.camera_info: 'camera_info'}
    if stream.depth_transport is not None:
        channel_of[topics.depth] = 'depth'
    need: dict[tuple[str, int], list[int]] = {}
    for pos, i in enumerate(indices):
        f = stream.frames[i]
        need.setdefault((topics.image, f.stamp_ns), []).append(pos)
        need.setdefault((topics.camera_info, f.info_stamp_ns), []).append(pos)
        if f.depth_stamp_ns is not None:
            need.setdefault((topics.depth, f.depth_stamp_ns), []).append(pos)
    pending: dict[int, dict[str, bytes]] = {}
    next_pos = 0
    source, _partial = _open_bag(stream.path)
    try:
        for topic, _t, raw, _loc in source.messages(set(channel_of)):
            positions = need.pop((topic, cdr_stamp_ns(raw)), None)
            if not positions:
                continue
            data = bytes(raw)
            for pos in positions:
                pending.setdefault(pos, {})[channel_of[topic]] = data
            while next_pos < len(indices):
                f = stream.frames[indices[next_pos]]
                got = pending.get(next_pos, {})
                if 'image' not in got or 'camera_info' not in got or (f.depth_stamp_ns is not None
                                                                      and 'depth' not in got):
                    break
                del pending[next_pos]
                yield BagFrame(f.index, f.stamp_ns, f.info_stamp_ns, f.depth_stamp_ns, f.T_world_from_cam,
                               got['image'], got['camera_info'], got.get('depth'))
                next_pos += 1
            if next_pos == len(indices):
                return
    finally:
        source.close()
    raise DatasetError(f'bag {stream.path} ended before frame {indices[next_pos]} was complete (truncated or '
                       'changed while reading)')


def read_bag_stream(path: str | Path, topics: BagTopics = BagTopics(), use_depth: bool = True,
                    max_frames: int | None = None, sync_slop_s: float = 0.02) -> BagStream:
    """:func:`index_bag` with every frame's data loaded (small bags and tests)."""
    stream = index_bag(path, topics, use_depth, max_frames, sync_slop_s)
    stream.frames = list(iter_frame_data(stream, range(len(stream.frames))))
    return stream
