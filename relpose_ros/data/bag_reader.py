"""Reader of ROS 2 bags (.mcap and .db3, with ``rosbags``) as a posed :class:`Sequence`.

Topics (each configurable; ``None`` = detect):

- ``image_topic``: sensor_msgs/Image (rgb8, bgr8, mono8, ...) or CompressedImage; detected as the only
  image topic whose name does not contain 'depth'.
- ``info_topic``: sensor_msgs/CameraInfo; detected as ``<image namespace>/camera_info`` or the only one.
- ``depth_topic``: Image (16UC1 mm / 32FC1 m) or compressedDepth; detected by 'depth' in the name;
  ``''`` or ``use_depth=False`` disables it.
- ``gt_topic``: ground truth as geometry_msgs/PoseStamped, TransformStamped, nav_msgs/Odometry (pose of the
  camera in ``header.frame_id``; with ``gt_frame`` / ``camera_frame`` set, only messages whose ``header.frame_id``
  / ``child_frame_id`` match are used, and a topic where none match raises naming the frames it has) or
  tf2_msgs/TFMessage (``/tf``: the chain ``gt_frame`` -> ... -> ``camera_frame`` composed over ``/tf`` and
  ``/tf_static``, see :mod:`relpose_ros.data.tf_chain`; ``camera_frame`` defaults to the image's frame id,
  ``gt_frame`` to the root of its tree). Detected as the only pose-like topic, else ``/tf`` when present;
  ``''`` disables it.

Every image is paired with the nearest camera_info and depth within ``max_dt`` seconds (header stamps) and
the nearest ground truth within ``gt_max_dt`` (for a tf chain: every dynamic edge's nearest sample within
``gt_max_dt``; static edges always apply); images without depth are skipped (``skipped_no_depth``), images
without camera_info too (``skipped_no_camera_info``), images without ground truth are kept with an unknown pose
(``frames_without_gt``).

A truncated MCAP file is read up to its last complete message: the sequence then has ``partial = True``
and ``partial_reason``. A bag that lacks an asked topic raises :class:`DatasetError` listing the topics it has.
Messages are decoded with :mod:`relpose_ros.ros.conversions` (pure numpy on rosbags messages).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError, FrameError
from ..geometry import make_T, quat_to_matrix, relative_pose
from ..types import Frame
from .sequence import PosedFrame, Sequence
from .tf_chain import TfTree, frame_name
from .tum import nearest

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/TransformStamped', 'nav_msgs/msg/Odometry')
TF_TYPE = 'tf2_msgs/msg/TFMessage'
TF_STATIC = '/tf_static'
_OPTION = {'image': 'image_topic', 'camera_info': 'info_topic', 'depth': 'depth_topic', 'ground truth': 'gt_topic'}


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pose_T(position, orientation) -> np.ndarray:
    q = [orientation.w, orientation.x, orientation.y, orientation.z]
    return make_T(quat_to_matrix(q), [position.x, position.y, position.z])


class _RosbagsSource:
    """Messages of an intact bag through rosbags' AnyReader (kept open; random access by log time)."""

    def __init__(self, path: Path):
        from rosbags.highlevel import AnyReader

        self.reader = AnyReader([path])
        self.reader.open()
        self.topics = {c.topic: c.msgtype for c in self.reader.connections}
        self.stop_reason = ''

    def messages(self, topics):
        conns = [c for c in self.reader.connections if c.topic in topics]
        seen: dict[tuple[str, int], int] = {}
        for conn, t, raw in self.reader.messages(connections=conns):
            k = seen.get((conn.topic, t), 0)
            seen[(conn.topic, t)] = k + 1
            yield conn.topic, t, raw, (t, k)

    def read(self, topic: str, locator) -> bytes:
        t, k = locator
        conns = [c for c in self.reader.connections if c.topic == topic]
        for i, (_c, _t, raw) in enumerate(self.reader.messages(connections=conns, start=t, stop=t + 1)):
            if i == k:
                return raw
        raise DatasetError(f'message of {topic} at {t} ns vanished from the bag')

    def deserialize(self, raw: bytes, msgtype: str):
        return self.reader.deserialize(raw, msgtype)

    def close(self) -> None:
        self.reader.close()


class _SalvageSource:
    """The intact prefix of a truncated MCAP file (see :mod:`relpose_ros.data.mcap_salvage`)."""

    def __init__(self, file: Path):
        from .bag_writer import TYPESTORE
        from .mcap_salvage import McapSalvage

        self.salvage, self.typestore = McapSalvage(file), TYPESTORE
        self.index = list(self.salvage.messages())
        self.topics = {topic: schema for topic, schema, _, _ in self.index}
        self.stop_reason = self.salvage.stop_reason or 'file ends without the MCAP footer'

    def messages(self, topics):
        for topic, _schema, t, loc in self.index:
            if topic in topics:
                yield topic, t, self.salvage.read(loc), loc

    def read(self, topic: str, locator) -> bytes:
        return self.salvage.read(locator)

    def deserialize(self, raw: bytes, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        self.salvage.close()


def _bag_file(path: Path) -> Path | None:
    """The storage file of a bag folder or file path (None when there is none)."""
    if path.is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in ('.mcap', '.db3')) if path.is_dir() else []
    return files[0] if files else None


def open_source(path: Path):
    """rosbags for an intact bag; the MCAP salvage reader when rosbags cannot open a truncated MCAP."""
    if not path.exists():
        raise DatasetError(f'bag {path} does not exist')
    storage = _bag_file(path)
    if storage is None:
        raise DatasetError(f'{path} is not a ROS 2 bag: expected a .mcap / .db3 file or a bag folder with '
                           f'metadata.yaml and one; found none')
    target = path if path.is_dir() and (path / 'metadata.yaml').is_file() else storage
    try:
        return _RosbagsSource(target), False
    except Exception as exc:  # rosbags raises its own error classes for damaged files
        if storage.suffix != '.mcap':
            raise DatasetError(f'cannot read bag {path}: {exc} (a truncated .db3 cannot be recovered; '
                               f'record MCAP to keep partial data)') from None
        try:
            src = _SalvageSource(storage)
        except Exception as exc2:
            raise DatasetError(f'cannot read bag {path}: {exc}; recovery failed too: {exc2}') from None
        src.stop_reason = f'bag {storage.name} is truncated or damaged ({exc}); read up to the last complete ' \
                          f'message: {src.stop_reason}'
        return src, True


class BagSequence(Sequence):
    """A ROS 2 bag as a posed sequence (see the module docstring for topics, association and options)."""

    def __init__(self, path: str | Path, image_topic: str | None = None, info_topic: str | None = None,
                 depth_topic: str | None = None, gt_topic: str | None = None, gt_frame: str | None = None,
                 camera_frame: str | None = None, use_depth: bool = True, max_dt: float = 0.02,
                 gt_max_dt: float = 0.02, depth_scale: float = 1e-3):
        self.path = Path(path)
        self.name = self.path.stem
        self.depth_scale = depth_scale
        self.source, self.partial = open_source(self.path)
        self.partial_reason = self.source.stop_reason if self.partial else ''
        topics = self.source.topics
        self.image_topic = self._pick(image_topic, IMAGE_TYPES, 'image', lambda t: 'depth' not in t.lower())
        self.image_type = topics[self.image_topic]
        default_info = self.image_topic.rsplit('/', 1)[0] + '/camera_info'
        self.info_topic = self._pick(info_topic, (INFO_TYPE,), 'camera_info',
                                     lambda t: t == default_info if default_info in topics else True)
        self.depth_topic = None
        if use_depth and depth_topic != '':
            if depth_topic is not None or any('depth' in t.lower() and ty in IMAGE_TYPES for t, ty in topics.items()):
                self.depth_topic = self._pick(depth_topic, IMAGE_TYPES, 'depth', lambda t: 'depth' in t.lower())
        self.gt_topic = None
        if gt_topic != '':
            if gt_topic is not None:
                self.gt_topic = self._pick(gt_topic, POSE_TYPES + (TF_TYPE,), 'ground truth', lambda t: True)
            elif any(ty in POSE_TYPES for ty in topics.values()):
                self.gt_topic = self._pick(None, POSE_TYPES, 'ground truth', lambda t: True)
            elif '/tf' in topics and topics['/tf'] == TF_TYPE:
                self.gt_topic = '/tf'
        self.gt_frame = None if gt_frame is None else frame_name(gt_frame)
        self.camera_frame = None if camera_frame is None else frame_name(camera_frame)
        self._index(max_dt, gt_max_dt)

    # ------------------------------------------------------------------ topics

    def _topic_list(self) -> str:
        return ', '.join(f'{t} [{ty}]' for t, ty in sorted(self.source.topics.items())) or '(none)'

    def _pick(self, asked: str | None, types, what: str, prefer) -> str:
        topics = self.source.topics
        if asked is not None:
            if asked not in topics:
                raise DatasetError(f"bag {self.path} has no {what} topic '{asked}'; it has: {self._topic_list()}")
            if topics[asked] not in types:
                raise DatasetError(f"{what} topic '{asked}' in {self.path} is {topics[asked]}, expected one of "
                                   f"{', '.join(types)}")
            return asked
        cands = [t for t, ty in topics.items() if ty in types and prefer(t)]
        if len(cands) != 1:
            how = 'no' if not cands else f'{len(cands)} candidate ({", ".join(sorted(cands))})'
            raise DatasetError(f'bag {self.path}: {how} {what} topic found ({" or ".join(types)}); '
                               f'name it with the {_OPTION[what]} option. The bag has: {self._topic_list()}'
                               + (f' ({self.partial_reason})' if self.partial else ''))
        return cands[0]

    # ------------------------------------------------------------------ index

    def _index(self, max_dt: float, gt_max_dt: float) -> None:
        tf_gt = bool(self.gt_topic) and self.source.topics[self.gt_topic] == TF_TYPE
        wanted = {self.image_topic, self.info_topic} | {t for t in (self.depth_topic, self.gt_topic) if t}
        if tf_gt and self.source.topics.get(TF_STATIC) == TF_TYPE:
            wanted.add(TF_STATIC)
        images, infos, depths, gts = [], [], [], []    # (stamp ns, locator / message / T)
        self._image_frame_ids: list[str] = []
        tree = TfTree()
        try:
            for topic, t, raw, loc in self.source.messages(wanted):
                msgtype = self.source.topics[topic]
                if topic == self.image_topic:
                    msg = self.source.deserialize(raw, msgtype)
                    images.append((_stamp_ns(msg.header), loc))
                    self._image_frame_ids.append(msg.header.frame_id)
                elif topic == self.depth_topic:
                    msg = self.source.deserialize(raw, msgtype)
                    depths.append((_stamp_ns(msg.header), loc))
                elif topic == self.info_topic:
                    msg = self.source.deserialize(raw, msgtype)
                    infos.append((_stamp_ns(msg.header), msg))
                elif topic == self.gt_topic or topic == TF_STATIC:
                    msg = self.source.deserialize(raw, msgtype)
                    if msgtype == TF_TYPE:
                        for tr in msg.transforms:
                            tree.add(_stamp_ns(tr.header), tr.header.frame_id, tr.child_frame_id,
                                     tr.transform.translation, tr.transform.rotation, static=topic == TF_STATIC)
                    else:
                        gts.append(self._gt_from(msg, msgtype))
        except DatasetError:
            raise
        except Exception as exc:  # damage in the middle of a bag: keep what was read, mark partial
            self.partial = True
            self.partial_reason = f'bag {self.path} could not be read past {len(images)} images: {exc}'
        if not images:
            raise DatasetError(f'bag {self.path} has no readable messages on image topic {self.image_topic}'
                               + (f' ({self.partial_reason})' if self.partial else ''))
        if not infos:
            raise DatasetError(f'bag {self.path} has no messages on camera_info topic {self.info_topic}')
        if self.gt_topic and not tf_gt:
            gts = self._match_gt_frames(gts)
        img_t = np.array([s for s, _ in images], dtype=np.float64) * 1e-9
        info_idx = nearest(np.array([s for s, _ in infos], float) * 1e-9, img_t, max_dt)
        keep = info_idx >= 0
        self.skipped_no_camera_info = int((~keep).sum())
        depth_idx = np.full(len(images), -1)
        if self.depth_topic:
            depth_idx = nearest(np.array([s for s, _ in depths], float) * 1e-9, img_t, max_dt)
            keep &= depth_idx >= 0
        self.skipped_no_depth = int(((depth_idx < 0) & (info_idx >= 0)).sum()) if self.depth_topic else 0
        sel = np.flatnonzero(keep)
        if len(sel) == 0:
            raise DatasetError(f'bag {self.path}: no image on {self.image_topic} has a camera_info'
                               + (f' and a depth image on {self.depth_topic}' if self.depth_topic else '')
                               + f' within {max_dt} s')
        self._images = [images[i] for i in sel]
        self._frame_ids = [self._image_frame_ids[i] for i in sel]
        self._infos = [infos[info_idx[i]][1] for i in sel]
        self._depths = [depths[depth_idx[i]][1] for i in sel] if self.depth_topic else [None] * len(sel)
        if tf_gt:
            self._poses = self._gt_from_tf(tree, [s for s, _ in self._images], gt_max_dt)
        else:
            gt_idx = nearest(np.array([g[0] for g in gts], float) * 1e-9, img_t[sel], gt_max_dt) if gts \
                else np.full(len(sel), -1)
            self._poses = [gts[k][1] if k >= 0 else None for k in gt_idx]
        self.frames_without_gt = sum(p is None for p in self._poses)

    def _gt_from(self, msg, msgtype: str) -> tuple[int, np.ndarray, str, str | None]:
        """(stamp, T, header.frame_id, child_frame_id or None for PoseStamped) of a pose-like message."""
        child = None
        if msgtype == 'geometry_msgs/msg/PoseStamped':
            T = _pose_T(msg.pose.position, msg.pose.orientation)
        elif msgtype == 'geometry_msgs/msg/TransformStamped':
            T, child = _pose_T(msg.transform.translation, msg.transform.rotation), msg.child_frame_id
        else:  # Odometry
            T, child = _pose_T(msg.pose.pose.position, msg.pose.pose.orientation), msg.child_frame_id
        return _stamp_ns(msg.header), T, frame_name(msg.header.frame_id), None if child is None else frame_name(child)

    def _match_gt_frames(self, gts: list) -> list:
        """The ground-truth messages whose frames match ``gt_frame`` (header.frame_id) and ``camera_frame``
        (child_frame_id of TransformStamped / Odometry), when set; raises naming the frames seen if none does."""
        keep = [g for g in gts if (self.gt_frame is None or g[2] == self.gt_frame)
                and (self.camera_frame is None or g[3] is None or g[3] == self.camera_frame)]
        if gts and not keep:
            seen = sorted({g[2] if g[3] is None else f'{g[2]} -> {g[3]}' for g in gts})
            raise DatasetError(f"bag {self.path}: no ground truth on {self.gt_topic} is "
                               f"{self.gt_frame or '<any frame>'} -> {self.camera_frame or '<any child>'} "
                               f"(gt_frame -> camera_frame); its messages have: {', '.join(seen)}")
        return keep

    def _gt_from_tf(self, tree: TfTree, stamps_ns: list[int], max_dt: float) -> list[np.ndarray | None]:
        """``T_gt_frame_from_camera`` per image from the tf chain (None where a dynamic edge has no sample)."""
        if not len(tree):
            return [None] * len(stamps_ns)
        child = self.camera_frame or frame_name(self._frame_ids[0] if self._frame_ids else '')
        try:
            return tree.lookup(self.gt_frame, child, stamps_ns, max_dt)
        except DatasetError as exc:
            topics = self.gt_topic + (f' and {TF_STATIC}' if TF_STATIC in self.source.topics
                                      and self.gt_topic != TF_STATIC else '')
            raise DatasetError(f"bag {self.path}: {exc} on {topics}; set gt_frame / camera_frame. "
                               f"Transforms seen: {tree.describe()}") from None

    # ------------------------------------------------------------------ frames

    def __len__(self) -> int:
        return len(self._images)

    def stamp_ns(self, index: int) -> int:
        """Header stamp of image ``index`` (no decoding)."""
        return self._images[index][0]

    def pose(self, index: int) -> np.ndarray | None:
        """Ground-truth ``T_world_from_cam`` of frame ``index`` (no decoding), or None."""
        T = self._poses[index]
        return None if T is None else T.copy()

    def intrinsics(self, index: int) -> tuple[np.ndarray, int, int]:
        """(K, width, height) of frame ``index`` from its camera_info (no image decoding)."""
        from ..ros.conversions import camera_info_to_K

        info = self._infos[index]
        return camera_info_to_K(info), int(info.width), int(info.height)

    def gt_relative_pose(self, ref_index: int, query_index: int) -> np.ndarray | None:
        a, b = self._poses[ref_index], self._poses[query_index]
        return None if a is None or b is None else relative_pose(a, b)

    def _decode_image(self, topic: str, locator, depth: bool):
        from ..ros import conversions as conv

        msgtype = self.source.topics[topic]
        msg = self.source.deserialize(self.source.read(topic, locator), msgtype)
        if msgtype.endswith('CompressedImage'):
            return conv.compressed_msg_to_depth(msg, self.depth_scale) if depth else conv.compressed_msg_to_rgb(msg)
        return conv.image_msg_to_depth(msg, self.depth_scale) if depth else conv.image_msg_to_rgb(msg)

    def load(self, index: int) -> PosedFrame:
        from ..ros.conversions import camera_info_to_K

        stamp, loc = self._images[index]
        try:
            rgb = self._decode_image(self.image_topic, loc, depth=False)
            K = camera_info_to_K(self._infos[index], image_size=(rgb.shape[1], rgb.shape[0]))
            depth = None
            if self.depth_topic:
                depth = self._decode_image(self.depth_topic, self._depths[index], depth=True)
                if depth.shape != rgb.shape[:2]:
                    raise FrameError(f'depth image {depth.shape[1]}x{depth.shape[0]} differs from the colour image '
                                     f'{rgb.shape[1]}x{rgb.shape[0]}')
            frame = Frame(rgb=rgb, K=K, depth=depth, stamp_ns=stamp, frame_id=self._frame_ids[index])
        except FrameError as exc:
            raise DatasetError(f'bag {self.path}, image {index} on {self.image_topic} (stamp {stamp} ns): '
                               f'{exc} (camera_info from {self.info_topic})') from None
        T = self._poses[index]
        return PosedFrame(frame=frame, T_world_from_cam=None if T is None else T.copy(), name=f'{stamp}')
