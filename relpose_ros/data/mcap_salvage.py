"""Recover the complete messages of a truncated MCAP file (no footer / summary, cut mid-record).

``rosbags`` refuses such files ("File end magic is invalid"). :class:`McapSalvage` scans the records from the
start (MCAP spec: magic, then ``opcode u8 | length u64 | content`` records; messages top-level or inside chunks,
chunks optionally lz4 / zstd compressed) and stops at the first incomplete record. Only what was fully written
is returned, so results built from it must be marked partial.
"""
from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

from rosbags.rosbag2.storage_mcap import DECOMPRESSORS

MAGIC = b'\x89MCAP0\r\n'
OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_FOOTER, OP_DATA_END = 0x03, 0x04, 0x05, 0x06, 0x02, 0x0F


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from('<I', buf, pos)
    return buf[pos + 4:pos + 4 + n].decode(), pos + 4 + n


class McapSalvage:
    """Linear reader of the intact prefix of an MCAP file.

    ``channels``: channel id -> (topic, schema name); ``stop_reason``: why scanning ended ('' at a clean end).
    Messages are addressed by a locator ``(chunk_offset | None, offset, length)`` for :meth:`read`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, tuple[str, str]] = {}
        self.stop_reason = ''
        with open(self.path, 'rb') as f:
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # no copy of a large file
        if self._data[:len(MAGIC)] != MAGIC:
            raise ValueError(f'{self.path} is not an MCAP file (bad magic)')
        self._chunk_cache: tuple[int, bytes] | None = None

    def _records(self, buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(opcode, content offset, content length) of every complete record in buf[start:end]."""
        pos = start
        while pos + 9 <= end:
            op, n = struct.unpack_from('<BQ', buf, pos)
            if pos + 9 + n > end:
                self.stop_reason = f'record at byte {pos} is cut off ({n} bytes announced, {end - pos - 9} present)'
                return
            yield op, pos + 9, n
            pos += 9 + n
        if pos < end:
            self.stop_reason = f'{end - pos} trailing bytes at byte {pos} do not form a record'

    def _chunk_records(self, off: int) -> tuple[bytes, int]:
        """Decompressed records of the chunk whose content starts at ``off`` (cached)."""
        if self._chunk_cache is not None and self._chunk_cache[0] == off:
            return self._chunk_cache[1], off
        d = self._data
        _start, _end, size, _crc = struct.unpack_from('<QQQI', d, off)
        compression, pos = _string(d, off + 28)
        (n,) = struct.unpack_from('<Q', d, pos)
        payload = d[pos + 8:pos + 8 + n]
        raw = payload if compression == '' else DECOMPRESSORS[compression](payload, size)
        self._chunk_cache = (off, raw)
        return raw, off

    def _handle(self, op: int, buf: bytes, off: int, n: int, chunk: int | None):
        if op == OP_SCHEMA:
            (sid,) = struct.unpack_from('<H', buf, off)
            name, _ = _string(buf, off + 2)
            self.schemas[sid] = name
        elif op == OP_CHANNEL:
            cid, sid = struct.unpack_from('<HH', buf, off)
            topic, _ = _string(buf, off + 4)
            self.channels[cid] = (topic, self.schemas.get(sid, ''))
        elif op == OP_MESSAGE:
            cid, _seq, log_time = struct.unpack_from('<HIQ', buf, off)
            return cid, log_time, (chunk, off + 22, n - 22)
        return None

    def messages(self) -> Iterator[tuple[str, str, int, tuple]]:
        """(topic, schema name, log time ns, locator) of every complete message, in file order."""
        d = self._data
        for op, off, n in self._records(d, len(MAGIC), len(d)):
            if op in (OP_FOOTER, OP_DATA_END):
                return
            if op == OP_CHUNK:
                try:
                    raw, _ = self._chunk_records(off)
                except Exception as exc:  # a damaged chunk ends the intact prefix
                    self.stop_reason = f'chunk at byte {off - 9} cannot be decoded: {exc}'
                    return
                for op2, off2, n2 in self._records(raw, 0, len(raw)):
                    hit = self._handle(op2, raw, off2, n2, off)
                    if hit:
                        topic, schema = self.channels.get(hit[0], ('', ''))
                        yield topic, schema, hit[1], hit[2]
            else:
                hit = self._handle(op, d, off, n, None)
                if hit:
                    topic, schema = self.channels.get(hit[0], ('', ''))
                    yield topic, schema, hit[1], hit[2]

    def read(self, locator: tuple) -> bytes:
        """Raw (CDR) bytes of the message at ``locator``."""
        chunk, off, n = locator
        buf = self._data if chunk is None else self._chunk_records(chunk)[0]
        return bytes(buf[off:off + n])

    def close(self) -> None:
        """Release the file mapping (the reader is unusable afterwards)."""
        self._chunk_cache = None
        if not self._data.closed:
            self._data.close()
