"""Read PyTorch checkpoints without torch and without running code from the file; write torch zips.

Dimensions: E storage elements; a tensor is a strided view (offset, size, stride, all in
elements) of one 1-D storage [E].

Formats read
- zip (torch >= 1.6, `torch.save` default): one top folder `<p>/` holding `data.pkl` (pickle
  protocol 2), `data/<key>` (raw storage bytes), `byteorder` ("little" | "big"; absent = little),
  `version`. Tensors are pickled as
      torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
  and the storage is a persistent id ("storage", torch.<T>Storage, key, location, numel).
- legacy (torch < 1.6, `_use_new_zipfile_serialization=False`): consecutive pickles
      magic 0x1950a86a20f9469cfc6c, protocol 1001, sys_info {little_endian, ...}, the object,
      the sorted list of storage keys,
  then for each key: int64 element count followed by the raw storage bytes. The persistent id
  carries a sixth item, view_metadata (view_key, offset, size) or None.
- TorchScript zip (`torch.jit.save`): `<p>/data.pkl` pickles module objects of classes
  `__torch__.<...>` (NEWOBJ + BUILD with an attribute dict); tensors and storages as above.
  Each such class becomes a `TorchScriptObject` placeholder that only stores its attributes;
  `code/` is never read, let alone run.

Safety: `RestrictedUnpickler.find_class` resolves only `ALLOWED_GLOBALS` (tensor/parameter
rebuild, storage type markers, OrderedDict, harmless builtins) plus, for TorchScript, the list
builders of torch.jit._pickle and placeholder classes; anything else raises
`ForbiddenGlobalError` before it is resolved, so nothing from the file is executed.

Output conventions: every tensor becomes an owned, C-contiguous, writable NumPy array in
native little-endian order (tensors that shared a storage in torch are independent copies
here). bfloat16 storages are widened exactly to float32 (NumPy has no bfloat16).

Writer: `save_torch_zip(obj, path)` emits the zip layout of torch 2.x's torch.save (records
data.pkl, .format_version, .storage_alignment, byteorder, data/<key>, version; protocol-2 pickle
with the same persistent ids; storages aligned to 64 bytes; torch's random
.data/serialization_id is left out, so the same content gives the same bytes) for nested
dict/list/tuple of arrays and Python scalars. Views of one C-contiguous base array share one
storage, as tensors viewing one storage do in torch.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..storage.atomic import atomic_path

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
WRITER_ALIGNMENT = 64  # torch.save aligns each storage record's bytes to 64 in the zip
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # same content -> same bytes


@dataclass(frozen=True)
class StorageType:
    """Marker for a torch.<name> storage class: its element dtype as stored in the file."""

    name: str
    dtype: np.dtype  # file element type, little-endian


STORAGE_TYPES = {
    name: StorageType(name, np.dtype(code))
    for name, code in (
        ("FloatStorage", "<f4"),
        ("DoubleStorage", "<f8"),
        ("HalfStorage", "<f2"),
        ("BFloat16Storage", "<u2"),  # widened to float32 on read
        ("LongStorage", "<i8"),
        ("IntStorage", "<i4"),
        ("ShortStorage", "<i2"),
        ("CharStorage", "i1"),
        ("ByteStorage", "u1"),
        ("BoolStorage", "?"),
        ("ComplexFloatStorage", "<c8"),
        ("ComplexDoubleStorage", "<c16"),
        ("UntypedStorage", "u1"),
    )
}
STORAGE_NAME_BY_DTYPE = {  # numpy dtype -> storage class the writer uses
    st.dtype.newbyteorder("="): name
    for name, st in STORAGE_TYPES.items()
    if name not in ("BFloat16Storage", "UntypedStorage")
}

StorageProvider = Callable[[str, StorageType, int], np.ndarray]  # (key, type, numel) -> storage [E]


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class TorchFileError(ValueError):
    """The file is not a readable PyTorch checkpoint (truncated, corrupt, or unsupported)."""


class TorchScriptObject:
    """Placeholder for a pickled TorchScript object: `qualified_name` and the `attributes` dict."""

    qualified_name = ""

    def __init__(self) -> None:
        self.attributes: dict = {}

    def __setstate__(self, state: object) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"<TorchScriptObject {self.qualified_name} attrs={list(self.attributes)}>"


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact widening: a bfloat16 is the upper 16 bits of the float32 with the same value."""
    return (bits.astype(np.uint32) << 16).view(np.float32)  # [E]


def rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple, stride: tuple, requires_grad: bool = False, hooks: object = None,
    metadata: object = None,
) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 in NumPy: copy the strided view of `storage` [E] out."""
    if not isinstance(storage, np.ndarray) or len(size) != len(stride) or offset < 0 or min((*size, *stride, 0)) < 0:
        raise pickle.UnpicklingError(f"malformed tensor record (offset {offset}, size {size}, stride {stride})")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor view reaches element {last} of a storage of {storage.size}: corrupt file")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, order="C")


def rebuild_parameter(
    data: np.ndarray, requires_grad: bool = False, hooks: object = None, state: object = None
) -> np.ndarray:
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
    return data


def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes objects; only latin1 is accepted."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise ForbiddenGlobalError(f"_codecs.encode({encoding!r}) is not a bytes literal")
    return text.encode("latin1")


def restore_type_tag(value: object, type_str: str | None = None) -> object:
    """torch.jit._pickle.restore_type_tag: the value itself (the type tag only matters to TorchScript)."""
    return value


ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): tuple,
    ("_codecs", "encode"): latin1_bytes,
    **{(builtins, name): obj for builtins in ("builtins", "__builtin__")
       for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray), ("complex", complex))},
    **{("torch", name): st for name, st in STORAGE_TYPES.items()},
    ("torch.storage", "UntypedStorage"): STORAGE_TYPES["UntypedStorage"],
}
TORCHSCRIPT_GLOBALS: dict[tuple[str, str], object] = {
    ("torch.jit._pickle", name): list
    for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "build_genericlist")
} | {("torch.jit._pickle", "restore_type_tag"): restore_type_tag}
QUALIFIED_NAME = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch files: allow-listed globals only; storages come from `storages`."""

    def __init__(self, file: BinaryIO, source: Path, storages: StorageProvider, torchscript: bool = False):
        super().__init__(file)
        self.source = source
        self.storages = storages
        self.torchscript = torchscript
        self.views: dict[str, np.ndarray] = {}  # legacy view_key -> storage slice

    def find_class(self, module: str, name: str) -> object:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None and self.torchscript:
            allowed = TORCHSCRIPT_GLOBALS.get((module, name))
            if allowed is None and QUALIFIED_NAME.fullmatch(module) and IDENTIFIER.fullmatch(name):
                allowed = placeholder_class(f"{module}.{name}")
        if allowed is None:
            hint = " (a TorchScript archive: use load_torchscript)" if module.startswith("__torch__") else ""
            raise ForbiddenGlobalError(
                f"refusing to load {module}.{name} from {self.source}: only tensors and plain containers are allowed{hint}"
            )
        return allowed

    def persistent_load(self, pid: object) -> np.ndarray:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"{self.source}: unsupported persistent id {pid!r:.80} (only storages are)")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"{self.source}: malformed storage record {pid!r:.80}")
        storage = self.storages(str(key), storage_type, numel)  # [E]
        view_metadata = pid[5] if len(pid) == 6 else None
        if view_metadata is None:
            return storage
        view_key, offset, view_size = view_metadata
        return self.views.setdefault(str(view_key), storage[offset : offset + view_size])  # [view_size]


_placeholder_classes: dict[str, type] = {}


def placeholder_class(qualified_name: str) -> type:
    """A TorchScriptObject subclass named after the TorchScript class (one per name)."""
    if qualified_name not in _placeholder_classes:
        _placeholder_classes[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (TorchScriptObject,), {"qualified_name": qualified_name}
        )
    return _placeholder_classes[qualified_name]


def decode_storage(raw: bytes, storage_type: StorageType, numel: int, little_endian: bool, what: str) -> np.ndarray:
    """Raw storage bytes -> native array [E]; checks the byte count."""
    expected = numel * storage_type.dtype.itemsize
    if len(raw) != expected:
        raise TorchFileError(
            f"{what} holds {len(raw)} bytes, expected {expected} ({numel} x {storage_type.name}): truncated or corrupt file"
        )
    file_dtype = storage_type.dtype if little_endian else storage_type.dtype.newbyteorder(">")
    values = np.frombuffer(raw, dtype=file_dtype).astype(storage_type.dtype.newbyteorder("="))  # [E]
    return bfloat16_to_float32(values) if storage_type.name == "BFloat16Storage" else values


def zip_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    """The single top folder `<p>/` that holds data.pkl."""
    prefixes = [name[: -len("data.pkl")] for name in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", name)]
    if len(prefixes) != 1:
        raise TorchFileError(f"{path}: {len(prefixes)} <folder>/data.pkl records instead of 1: not a PyTorch zip checkpoint")
    return prefixes[0]


def load_zip_pickle(path: Path, torchscript: bool) -> object:
    """Unpickle `<p>/data.pkl` of a torch zip, reading storages from `<p>/data/<key>`."""
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = zip_prefix(archive, path)
            names = set(archive.namelist())
            order_record = f"{prefix}byteorder"
            byteorder = archive.read(order_record).decode() if order_record in names else "little"
            if byteorder not in ("little", "big"):
                raise TorchFileError(f"{path}: byteorder record says {byteorder!r}, expected 'little' or 'big'")
            cache: dict[str, np.ndarray] = {}

            def storages(key: str, storage_type: StorageType, numel: int) -> np.ndarray:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise TorchFileError(f"{path}: storage record {record} is missing: truncated or corrupt file")
                if key not in cache:
                    raw = archive.read(record)
                    cache[key] = decode_storage(raw, storage_type, numel, byteorder == "little", f"{path}:{record}")
                return cache[key]

            pickled = io.BytesIO(archive.read(f"{prefix}data.pkl"))
            return RestrictedUnpickler(pickled, path, storages, torchscript).load()
    except (zipfile.BadZipFile, EOFError) as err:
        raise TorchFileError(f"{path}: truncated or corrupt zip ({err}); re-download or re-save it") from None


def load_legacy(path: Path) -> object:
    """Read the pre-1.6 format: header pickles, object, key list, then counted raw storages.

    The object pickle precedes the storages it needs, so it is unpickled twice: first with zero
    stand-ins to learn each key's type and size (and where the pickle ends), then with the data.
    """
    try:
        return read_legacy(path)
    except ForbiddenGlobalError:
        raise
    except (EOFError, pickle.UnpicklingError) as err:
        reason = err or "ends inside a pickle"
        raise TorchFileError(f"{path}: legacy checkpoint is truncated or corrupt ({reason})") from None


def read_legacy(path: Path) -> object:
    """Body of load_legacy (truncation surfaces as EOFError / UnpicklingError, mapped there)."""
    with open(path, "rb") as handle:
        def header(expected: str) -> object:
            try:
                return RestrictedUnpickler(handle, path, refuse_storage).load()
            except (pickle.UnpicklingError, EOFError, ValueError, struct.error) as err:
                raise TorchFileError(
                    f"{path}: cannot read the {expected} ({err}): not a PyTorch checkpoint, or truncated"
                ) from None

        if header("magic number") != LEGACY_MAGIC or header("protocol version") != LEGACY_PROTOCOL:
            raise TorchFileError(f"{path}: not a PyTorch checkpoint (no zip signature, no legacy magic number)")
        sys_info = header("sys_info")
        little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        start = handle.tell()
        layout: dict[str, tuple[StorageType, int]] = {}

        def record_layout(key: str, storage_type: StorageType, numel: int) -> np.ndarray:
            layout[key] = (storage_type, numel)
            return np.zeros(numel, storage_type.dtype)  # [E] stand-in for the first pass

        RestrictedUnpickler(handle, path, record_layout).load()
        keys = header("storage key list")
        if not isinstance(keys, list):
            raise TorchFileError(f"{path}: the storage key list is a {type(keys).__name__}: corrupt legacy checkpoint")
        data: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in layout:
                raise TorchFileError(f"{path}: storage {key} is listed but never used: corrupt file")
            storage_type, numel = layout[key]
            count_bytes = handle.read(8)
            count = int.from_bytes(count_bytes, "little" if little_endian else "big", signed=True)
            if len(count_bytes) != 8 or count != numel:
                raise TorchFileError(f"{path}: storage {key} does not announce {numel} elements: truncated or corrupt file")
            raw = handle.read(numel * storage_type.dtype.itemsize)
            data[key] = decode_storage(raw, storage_type, numel, little_endian, f"{path} storage {key}")
        handle.seek(start)
        return RestrictedUnpickler(handle, path, lambda key, _t, _n: data[key]).load()


def refuse_storage(key: str, storage_type: StorageType, numel: int) -> np.ndarray:
    """Storage provider for the legacy header pickles, which hold no tensors."""
    raise pickle.UnpicklingError(f"unexpected storage {key} in a header pickle")


def checked_path(path: str | Path) -> Path:
    """`path` as a Path; FileNotFoundError with a one-line message if it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch file {path} not found")
    return path


def is_zip(path: Path) -> bool:
    """True if the file starts with a zip local-header signature (torch >= 1.6 and TorchScript files)."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def load_torch_file(path: str | Path) -> object:
    """torch.load without torch: nested dicts/lists/tuples with ndarrays (zip or legacy format)."""
    path = checked_path(path)
    return load_zip_pickle(path, torchscript=False) if is_zip(path) else load_legacy(path)


def load_torchscript(path: str | Path) -> TorchScriptObject:
    """The root module object of a TorchScript zip, as TorchScriptObject placeholders (code is not read)."""
    path = checked_path(path)
    if not is_zip(path):
        raise TorchFileError(f"{path}: not a zip archive, so not a TorchScript file")
    root = load_zip_pickle(path, torchscript=True)
    if not isinstance(root, TorchScriptObject):
        raise TorchFileError(f"{path}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
    return root


def collect_arrays(obj: object, prefix: str, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every ndarray below obj by dotted attribute path (dict keys, list indices, object attributes)."""
    if isinstance(obj, np.ndarray):
        out[prefix] = obj
        return out
    if isinstance(obj, TorchScriptObject):
        items = obj.attributes.items()
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return out
    for name, value in items:
        collect_arrays(value, f"{prefix}.{name}" if prefix else str(name), out)
    return out


def load_torchscript_params(path: str | Path) -> dict[str, np.ndarray]:
    """Parameters and buffers (every tensor attribute) of a TorchScript module by dotted name."""
    return collect_arrays(load_torchscript(path), "", {})


class PickleWriter:
    """Protocol-2 pickle emitter for torch.save's object subset; tensors become persistent-id storages."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.storages: dict[int, tuple[str, np.ndarray]] = {}  # id(base) -> (key, flat base [E])

    def global_ref(self, module: str, name: str) -> None:
        self.out += f"c{module}\n{name}\n".encode()

    def emit(self, obj: object) -> None:
        out = self.out
        if obj is None:
            out += b"N"
        elif obj is True or obj is False:
            out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                out += b"K" + bytes([obj])
            elif 0 <= obj < 65536:
                out += b"M" + struct.pack("<H", obj)
            elif -(2**31) <= obj < 2**31:
                out += b"J" + struct.pack("<i", obj)
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += b"\x8a" + bytes([len(raw)]) + raw
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            raw = obj.encode("utf-8", "surrogatepass")
            out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(obj, tuple):
            self.emit_marked(obj, b"t", empty=b")")
        elif isinstance(obj, list):
            self.emit_marked(obj, b"e", start=b"]")
        elif isinstance(obj, dict):
            self.emit_marked([x for item in obj.items() for x in item], b"u", start=b"}")
        elif isinstance(obj, np.ndarray):
            self.emit_tensor(obj)
        else:
            raise TypeError(
                f"save_torch_zip cannot store {type(obj).__name__}: use dict/list/tuple/ndarray/str/int/float/bool/None"
            )

    def emit_marked(self, items: list | tuple, end: bytes, start: bytes = b"", empty: bytes = b"") -> None:
        """`start`, then MARK items `end` (APPENDS/SETITEMS/TUPLE) unless empty, where `empty` is written instead."""
        self.out += start
        if not items:
            self.out += empty
            return
        self.out += b"("
        for item in items:
            self.emit(item)
        self.out += end

    def emit_tensor(self, array: np.ndarray) -> None:
        """_rebuild_tensor_v2((storage pid), offset, size, stride, False, OrderedDict())."""
        dtype = array.dtype.newbyteorder("=")
        if dtype not in STORAGE_NAME_BY_DTYPE:
            raise TypeError(f"save_torch_zip: dtype {array.dtype} has no torch storage type")
        base, offset, strides = storage_view(array)
        key, flat = self.storages.setdefault(id(base), (str(len(self.storages)), base.reshape(-1)))
        self.global_ref("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK (args) MARK (persistent id)
        self.emit("storage")
        self.global_ref("torch", STORAGE_NAME_BY_DTYPE[dtype])
        for item in (key, "cpu", flat.size):
            self.emit(item)
        self.out += b"tQ"
        for item in (offset, tuple(array.shape), strides, False):
            self.emit(item)
        self.global_ref("collections", "OrderedDict")
        self.out += b")RtR"


def storage_view(array: np.ndarray) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """(base, offset, strides in elements) with array a view of the C-contiguous base; a copy if not expressible."""
    base = array
    while isinstance(base.base, np.ndarray):
        base = base.base
    item = array.itemsize
    start = array.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    expressible = (
        base.dtype == array.dtype and base.flags.c_contiguous and array.size > 0
        and start % item == 0 and all(s >= 0 and s % item == 0 for s in array.strides)
    )
    if not expressible:
        base = array = np.array(array, order="C")
        start = 0
    return base, start // item, tuple(s // item for s in array.strides)


def aligned_info(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """ZipInfo whose data starts on a WRITER_ALIGNMENT boundary (padding in an 'FB' extra field, as torch)."""
    info = zipfile.ZipInfo(name, FIXED_ZIP_TIME)
    header_end = archive.fp.tell() + 30 + len(name.encode()) + 4
    info.extra = b"FB" + struct.pack("<H", -header_end % WRITER_ALIGNMENT) + b"Z" * (-header_end % WRITER_ALIGNMENT)
    return info


def save_torch_zip(obj: object, path: str | Path) -> None:
    """Write obj (nested dict/list/tuple of arrays and scalars) as torch.save would, atomically."""
    path = Path(path)
    writer = PickleWriter()
    writer.emit(obj)
    writer.out += b"."
    prefix = f"{path.stem or 'archive'}/"
    records = [("data.pkl", bytes(writer.out)), (".format_version", b"1"), (".storage_alignment", b"64")]
    records += [("byteorder", b"little")]
    for key, flat in writer.storages.values():
        records.append((f"data/{key}", np.ascontiguousarray(flat, flat.dtype.newbyteorder("<")).tobytes()))
    records += [("version", b"3\n")]
    with atomic_path(path) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED) as archive:
        for name, raw in records:
            archive.writestr(aligned_info(archive, prefix + name), raw)
