"""Write any :class:`~relpose_ros.data.sequence.Sequence` to a ROS 2 bag (MCAP or SQLite3) with ``rosbags``.

Per frame (all with the frame's stamp as header stamp and bag timestamp):

- ``/camera/color/image_raw``: sensor_msgs/Image rgb8 (or CompressedImage jpeg / png on ``.../compressed``);
- ``/camera/color/camera_info``: sensor_msgs/CameraInfo (plumb_bob, zero distortion, P = [K | 0]);
- ``/camera/aligned_depth_to_color/image_raw``: depth registered to the colour image, 16UC1 millimetres
  (0 = invalid), 32FC1 metres (NaN = invalid) or compressedDepth (16-bit PNG on ``.../compressedDepth``), when the
  frames have depth;
- ``/ground_truth/pose``: geometry_msgs/PoseStamped of the camera in ``world`` (``T_world_from_cam``), and the same
  transform on ``/tf`` (tf2_msgs/TFMessage, ``world`` -> the camera's frame id), when the frame has a pose.

Messages come from the rosbags type store (no rclpy), so this module runs anywhere. The metadata (topics, types,
type hashes, QoS profiles) is what ``ros2 bag play`` needs. Topic names are module constants shared with the bag
reader and the replay tool (:class:`BagTopics`).
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from ..errors import ConfigError, DatasetError
from ..geometry import matrix_to_quat
from ..types import Frame
from .sequence import Sequence

TOPIC_IMAGE = '/camera/color/image_raw'
TOPIC_CAMERA_INFO = '/camera/color/camera_info'
TOPIC_DEPTH = '/camera/aligned_depth_to_color/image_raw'
TOPIC_GT_POSE = '/ground_truth/pose'
TOPIC_TF = '/tf'
WORLD_FRAME = 'world'
DEPTH_ENCODINGS = ('16UC1', '32FC1', 'compressedDepth')
IMAGE_FORMATS = ('raw', 'jpeg', 'png')
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
_T = TYPESTORE.types
IMAGE, CAMERA_INFO = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
POSE_STAMPED, TF_MESSAGE = 'geometry_msgs/msg/PoseStamped', 'tf2_msgs/msg/TFMessage'

_INFINITE = QosTime(9223372036, 854775807)    # RMW_DURATION_INFINITE (INT64_MAX ns), as `ros2 bag record` writes it
SENSOR_QOS = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, _INFINITE, _INFINITE,
                 QosLiveliness.AUTOMATIC, _INFINITE, False)


@dataclass(frozen=True)
class BagTopics:
    """Topic names of a relpose bag (defaults: RealSense-like camera topics + ground truth)."""

    image: str = TOPIC_IMAGE
    camera_info: str = TOPIC_CAMERA_INFO
    depth: str = TOPIC_DEPTH
    gt_pose: str = TOPIC_GT_POSE
    tf: str = TOPIC_TF


@dataclass
class BagSummary:
    """What :func:`write_bag` wrote."""

    path: Path
    storage: str
    num_frames: int
    start_ns: int
    end_ns: int
    message_counts: dict[str, int] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


# ----------------------------------------------------------------------------- message builders (rosbags types)


def header(stamp_ns: int, frame_id: str):
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return _T['std_msgs/msg/Header'](stamp=_T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec),
                                     frame_id=frame_id)


def image_message(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """HxW or HxWxC array -> sensor_msgs/Image (little-endian, no row padding)."""
    array = np.ascontiguousarray(array)
    h, w = array.shape[:2]
    if array.dtype.byteorder == '>':
        array = array.astype(array.dtype.newbyteorder('<'))
    data = array.view(np.uint8).reshape(-1)
    return _T[IMAGE](header=header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
                     step=data.size // h, data=data)


def depth_image(depth_m: np.ndarray, encoding: str) -> np.ndarray:
    """float32 metres (NaN invalid) -> the array stored for ``encoding`` (16UC1 mm with 0 invalid, or 32FC1)."""
    if encoding == '32FC1':
        return depth_m.astype(np.float32)
    if encoding == '16UC1':
        mm = np.rint(np.nan_to_num(depth_m.astype(np.float64) * 1000.0, nan=0.0, posinf=0.0, neginf=0.0))
        return np.where((mm > 0) & (mm < 65535), mm, 0).astype(np.uint16)      # out of range -> 0 (invalid)
    raise ConfigError(f"depth image encoding must be 16UC1 or 32FC1, got '{encoding}'")


def camera_info_message(K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str):
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _T[CAMERA_INFO](header=header(stamp_ns, frame_id), height=height, width=width,
                           distortion_model='plumb_bob', d=np.zeros(5), k=K.reshape(9).copy(),
                           r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)


def _pose_parts(T: np.ndarray):
    q = matrix_to_quat(T[:3, :3])                                 # w, x, y, z
    return (_T['geometry_msgs/msg/Quaternion'](x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0])),
            [float(v) for v in T[:3, 3]])


def pose_stamped_message(T_world_from_cam: np.ndarray, stamp_ns: int, world_frame: str):
    q, p = _pose_parts(np.asarray(T_world_from_cam, dtype=np.float64))
    pose = _T['geometry_msgs/msg/Pose'](position=_T['geometry_msgs/msg/Point'](x=p[0], y=p[1], z=p[2]), orientation=q)
    return _T[POSE_STAMPED](header=header(stamp_ns, world_frame), pose=pose)


def tf_message(T_parent_from_child: np.ndarray, stamp_ns: int, parent: str, child: str):
    q, p = _pose_parts(np.asarray(T_parent_from_child, dtype=np.float64))
    transform = _T['geometry_msgs/msg/Transform'](translation=_T['geometry_msgs/msg/Vector3'](x=p[0], y=p[1], z=p[2]),
                                                  rotation=q)
    stamped = _T['geometry_msgs/msg/TransformStamped'](header=header(stamp_ns, parent), child_frame_id=child,
                                                       transform=transform)
    return _T[TF_MESSAGE](transforms=[stamped])


def compressed_image_message(rgb: np.ndarray, fmt: str, stamp_ns: int, frame_id: str, jpeg_quality: int = 95):
    """RGB uint8 -> sensor_msgs/CompressedImage as image_transport's ``compressed`` plugin writes it."""
    ext = {'jpeg': '.jpg', 'png': '.png'}[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg' else []
    ok, enc = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise DatasetError(f'OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} image as {fmt}')
    return _T[COMPRESSED_IMAGE](header=header(stamp_ns, frame_id), format=f'rgb8; {fmt} compressed bgr8',
                                data=enc.reshape(-1))


def compressed_depth_message(depth_m: np.ndarray, stamp_ns: int, frame_id: str):
    """float32 metres -> CompressedImage of the ``compressedDepth`` transport: 12-byte header (format 0, no
    quantisation) + 16UC1 millimetre PNG."""
    ok, enc = cv2.imencode('.png', depth_image(depth_m, '16UC1'))
    if not ok:
        raise DatasetError('OpenCV could not encode the depth image as PNG')
    data = np.frombuffer(struct.pack('<i2f', 0, 0.0, 0.0) + enc.tobytes(), dtype=np.uint8)
    return _T[COMPRESSED_IMAGE](header=header(stamp_ns, frame_id), format='16UC1; compressedDepth png', data=data)


def frame_messages(frame: Frame, depth_encoding: str = '16UC1', image_format: str = 'raw'
                   ) -> tuple[object, object, object | None]:
    """(colour image, CameraInfo, depth image or None) of a frame, as rosbags messages.

    image_format: 'raw' (Image rgb8), 'jpeg' or 'png' (CompressedImage). depth_encoding: '16UC1' / '32FC1' (Image)
    or 'compressedDepth' (CompressedImage, 16-bit PNG in millimetres).
    """
    if image_format == 'raw':
        image = image_message(frame.rgb, 'rgb8', frame.stamp_ns, frame.frame_id)
    else:
        image = compressed_image_message(frame.rgb, image_format, frame.stamp_ns, frame.frame_id)
    info = camera_info_message(frame.K, frame.width, frame.height, frame.stamp_ns, frame.frame_id)
    depth = None
    if frame.depth is not None:
        if depth_encoding == 'compressedDepth':
            depth = compressed_depth_message(frame.depth, frame.stamp_ns, frame.frame_id)
        else:
            depth = image_message(depth_image(frame.depth, depth_encoding), depth_encoding, frame.stamp_ns,
                                  frame.frame_id)
    return image, info, depth


# ----------------------------------------------------------------------------- writer


def _storage_for(path: Path, storage: str | None) -> str:
    if storage is None:
        storage = 'sqlite3' if path.suffix == '.db3' else 'mcap'
    if storage not in STORAGES:
        raise ConfigError(f"bag storage must be one of {', '.join(STORAGES)}, got '{storage}'")
    return storage


def write_bag(sequence: Sequence, path: str | Path, *, storage: str | None = None, depth_encoding: str = '16UC1',
              image_format: str = 'raw', rate_hz: float | None = None, start_ns: int | None = None, indices=None,
              with_depth: bool = True, with_ground_truth: bool = True, topics: BagTopics = BagTopics(),
              world_frame: str = WORLD_FRAME, overwrite: bool = False, version: int = 9,
              progress: bool = False) -> BagSummary:
    """Write ``sequence`` (or its ``indices``) to the bag folder ``path``.

    storage: 'mcap' (default) or 'sqlite3' (default when ``path`` ends in .db3). Stamps are the frames' own, or
    ``start_ns + k / rate_hz`` when ``rate_hz`` is given (``start_ns`` defaults to the first frame's stamp).
    image_format 'jpeg' / 'png' writes CompressedImage on ``<image topic>/compressed`` and depth_encoding
    'compressedDepth' on ``<depth topic>/compressedDepth`` (image_transport's names).
    ``overwrite`` replaces an existing bag folder (one holding metadata.yaml), never anything else.
    """
    path = Path(path)
    storage = _storage_for(path, storage)
    if depth_encoding not in DEPTH_ENCODINGS:
        raise ConfigError(f"depth_encoding must be one of {', '.join(DEPTH_ENCODINGS)}, got '{depth_encoding}'")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got '{image_format}'")
    image_topic, image_type = ((topics.image, IMAGE) if image_format == 'raw'
                               else (topics.image + '/compressed', COMPRESSED_IMAGE))
    depth_topic, depth_type = ((topics.depth + '/compressedDepth', COMPRESSED_IMAGE)
                               if depth_encoding == 'compressedDepth' else (topics.depth, IMAGE))
    if rate_hz is not None and not rate_hz > 0:
        raise ConfigError(f'rate_hz must be positive, got {rate_hz}')
    indices = list(range(len(sequence))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise DatasetError(f'nothing to write: sequence {sequence.name or type(sequence).__name__} has no frames')
    if path.exists():
        if not overwrite:
            raise DatasetError(f'{path} already exists (pass overwrite=True / --overwrite to replace it)')
        if not (path / 'metadata.yaml').is_file():
            raise DatasetError(f'{path} exists and is not a ROS 2 bag folder (no metadata.yaml): not overwriting it')
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    counts: dict[str, int] = {}
    first_ns = last_ns = None
    iterator = indices
    if progress:
        from tqdm import tqdm
        iterator = tqdm(indices, desc=f'writing {path.name}', unit='frame')
    with Writer(path, version=version, storage_plugin=STORAGES[storage]) as writer:
        connections: dict[str, object] = {}

        def write(topic: str, msgtype: str, msg, stamp_ns: int) -> None:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE,
                                                           offered_qos_profiles=[SENSOR_QOS])
            writer.write(connections[topic], stamp_ns, TYPESTORE.serialize_cdr(msg, msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        for k, index in enumerate(iterator):
            posed = sequence[index]
            frame = posed.frame
            if first_ns is None:
                original_first_ns = frame.stamp_ns
            base = original_first_ns if start_ns is None else int(start_ns)
            if rate_hz is not None:
                frame.stamp_ns = base + int(round(k * 1e9 / rate_hz))
            else:
                frame.stamp_ns = base + (frame.stamp_ns - original_first_ns)
            if first_ns is None:
                first_ns = frame.stamp_ns
            stamp = frame.stamp_ns
            if last_ns is not None and stamp < last_ns:
                raise DatasetError(f'frame {index} stamp {stamp} ns is earlier than the previous one ({last_ns} ns)')
            last_ns = stamp
            image, info, depth = frame_messages(frame, depth_encoding, image_format)
            write(image_topic, image_type, image, stamp)
            write(topics.camera_info, CAMERA_INFO, info, stamp)
            if depth is not None and with_depth:
                write(depth_topic, depth_type, depth, stamp)
            if with_ground_truth and posed.has_pose:
                write(topics.gt_pose, POSE_STAMPED, pose_stamped_message(posed.T_world_from_cam, stamp, world_frame),
                      stamp)
                write(topics.tf, TF_MESSAGE, tf_message(posed.T_world_from_cam, stamp, world_frame, frame.frame_id),
                      stamp)
    return BagSummary(path=path, storage=storage, num_frames=len(indices), start_ns=int(first_ns), end_ns=int(last_ns),
                      message_counts=counts)
