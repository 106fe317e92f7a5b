"""Ground truth from tf: the transform ``target -> ... -> source`` composed over ``/tf`` and ``/tf_static``.

A :class:`TfTree` collects the edges of a bag (``parent -> child``, one parent per child as in tf2; frame ids
without a leading ``/``). :meth:`TfTree.lookup` walks from both frames up to their closest common ancestor and
composes ``T_target_from_source`` at each query stamp: a static edge always applies (its latest value), a
dynamic edge uses its sample nearest to the query stamp within ``max_dt`` (no interpolation, the policy of the
direct-edge reader); a query for which any dynamic edge of the chain has no such sample gets None.
A typical robot bag: ``world -> base_link`` on /tf (mocap or odometry) and ``base_link -> camera_optical`` on
/tf_static; ``lookup('world', 'camera_optical', ...)`` gives the camera's pose in the world.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError
from ..geometry import make_T, quat_to_matrix
from .tum import nearest


def frame_name(frame_id: str) -> str:
    """A tf frame id as tf2 compares it (no leading slash)."""
    return frame_id.lstrip('/')


@dataclass
class TfEdge:
    """Samples of one ``parent -> child`` edge: stamps (ns) and ``(tx, ty, tz, qw, qx, qy, qz)``."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    values: list[tuple[float, ...]] = field(default_factory=list)

    def matrices(self) -> np.ndarray:
        """(N, 4, 4) ``T_parent_from_child`` of every sample."""
        return np.stack([make_T(quat_to_matrix(v[3:]), v[:3]) for v in self.values])


class TfTree:
    """The tf edges of a bag (see the module docstring)."""

    def __init__(self) -> None:
        self.edges: dict[str, TfEdge] = {}              # child -> edge
        self.other_parents: dict[str, set[str]] = {}    # child -> parents beyond the first (a broken tree)

    def __len__(self) -> int:
        return len(self.edges)

    def add(self, stamp_ns: int, parent: str, child: str, translation, rotation, static: bool = False) -> None:
        """Add one sample of ``T_parent_from_child`` (geometry_msgs Vector3 / Quaternion-like objects)."""
        parent, child = frame_name(parent), frame_name(child)
        edge = self.edges.get(child)
        if edge is None:
            edge = self.edges[child] = TfEdge(parent, static)
        elif edge.parent != parent:
            self.other_parents.setdefault(child, set()).add(parent)
            return
        edge.static = edge.static and static            # on /tf as well: use its samples over time
        edge.stamps.append(int(stamp_ns))
        edge.values.append((translation.x, translation.y, translation.z,
                            rotation.w, rotation.x, rotation.y, rotation.z))

    def describe(self) -> str:
        """``parent -> child`` of every edge (static ones marked), sorted, for error messages."""
        return ', '.join(sorted(f'{e.parent} -> {c}' + (' (static)' if e.static else '') for c, e in
                                self.edges.items())) or '(none)'

    def ancestors(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]``."""
        out = [frame_name(frame)]
        while out[-1] in self.edges:
            parent = self.edges[out[-1]].parent
            if parent in out:
                raise DatasetError(f'tf frames form a cycle: {" -> ".join(reversed(out + [parent]))}')
            out.append(parent)
        return out

    def chain(self, target: str | None, source: str) -> tuple[str, list[str], list[str]]:
        """(target, children from source up to the common ancestor, children from target up to it).

        ``target`` None means the root of ``source``'s tree. Raises :class:`DatasetError` when the two frames are
        not connected or a frame on the way has several parents.
        """
        up_s = self.ancestors(source)
        if target is None:
            target = up_s[-1]
        up_t = self.ancestors(target)
        common = next((f for f in up_s if f in up_t), None)
        down_s = [] if common is None else up_s[:up_s.index(common)]
        down_t = [] if common is None else up_t[:up_t.index(common)]
        if not down_s and not down_t:          # not connected, or the source is not in the tree at all
            raise DatasetError(f'no transform {frame_name(target)} -> {frame_name(source)}')
        broken = {c: self.other_parents[c] | {self.edges[c].parent} for c in down_s + down_t if c in self.other_parents}
        if broken:
            raise DatasetError('several parents for ' + '; '.join(f'{c} ({", ".join(sorted(p))})'
                                                                 for c, p in sorted(broken.items())))
        return frame_name(target), down_s, down_t

    def lookup(self, target: str | None, source: str, stamps_ns, max_dt: float) -> list[np.ndarray | None]:
        """``T_target_from_source`` (4x4) at each of ``stamps_ns``, or None where a dynamic edge has no sample
        within ``max_dt`` seconds (see the module docstring)."""
        _target, down_s, down_t = self.chain(target, source)
        query = np.asarray(stamps_ns, dtype=np.float64) * 1e-9
        valid = np.ones(len(query), dtype=bool)

        def compose(children: list[str]) -> np.ndarray:
            """(Q, 4, 4) T_ancestor_from_first-child at every query."""
            T = np.broadcast_to(np.eye(4), (len(query), 4, 4)).copy()
            for child in children:
                edge = self.edges[child]
                mats = edge.matrices()
                if edge.static:
                    step = np.broadcast_to(mats[-1], T.shape)
                else:
                    idx = nearest(np.asarray(edge.stamps, dtype=np.float64) * 1e-9, query, max_dt)
                    valid[idx < 0] = False
                    step = mats[np.maximum(idx, 0)]
                T = step @ T
            return T

        T_common_from_source = compose(down_s)
        T_common_from_target = compose(down_t)
        out = np.linalg.inv(T_common_from_target) @ T_common_from_source
        return [out[k] if valid[k] else None for k in range(len(query))]
