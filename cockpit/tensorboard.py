"""TensorBoard event files, both ways, without TensorFlow, protobuf or torch.

The format: a file of TFRecords — ``uint64 length``, ``uint32 masked CRC32C of the length``,
``length`` bytes of payload, ``uint32 masked CRC32C of the payload`` (little-endian) — each
payload an ``Event`` protocol buffer: ``wall_time`` (1, double), ``step`` (2, int64),
``file_version`` (3, string) or ``summary`` (5): repeated ``Value`` (1) of ``tag`` (1),
``simple_value`` (2, float), ``tensor`` (8, a TensorProto) and ``metadata`` (9).

- :class:`EventWriter` writes scalars (one ``Value`` per event, as torch.utils.tensorboard
  does) and text, with real CRCs: TensorBoard itself opens the files.
- :class:`EventFileTail` reads scalars incrementally: it keeps its byte offset, reads only
  what was appended, and leaves a record that is still being written for the next call. The
  common record shapes (``simple_value`` scalars from torch.utils.tensorboard, tensorboardX,
  Lightning and the HF Trainer) go through one compiled regular expression; anything else
  (TF2 tensor scalars, several values per event) through a small protobuf decoder. It is
  ~20x faster than TensorBoard's own ``EventAccumulator`` (benchmarks/track_bench.py).
- CRC32C: google-crc32c or crc32c when installed, else a table in pure Python. The reader
  checks a record's framing always and its CRCs with ``verify=True``.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import struct
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter, sub
from pathlib import Path

# ---------------------------------------------------------------- CRC32C


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_CRC_TABLE = _table()


def crc32c_py(data: bytes) -> int:
    """CRC32C (Castagnoli) in pure Python: about 10 MB/s."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # pragma: no cover - which one is installed varies
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        return _gcrc.value(bytes(data))

    FAST_CRC = True
except ImportError:  # pragma: no cover
    try:
        import crc32c as _crcmod

        def crc32c(data: bytes) -> int:
            return _crcmod.crc32c(data)

        FAST_CRC = True
    except ImportError:
        crc32c = crc32c_py
        FAST_CRC = False


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_D = struct.Struct("<d")
_F = struct.Struct("<f")


def frame(payload: bytes) -> bytes:
    """One TFRecord around ``payload``."""
    header = _Q.pack(len(payload))
    return header + _I.pack(masked_crc(header)) + payload + _I.pack(masked_crc(payload))


# ---------------------------------------------------------------- protobuf, by hand


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, summary: bytes | None = None, **extra: bytes) -> bytes:
    out = b"\x09" + _D.pack(wall_time)
    if step:
        out += b"\x10" + _varint(step)
    if "file_version" in extra:
        out += _field(3, extra["file_version"])
    if summary is not None:
        out += _field(5, summary)
    return out


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """An Event with one ``simple_value`` (the layout torch.utils.tensorboard writes)."""
    v = _field(1, tag.encode()) + b"\x15" + _F.pack(value)
    return _event(wall_time, step, _field(1, v))


def text_event(tag: str, text: str, step: int, wall_time: float) -> bytes:
    """An Event for TensorBoard's text plugin: a DT_STRING tensor of one element."""
    shape = _field(2, b"\x08\x01")  # TensorShapeProto.dim { size: 1 }
    tensor = b"\x08\x07" + _field(2, shape) + _field(8, text.encode())  # dtype DT_STRING = 7
    metadata = _field(1, _field(1, b"text"))  # plugin_data { plugin_name: "text" }
    v = _field(1, (tag + "/text_summary").encode()) + _field(8, tensor) + _field(9, metadata)
    return _event(wall_time, step, _field(1, v))


class EventWriter:
    """Appends events to one event file in ``logdir`` (made if missing)."""

    def __init__(
        self, logdir: str | os.PathLike, *, filename: str | None = None, append: bool = False
    ):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        if filename is None:
            filename = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.cockpit"
        self.path = self.logdir / filename
        fresh = not (append and self.path.exists() and self.path.stat().st_size > 0)
        self.fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC), 0o644
        )
        self.buffer: list[bytes] = []
        self._tags: dict[str, bytes] = {}
        self._headers: dict[int, bytes] = {}
        if fresh:
            self.buffer.append(frame(_event(time.time(), 0, file_version=b"brain.Event:2")))

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """One scalar: an Event of one ``simple_value``, bytes for bytes as torch writes it."""
        head = self._tags.get(tag)
        if head is None:
            head = self._tags[tag] = _field(1, tag.encode()) + b"\x15"
        v = head + _F.pack(value)
        summary = b"\x0a" + _varint(len(v)) + v
        payload = (
            b"\x09"
            + _D.pack(time.time() if wall_time is None else wall_time)
            + (b"\x10" + _varint(step) if step else b"")
            + b"\x2a"
            + _varint(len(summary))
            + summary
        )
        n = len(payload)
        header = self._headers.get(n)
        if header is None:
            length = _Q.pack(n)
            header = self._headers[n] = length + _I.pack(masked_crc(length))
        self.buffer.append(header + payload + _I.pack(masked_crc(payload)))

    def text(self, tag: str, text: str, step: int = 0, wall_time: float | None = None) -> None:
        self.buffer.append(frame(text_event(tag, text, step, wall_time or time.time())))

    def flush(self) -> None:
        if self.buffer:
            os.write(self.fd, b"".join(self.buffer))
            self.buffer = []

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- reading

# One whole record holding one simple_value scalar, as torch.utils.tensorboard, tensorboardX,
# Lightning and the HF Trainer write it: length, its CRC, then the Event
#   09 <wall_time:8> [10 <step varint>] 2a <len> 0a <len> 0a <taglen> <tag> 15 <float:4>
# then the payload's CRC. Lengths under 128 (tags up to ~100 bytes) fit one byte; longer
# records take the general decoder.
_FAST = re.compile(
    rb"(.)\x00{7}.{4}\x09(.{8})(\x10[\x80-\xff]{0,9}[\x00-\x7f])?\x2a.\x0a.\x0a.([^\x15]*)\x15(.{4}).{4}",
    re.DOTALL,
)


@dataclass
class Scalars:
    """Scalar points in file order, as parallel columns."""

    tags: list[str] = field(default_factory=list)
    steps: array = field(default_factory=lambda: array("q"))
    wall_times: array = field(default_factory=lambda: array("d"))
    values: array = field(default_factory=lambda: array("d"))
    texts: list[tuple[str, int, float, str]] = field(default_factory=list)
    """Text summaries: (tag, step, wall time, text)."""

    def __len__(self) -> int:
        return len(self.tags)

    def extend(self, other: Scalars) -> None:
        self.tags.extend(other.tags)
        self.steps.extend(other.steps)
        self.wall_times.extend(other.wall_times)
        self.values.extend(other.values)
        self.texts.extend(other.texts)

    def by_tag(self) -> dict[str, tuple[array, array, array]]:
        """tag -> (steps, wall times, values)."""
        out: dict[str, tuple[array, array, array]] = {}
        for i, tag in enumerate(self.tags):
            cols = out.get(tag)
            if cols is None:
                cols = out[tag] = (array("q"), array("d"), array("d"))
            cols[0].append(self.steps[i])
            cols[1].append(self.wall_times[i])
            cols[2].append(self.values[i])
        return out


class EventFileError(ValueError):
    """A record that is not a TFRecord (a corrupt or foreign file); ``pos`` is its offset."""

    def __init__(self, message: str, pos: int = 0):
        super().__init__(message)
        self.pos = pos


def _read_varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message; length-delimited values are
    (start, end) pairs into ``buf``."""
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value = buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value = (pos, pos + n)
            pos += n
        elif wire == 5:
            value = buf[pos : pos + 4]
            pos += 4
        else:
            raise EventFileError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


_DT_FLOAT, _DT_DOUBLE, _DT_STRING, _DT_HALF, _DT_INT32, _DT_INT64 = 1, 2, 7, 19, 3, 9


def _tensor_value(buf, start: int, end: int) -> tuple[float | None, str | None]:
    """A scalar (or the first string) of a TensorProto."""
    dtype = 0
    content = None
    floats: list[float] = []
    strings: list[str] = []
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 0:
            dtype = value
        elif number == 4 and wire == 2:
            content = bytes(buf[value[0] : value[1]])
        elif number == 5:  # float_val (packed or not)
            if wire == 2:
                floats += array("f", bytes(buf[value[0] : value[1]]))
            else:
                floats.append(_F.unpack(value)[0])
        elif number == 6:  # double_val
            if wire == 2:
                floats += array("d", bytes(buf[value[0] : value[1]]))
            else:
                floats.append(_D.unpack(value)[0])
        elif number == 7 and wire == 2:  # int_val, packed varints
            pos, stop = value
            while pos < stop:
                v, pos = _read_varint(buf, pos)
                floats.append(float(v))
        elif number == 10 and wire == 2:  # int64_val
            pos, stop = value
            while pos < stop:
                v, pos = _read_varint(buf, pos)
                floats.append(float(v - (1 << 64) if v >= 1 << 63 else v))
        elif number == 8 and wire == 2:
            strings.append(bytes(buf[value[0] : value[1]]).decode("utf-8", "replace"))
    if dtype == _DT_STRING:
        return None, strings[0] if strings else ""
    if content:
        code = {_DT_FLOAT: "f", _DT_DOUBLE: "d", _DT_INT32: "i", _DT_INT64: "q"}.get(dtype)
        if code and len(content) >= struct.calcsize(code):
            return float(struct.unpack_from("<" + code, content)[0]), None
        if dtype == _DT_HALF and len(content) >= 2:
            return float(struct.unpack_from("<e", content)[0]), None
    return (floats[0] if floats else None), None


def _decode_event(buf, start: int, end: int, out: Scalars, tag_cache: dict) -> None:
    """The general path: any Event, its scalar and text values appended to ``out``."""
    wall = 0.0
    step = 0
    summary = None
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 1:
            wall = _D.unpack(value)[0]
        elif number == 2 and wire == 0:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 5 and wire == 2:
            summary = value
    if summary is None:
        return
    for number, wire, value in _fields(buf, summary[0], summary[1]):
        if number != 1 or wire != 2:
            continue
        tag = ""
        scalar = None
        text = None
        plugin = ""
        for vn, vw, vv in _fields(buf, value[0], value[1]):
            if vn == 1 and vw == 2:
                raw = bytes(buf[vv[0] : vv[1]])
                tag = tag_cache.get(raw) or tag_cache.setdefault(
                    raw, raw.decode("utf-8", "replace")
                )
            elif vn == 2 and vw == 5:
                scalar = _F.unpack(vv)[0]
            elif vn == 8 and vw == 2:
                scalar, text = _tensor_value(buf, vv[0], vv[1])
            elif vn == 9 and vw == 2:
                plugin = _plugin_name(buf, vv[0], vv[1])
        if text is not None or plugin == "text":
            if text is not None:
                name = tag[: -len("/text_summary")] if tag.endswith("/text_summary") else tag
                out.texts.append((name, step, wall, text))
        elif scalar is not None and plugin in ("", "scalars"):
            out.tags.append(tag)
            out.steps.append(step)
            out.wall_times.append(wall)
            out.values.append(scalar)


def _plugin_name(buf, start: int, end: int) -> str:
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 2:  # plugin_data
            for pn, pw, pv in _fields(buf, value[0], value[1]):
                if pn == 1 and pw == 2:
                    return bytes(buf[pv[0] : pv[1]]).decode("utf-8", "replace")
    return ""


def parse_records(
    buf: bytes, out: Scalars, tag_cache: dict | None = None, *, verify: bool = False
) -> int:
    """Parse the whole records at the start of ``buf`` into ``out``; returns the bytes used
    (a trailing partial record is left). Raises EventFileError on a broken record.

    Runs of fast-shape records are taken a window at a time with one ``findall`` and
    checked as a whole (each record's lengths agree with its bytes, the records tile the
    window); anything else goes record by record."""
    tag_cache = {} if tag_cache is None else tag_cache
    collecting = gc.isenabled()
    gc.disable()  # a million small tuples would set the cycle collector off again and again
    try:
        return _parse(buf, out, tag_cache, verify)
    finally:
        if collecting:
            gc.enable()


def _parse(buf, out: Scalars, tag_cache: dict, verify: bool) -> int:
    n = len(buf)
    pos = 0
    fast = _FAST.match
    while pos + 12 <= n:
        if not verify and fast(buf, pos) is not None:
            stop = min(n, pos + _WINDOW)
            used = _bulk(buf, pos, _FAST.findall(buf, pos, stop), out, tag_cache)
            if used:
                pos += used
                continue
            pos = _one_by_one(buf, pos, stop, out, tag_cache, verify)
            continue
        (length,) = _Q.unpack_from(buf, pos)
        if length > 1 << 31:
            raise EventFileError(
                f"record at byte {pos} claims {length} bytes: not an event file", pos
            )
        end = pos + 12 + length + 4
        if end > n:
            break
        if verify:
            _check(buf, pos, end, length)
        _decode_event(buf, pos + 12, pos + 12 + length, out, tag_cache)
        pos = end
    return pos


_WINDOW = 4 << 20
"""Bytes of fast-shape records taken at once (bounds the cost of a window that fails)."""
_ADD20 = bytes((i + 20) & 0xFF for i in range(256))
_g0, _g1, _g2, _g3, _g4 = (itemgetter(i) for i in range(5))


def _bulk(buf, pos: int, found: list[tuple], out: Scalars, tag_cache: dict) -> int:
    """Take ``found`` (findall from ``pos``) if it tiles the bytes from ``pos`` exactly;
    the bytes used, or 0 when it does not (then the caller goes record by record)."""
    if not found:
        return 0
    lengths = b"".join(map(_g0, found))
    tags = list(map(_g3, found))
    stepbs = list(map(_g2, found))
    try:  # every record's payload is 20 bytes + its tag + its step field
        if bytes(map(sub, lengths, map(len, tags))) != bytes(map(len, stepbs)).translate(_ADD20):
            return 0
    except ValueError:
        return 0
    total = sum(lengths) + 16 * len(found)
    last_len = lengths[-1] + 16
    last = _FAST.match(buf, pos + total - last_len)
    if last is None or last.end() != pos + total or last.groups(b"") != found[-1]:
        return 0  # a record of another shape in between: the matches do not tile
    for raw in set(tags):
        if raw not in tag_cache:
            tag_cache[raw] = raw.decode("utf-8", "replace")
    out.tags.extend(map(tag_cache.__getitem__, tags))
    out.steps.extend(_steps_of(stepbs))
    _flush_fast(out, list(map(_g1, found)), list(map(_g4, found)))
    return total


def _lanes(k: int, byte: int) -> int:
    return int.from_bytes(bytes((byte,)) * k, "little")


_LOW7 = bytes(i & 0x7F for i in range(256))


def _steps_of(stepbs: list[bytes]) -> array:
    """The steps of a run of records' step fields (b'' or 0x10 + varint), as int64.

    Where every field has the same length (steps within [0, 2**21): all but the few windows
    that cross 128, 16384 or 2**21), the varints are decoded all at once: the i-th bytes of
    all fields side by side as one big integer per byte position, bits moved between
    positions with shifts and per-byte masks, the result's bytes interleaved back."""
    k = len(stepbs)
    lens = bytes(map(len, stepbs))
    width = lens[0] if k else 0
    if k and lens.count(width) == k and width in (0, 2, 3, 4):
        if width == 0:
            return array("q", [0]) * k
        joined = b"".join(stepbs)
        if width == 2:  # one varint byte: the value itself
            return array("q", array("B", joined[1::2]))
        a = int.from_bytes(joined[1::width].translate(_LOW7), "little")
        b = int.from_bytes(
            joined[2::width].translate(_LOW7 if width == 4 else bytes(range(256))), "little"
        )
        ones, low6 = _lanes(k, 0x01), _lanes(k, 0x3F)
        if width == 3:  # a | b << 7: two output bytes
            lo = a | ((b & ones) << 7)
            hi = (b >> 1) & _lanes(k, 0x7F)
            parts = (lo, hi)
        else:  # a | b << 7 | c << 14: three output bytes
            c = int.from_bytes(joined[3::4], "little")
            lo = a | ((b & ones) << 7)
            mid = ((b >> 1) & low6) | ((c & _lanes(k, 0x03)) << 6)
            hi = (c >> 2) & _lanes(k, 0x1F)
            parts = (lo, mid, hi)
        out = bytearray(4 * k)
        for i, lane in enumerate(parts):
            out[i::4] = lane.to_bytes(k, "little")
        values = array("i")
        values.frombytes(bytes(out))
        return array("q", values)
    unique = set(stepbs)
    if len(unique) * 2 < k:
        table = {sb: _step_field(sb) for sb in unique}
        return array("q", map(table.__getitem__, stepbs))
    return array("q", map(_step_field, stepbs))


def _step_field(sb: bytes) -> int:
    """The step of an Event's step field (tag byte 0x10 then a varint; b'' for step 0)."""
    n = len(sb)
    if n == 2:
        return sb[1]
    if n == 3:
        return (sb[1] & 0x7F) | (sb[2] << 7)
    if n == 4:
        return (sb[1] & 0x7F) | ((sb[2] & 0x7F) << 7) | (sb[3] << 14)
    if n == 0:
        return 0
    value = _read_varint(sb, 1)[0]
    return value - (1 << 64) if value >= 1 << 63 else value


def _one_by_one(buf, pos: int, stop: int, out: Scalars, tag_cache: dict, verify: bool) -> int:
    """Records starting before ``stop``, one regex match (or decode) each."""
    walls: list[bytes] = []
    vals: list[bytes] = []
    try:
        return _records(buf, pos, stop, out, tag_cache, verify, walls, vals)
    finally:  # also when a broken record stops us: the columns stay aligned
        if walls:
            _flush_fast(out, walls, vals)


def _records(buf, pos, stop, out, tag_cache, verify, walls, vals) -> int:
    n = len(buf)
    fast = _FAST.match
    while pos + 12 <= n and pos < stop:
        m = fast(buf, pos)
        if m is not None:
            lo, wall, stepb, tag, val = m.groups()
            end = m.end()
            if lo[0] + 16 == end - pos:
                if verify:
                    _check(buf, pos, end, lo[0])
                walls.append(wall)
                vals.append(val)
                out.steps.append(_step_field(stepb) if stepb else 0)
                t = tag_cache.get(tag)
                if t is None:
                    t = tag_cache[tag] = tag.decode("utf-8", "replace")
                out.tags.append(t)
                pos = end
                continue
        (length,) = _Q.unpack_from(buf, pos)
        if length > 1 << 31:
            raise EventFileError(
                f"record at byte {pos} claims {length} bytes: not an event file", pos
            )
        end = pos + 12 + length + 4
        if end > n:
            break
        if verify:
            _check(buf, pos, end, length)
        if walls:  # keep file order: the fast records' columns first
            _flush_fast(out, walls, vals)
            walls.clear()
            vals.clear()
        _decode_event(buf, pos + 12, pos + 12 + length, out, tag_cache)
        pos = end
    return pos


def _flush_fast(out: Scalars, walls: list[bytes], vals: list[bytes]) -> None:
    w = array("d")
    w.frombytes(b"".join(walls))
    out.wall_times.extend(w)
    v = array("f")
    v.frombytes(b"".join(vals))
    out.values.extend(array("d", v))


def _check(buf, pos: int, end: int, length: int) -> None:
    header = bytes(buf[pos : pos + 8])
    if _I.unpack_from(buf, pos + 8)[0] != masked_crc(header):
        raise EventFileError(f"record at byte {pos}: the length's CRC does not match", pos)
    payload = bytes(buf[pos + 12 : pos + 12 + length])
    if _I.unpack_from(buf, end - 4)[0] != masked_crc(payload):
        raise EventFileError(f"record at byte {pos}: the payload's CRC does not match", pos)


class EventFileTail:
    """Incremental reader of one event file: only new bytes, only whole records."""

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        self.offset = 0
        self.verify = verify
        self.tag_cache: dict[bytes, str] = {}
        self.error: str | None = None

    def read_new(self, max_bytes: int | None = None) -> Scalars:
        out = Scalars()
        if self.error:
            return out
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                buf = f.read() if max_bytes is None else f.read(max_bytes)
        except FileNotFoundError:
            return out
        try:
            used = parse_records(buf, out, self.tag_cache, verify=self.verify)
        except EventFileError as e:  # what came before it is good; the rest waits, reported
            self.error = f"{self.path}: {e}"
            self.offset += e.pos
            return out
        except (IndexError, struct.error) as e:  # a broken protobuf inside a framed record
            self.error = f"{self.path}: a broken event near byte {self.offset}: {e}"
            return Scalars()
        self.offset += used
        return out


def read_scalars(path: str | os.PathLike, *, verify: bool = False) -> Scalars:
    """Every scalar of one event file (or of every event file under a directory)."""
    p = Path(path)
    if p.is_dir():
        out = Scalars()
        for f in event_files(p):
            out.extend(EventFileTail(f, verify=verify).read_new())
        return out
    return EventFileTail(p, verify=verify).read_new()


def is_event_file(name: str) -> bool:
    return "tfevents" in name and not name.endswith((".tmp", ".swp"))


def event_files(run_dir: Path) -> list[Path]:
    """The event files of one run directory (not its subdirectories), oldest first."""
    try:
        names = [e.name for e in os.scandir(run_dir) if e.is_file() and is_event_file(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [run_dir / n for n in sorted(names, key=_file_order)]


def _file_order(name: str) -> tuple:
    parts = name.split(".")
    try:
        stamp = int(parts[3])
    except (IndexError, ValueError):
        stamp = 0
    return (stamp, name)


def find_runs(logdir: str | os.PathLike) -> list[tuple[str, Path]]:
    """(run name, directory) for every directory under ``logdir`` holding event files, as
    TensorBoard sees runs: the name is the path relative to ``logdir`` ('.' for itself)."""
    root = Path(logdir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(is_event_file(f) for f in filenames):
            rel = os.path.relpath(dirpath, root)
            out.append((rel, Path(dirpath)))
    return out


def writer_process(path: Path) -> tuple[str, int] | None:
    """(host, pid) from an event file's name (``events.out.tfevents.TIME.HOST.PID.N``)."""
    parts = path.name.split(".")
    if len(parts) < 6 or parts[0] != "events" or parts[2] != "tfevents":
        return None
    try:
        pid = int(parts[-2]) if parts[-1] != "v2" else int(parts[-3])
    except ValueError:
        return None
    host = ".".join(parts[4:-2]) if parts[-1] != "v2" else ".".join(parts[4:-3])
    return host, pid


def iter_points(scalars: Scalars) -> Iterable[tuple[str, int, float, float]]:
    return zip(scalars.tags, scalars.steps, scalars.wall_times, scalars.values)


# ---------------------------------------------------------------- TensorBoard runs as cockpit runs

STEP_TAGS = {
    "train_loss": (
        "loss",
        "train_loss",
        "train/loss",
        "loss/train",
        "training_loss",
        "training/loss",
        "train_loss_step",
        "train/loss_step",
        "loss_step",
    ),
    "val_loss": (
        "val_loss",
        "val/loss",
        "loss/val",
        "valid_loss",
        "valid/loss",
        "validation_loss",
        "validation/loss",
        "loss/validation",
        "eval/loss",
        "eval_loss",
        "loss/eval",
    ),
    "lr": ("lr", "learning_rate", "train/learning_rate", "train/lr", "lr/train", "lr-adam"),
    "data_s": ("data_s", "data_time", "time/data", "perf/data_s"),
    "step_s": ("step_s", "step_time", "time/step", "perf/step_s"),
    "gpu_s": ("gpu_s",),
}
"""Tags read as steps.bin columns (case and '-'/'_' ignored); every other scalar becomes a
metric of evals.jsonl. ``STAGE/train_loss`` (what ``cockpit export`` writes) keeps its stage."""
_COLUMN_OF = {alias: col for col, aliases in STEP_TAGS.items() for alias in aliases}
_COLUMN_INDEX = {"train_loss": 3, "val_loss": 4, "data_s": 5, "step_s": 6, "gpu_s": 7, "lr": 8}
_SPLITS = {"train", "training", "val", "valid", "validation", "eval", "test", "loss", "lr", "time"}
DEFAULT_STAGE = "train"
_ACCURACY = {"accuracy", "val_acc", "val/acc", "val_accuracy", "val/accuracy", "eval/accuracy"}
"""Full-val accuracy under the name the runs table shows (``accuracy``)."""


def classify(tag: str) -> tuple[str, str, str]:
    """('step', stage, column) or ('metric', stage, key) for one scalar tag."""
    norm = tag.lower().replace("-", "_")
    col = _COLUMN_OF.get(norm) or _COLUMN_OF.get(norm.replace("_", "-"))
    if col is None and norm.startswith("lr_"):  # Lightning's LearningRateMonitor: lr-Adam
        col = "lr"
    if col is not None:
        return "step", DEFAULT_STAGE, col
    if norm in _ACCURACY:
        return "metric", DEFAULT_STAGE, "accuracy"
    head, _, rest = tag.partition("/")
    if rest and head.lower() not in _SPLITS:
        rnorm = rest.lower().replace("-", "_")
        if rnorm in _COLUMN_INDEX:  # cockpit export: generalize/train_loss
            return "step", head, rnorm
        if rest.startswith("eval/"):
            return "metric", head, rest[len("eval/") :]
        return "metric", head, rest
    return "metric", DEFAULT_STAGE, tag


def cache_root() -> Path:
    env = os.environ.get("COCKPIT_TB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cockpit" / "tensorboard"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


class TensorBoardDir:
    """A TensorBoard log directory, mirrored as cockpit run folders (``tb-*``) in a cache.

    ``sync()`` brings every mirror up to date (reading only what the event files gained)
    and returns {run id: mirror folder}; the app's watcher and ``cockpit ls`` call it. Each
    mirror is written by one process at a time (a lock file); a second cockpit on the same
    log directory reads the mirrors the first one keeps."""

    def __init__(self, logdir: str | os.PathLike, cache: str | os.PathLike | None = None):
        self.logdir = Path(logdir).resolve()
        if not self.logdir.is_dir():
            raise LookupError(
                f"--tensorboard {logdir}: no such directory; give a TensorBoard log directory "
                "(the one you would pass to `tensorboard --logdir`)"
            )
        import hashlib

        digest = hashlib.sha1(str(self.logdir).encode()).hexdigest()[:8]
        self.root = Path(cache or cache_root()) / f"{_slug(self.logdir.name)}-{digest}"
        self.runs: dict[str, MirroredRun] = {}
        self._found: list[tuple[str, Path]] | None = None
        self._found_at = 0.0

    RESCAN_S = 5.0
    """How often the directory tree is walked for new runs (known files are read every sync)."""

    def sync(self) -> dict[str, Path]:
        out = {}
        now = time.monotonic()
        if self._found is None or now - self._found_at > self.RESCAN_S:
            self._found, self._found_at = find_runs(self.logdir), now
        for name, path in self._found:
            label = self.logdir.name if name == "." else f"{self.logdir.name}/{name}"
            run_id = "tb-" + _slug(label.replace("/", "-"))[:80]
            mirror = self.runs.get(run_id)
            if mirror is None:
                mirror = self.runs[run_id] = MirroredRun(label, path, self.root / run_id)
            try:
                mirror.sync()
            except OSError:
                continue
            out[run_id] = mirror.folder_path
        return out

    def scan(self) -> dict[str, Path]:
        """For the app's watcher: the same as :meth:`sync`."""
        return self.sync()


class MirroredRun:
    """One TensorBoard run (a directory of event files) kept as a cockpit run folder."""

    LIVE_S = 120.0
    """A log without a known writer process counts as running this long after its last write."""

    def __init__(self, label: str, source: Path, folder_path: Path):
        self.label = label
        self.source = source
        self.folder_path = folder_path
        self.tails: dict[str, EventFileTail] = {}
        self.lock_fd: int | None = None
        self.owner = False
        self.state: dict = {}
        self.stage_names: list[str] = []
        self.summary: dict = {}
        self.row: list | None = None
        self.metrics_row: tuple | None = None
        self._steps_out = None
        self._evals_out = None
        self._classes: dict[str, tuple] = {}  # tag -> (a column?, stage, key, index, column)

    # ---- ownership -------------------------------------------------------------------
    def _take(self) -> bool:
        if self.owner:
            return True
        self.folder_path.mkdir(parents=True, exist_ok=True)
        if self.lock_fd is None:
            self.lock_fd = os.open(self.folder_path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, OSError):
            return False
        except ImportError:  # pragma: no cover - no flock: one writer assumed
            pass
        self.owner = True
        self._restore()
        return True

    def _restore(self) -> None:
        """Pick up where the last owner stopped: its offsets, its files cut to match."""
        from engine.torchfree.runfolder import RunFolder, read_json

        folder = RunFolder(self.folder_path)
        state = read_json(folder.file("tb_state.json")) or {}
        steps, evals = folder.file("steps.bin"), folder.file("evals.jsonl")
        if state.get("source") != str(self.source):
            state = {}
        for path, key in ((steps, "steps_bytes"), (evals, "evals_bytes")):
            with open(path, "ab") as f:
                f.truncate(int(state.get(key, 0)))
        for name, offset in (state.get("offsets") or {}).items():
            tail = EventFileTail(self.source / name)
            tail.offset = int(offset)
            self.tails[name] = tail
        self.stage_names = list(state.get("stage_names") or [])
        self.state = state
        self.summary = folder.summary()
        folder.write_steps_header()
        from engine.torchfree.runfolder import JsonlAppender, StepsAppender

        self._steps_out = StepsAppender(steps)
        self._evals_out = JsonlAppender(evals)

    # ---- one sync ----------------------------------------------------------------------
    def sync(self) -> None:
        if not self._take():
            return
        files = event_files(self.source)
        if self._rewritten(files):
            self._start_over()
        new_rows: list[tuple] = []
        new_evals: list[dict] = []
        texts: list[tuple] = []
        first_wall = self.state.get("first_wall")
        for path in files:
            tail = self.tails.get(path.name)
            if tail is None:
                tail = self.tails[path.name] = EventFileTail(path)
            before = tail.offset
            scalars = tail.read_new()
            if tail.offset == before:
                continue
            if first_wall is None and len(scalars.wall_times):
                first_wall = scalars.wall_times[0]
            self._fold(scalars, new_rows, new_evals)
            texts.extend(scalars.texts)
        self._close_rows(new_rows, new_evals)
        if new_rows:
            self._steps_out.append_many(new_rows)
        for row in new_evals:
            self._evals_out.append(row)
        self.state.update(
            source=str(self.source),
            offsets={name: t.offset for name, t in self.tails.items()},
            steps_bytes=os.path.getsize(self._steps_out.path),
            evals_bytes=os.path.getsize(self._evals_out.path),
            stage_names=self.stage_names,
            first_wall=first_wall,
        )
        if new_rows or new_evals or texts or not self.summary:
            from engine.torchfree.runfolder import write_json_atomic

            write_json_atomic(self.folder_path / "tb_state.json", self.state)
        self._write_meta(files, texts)

    def _rewritten(self, files: list[Path]) -> bool:
        """An event file shorter than what was read of it (rewritten, e.g. by a new export)."""
        names = {p.name for p in files}
        for name, tail in self.tails.items():
            try:
                if tail.offset > os.path.getsize(self.source / name):
                    return True
            except FileNotFoundError:
                if name not in names and tail.offset:
                    return True
        return False

    def _start_over(self) -> None:
        """Read the run again from the start: empty files, no offsets, no stages."""
        self._steps_out.close()
        self._evals_out.close()
        for name in ("steps.bin", "evals.jsonl"):
            with open(self.folder_path / name, "wb"):
                pass
        self.tails = {}
        self.stage_names = []
        self._classes = {}
        self.row = self.metrics_row = None
        self.state = {"source": str(self.source)}
        from engine.torchfree.runfolder import JsonlAppender, StepsAppender

        self._steps_out = StepsAppender(self.folder_path / "steps.bin")
        self._evals_out = JsonlAppender(self.folder_path / "evals.jsonl")

    def _fold(self, scalars: Scalars, rows: list, evals: list) -> None:
        """Points in file order to steps.bin rows (one per stage and step) and metric rows."""
        classes = self._classes
        names = self.stage_names
        row = self.row
        mrow = self.metrics_row
        nan = float("nan")
        for tag, step, wall, value in zip(
            scalars.tags, scalars.steps, scalars.wall_times, scalars.values
        ):
            known = classes.get(tag)
            if known is None:
                kind, stage, key = classify(tag)
                if stage not in names:
                    names.append(stage)
                col = _COLUMN_INDEX[key] if kind == "step" else 0
                known = classes[tag] = (kind == "step", stage, key, float(names.index(stage)), col)
            is_step, stage, key, si, col = known
            if is_step:
                if row is None or row[0] != step or row[2] != si or row[col] == row[col]:
                    if row is not None:
                        rows.append(tuple(row))
                    row = [float(step), wall, si, nan, nan, nan, nan, nan, nan]
                row[col] = value
            else:
                if mrow is None or mrow[0] != step or mrow[1] != stage or key in mrow[3]:
                    if mrow is not None:
                        evals.append(_eval_row(mrow))
                    mrow = (step, stage, wall, {})
                mrow[3][key] = value
        self.row, self.metrics_row = row, mrow

    def _close_rows(self, rows: list, evals: list) -> None:
        if self.row is not None:
            rows.append(tuple(self.row))
            self.row = None
        if self.metrics_row is not None:
            evals.append(_eval_row(self.metrics_row))
            self.metrics_row = None

    def _write_meta(self, files: list[Path], texts: list[tuple]) -> None:
        from engine.torchfree.runfolder import read_json, write_json_atomic

        folder = self.folder_path
        status, reason, proc = self._liveness(files)
        old = read_json(folder / "summary.json") or {}
        if old.get("status") == "killed":  # `cockpit kill` stopped its writer: that stays
            status, reason = "killed", old.get("reason") or "killed"
        created = self.state.get("first_wall") or (
            min((p.stat().st_mtime for p in files), default=time.time())
        )
        summary = {
            "run_id": folder.name,
            "preset": self.label,
            "status": status,
            "parent": None,
            "fork_step": None,
            "overrides": {},
            "stages": [],
            "stage_names": list(self.stage_names) or [DEFAULT_STAGE],
            "group": None,
            "created": created,
            "started": created,
            "ended": None if status == "running" else _last_write(files),
            "current_stage": (self.stage_names[-1] if self.stage_names else None)
            if status == "running"
            else None,
            "reason": reason,
            "device": None,
            "source": "tensorboard",
            "logdir": str(self.source),
        }
        if summary != self.summary:
            if not (folder / "run.json").exists():
                write_json_atomic(
                    folder / "run.json",
                    {
                        "run_id": folder.name,
                        "source": "tensorboard",
                        "logdir": str(self.source),
                        "preset_path": None,
                        "overrides": {},
                        "stages": None,
                        "created": created,
                    },
                )
            write_json_atomic(folder / "summary.json", summary)
            self.summary = summary
        if proc is not None and (read_json(folder / "proc.json") or {}) != proc:
            write_json_atomic(folder / "proc.json", proc)
        elif proc is None and (folder / "proc.json").exists():
            (folder / "proc.json").unlink()
        if texts or not (folder / "preset.yaml").exists():
            preset = [t for t in texts if t[0] == "preset"]
            lines = [f"# TensorBoard run {self.source}"]
            if preset:  # cockpit export writes it as a markdown code block (indented)
                import textwrap

                lines.append(textwrap.dedent(preset[-1][3]))
            else:
                lines += [
                    f"# {tag} (step {step}):\n# " + text.replace("\n", "\n# ")
                    for tag, step, _, text in texts[-8:]
                ]
            (folder / "preset.yaml").write_text("\n".join(lines) + "\n")

    def _liveness(self, files: list[Path]) -> tuple[str, str, dict | None]:
        """(status, reason, proc.json) from the newest file's writer process, else its age."""
        if not files:
            return "queued", "no event file yet", None
        newest = files[-1]
        who = writer_process(newest)
        if who is not None and who[0] == socket.gethostname():
            import psutil

            try:
                p = psutil.Process(who[1])
                made = p.create_time()
                stamp = float(newest.name.split(".")[3])
                # the pid of the name, started before the file, holding it open: the writer
                # (a pid of the name reused by another process is never taken for it)
                if (
                    made <= stamp + 5
                    and p.status() != psutil.STATUS_ZOMBIE
                    and _holds_open(p, newest)
                ):
                    proc = {
                        "pid": who[1],
                        "create_time": made,
                        "host": who[0],
                        "kind": "tensorboard",
                    }
                    return "running", f"written by pid {who[1]}", proc
            except psutil.NoSuchProcess:
                return "passed", f"TensorBoard log; its writer (pid {who[1]}) has exited", None
            except (psutil.Error, ValueError, IndexError):
                pass
        age = time.time() - _last_write(files)
        if age < self.LIVE_S:
            # a writer we cannot name: a record of "another host" keeps the run 'running'
            # (readers only check processes of this host) and is never signalled
            proc = {"pid": 2, "create_time": 0, "host": "(unknown writer)", "kind": "tensorboard"}
            return "running", f"TensorBoard log, written {age:.0f} s ago", proc
        return "passed", "TensorBoard log", None


def _holds_open(p, path: Path) -> bool:
    try:
        target = os.path.realpath(path)
        return any(os.path.realpath(f.path) == target for f in p.open_files())
    except Exception:  # psutil.AccessDenied and the like: not provably the writer
        return False


def _eval_row(mrow: tuple) -> dict:
    step, stage, wall, values = mrow
    row = {"step": step, "time": round(wall, 3), "stage": stage}
    for key, value in values.items():
        row[key] = value if value == value and abs(value) != float("inf") else None
    return row


def _last_write(files: list[Path]) -> float:
    times = []
    for p in files:
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=time.time())


def snapshots(logdir: str | os.PathLike) -> list:
    """RunSnapshots of a TensorBoard log directory's runs (synced first), oldest first."""
    from engine.torchfree.runfolder import RunFolder

    tb = TensorBoardDir(logdir)
    snaps = [RunFolder(path).snapshot() for path in tb.sync().values()]
    snaps.sort(key=lambda s: (s.created, s.run_id))
    return snaps
