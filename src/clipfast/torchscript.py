"""TorchScript archives (OpenAI's ``.pt`` files) read as plain tensors, without running anything in them.

``torch.jit.load`` compiles and runs the archive's code, and a general unpickler calls whatever global the pickle
names, so neither is used. :class:`_TorchScriptUnpickler` reads ``data.pkl`` with an allow-list: the tensor rebuild
functions, the typed storages, ``collections.OrderedDict`` and TorchScript's own module records (``__torch__.*``,
kept as inert attribute dicts). Every other global (``os.system``, ``builtins.eval``, ...) is refused by name
before anything is called. Tensors are views of the archive's ``data/<key>`` records, bounds-checked.

Only the standard library, torch and clipfast.errors are imported here, so this safety-critical reader can be
reviewed on its own.

Example:
    >>> from clipfast.torchscript import is_torchscript, read_torchscript
    >>> state_dict = read_torchscript("ViT-B-32.pt") if is_torchscript("ViT-B-32.pt") else None  # doctest: +SKIP
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any, NamedTuple

import torch

from clipfast.errors import CheckpointError

# the typed storages a TorchScript pickle names, and the element type each stands for
_STORAGES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
             "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
             "BoolStorage": torch.bool}

# module nesting a checkpoint may have (OpenAI's ViTs nest 6 levels: visual.transformer.resblocks.0.attn.out_proj);
# a hostile archive nesting deeper would make the walk, and its key strings, grow without bound
MAX_DEPTH = 64
# what a malformed or hostile data.pkl can make the reader raise: each becomes one CheckpointError
_READ_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError, TypeError, IndexError,
                AttributeError, RuntimeError, MemoryError, OverflowError, RecursionError)


class _StorageType(NamedTuple):
    """What ``torch.FloatStorage`` & co. stand for in a pickle: only the element type is used."""

    dtype: torch.dtype


class _Record:
    """A TorchScript module object of ``data.pkl``: its attribute dict is kept, it has no code here."""

    type_name = ""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` with its bounds checked: a view of a storage read from the zip."""
    if not (isinstance(storage, torch.Tensor) and isinstance(offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in (*size, *stride))):
        raise CheckpointError(f"A tensor record of the archive is malformed (offset {offset!r}, size {size!r}).")
    # the last element the view reaches; an empty view reaches nothing, only its offset must lie in the storage
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if offset < 0 or last >= storage.numel():
        raise CheckpointError(f"A tensor of the archive reaches past its storage ({size!r} at offset {offset}).")
    return storage.as_strided(size, stride, offset)


def _first(value: Any, *_: Any) -> Any:
    """Helpers that wrap a value (type tags, parameter wrappers): keep the value."""
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` with an allow-list; tensors come from the archive's ``data/`` records.

    Allowed: the tensor rebuild functions, the typed storages, ``collections.OrderedDict`` and TorchScript's own
    module classes (``__torch__.*``), which become inert :class:`_Record` objects. Any other global (``os.system``,
    ``builtins.eval``, ...) raises CheckpointError naming it, before anything is called. Extension codes
    (``copyreg``) go through :meth:`find_class` too, so they meet the same list.
    """

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _first,
                ("torch.jit._pickle", "restore_type_tag"): _first,
                **{("torch.jit._pickle", f"build_{kind}list"): _first for kind in ("int", "double", "bool", "tensor")},
                ("collections", "OrderedDict"): dict}

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.source = archive, root, source
        self.storages: dict[str, torch.Tensor] = {}
        self.records: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        if module.startswith("__torch__.") or module == "__torch__":
            key = f"{module}.{name}"
            if key not in self.records:  # one inert class per TorchScript class name
                self.records[key] = type(name, (_Record,), {"type_name": name})
            return self.records[key]
        raise CheckpointError(f"{self.source!r} refers to {module}.{name} in its pickle, which is neither a tensor "
                              "nor a TorchScript module; clipfast refuses it (nothing in the file was run).")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise CheckpointError(f"{self.source!r} has an unknown persistent record {str(pid)[:80]!r}.")
        _, kind, key, _, numel = pid
        if key not in self.storages:
            name = f"{self.root}/data/{key}"
            # the record's size is checked before it is decompressed: a small zip cannot expand into a huge buffer
            nbytes = numel * kind.dtype.itemsize
            if self.archive.getinfo(name).file_size != nbytes:
                raise CheckpointError(f"Storage {key!r} of {self.source!r} holds "
                                      f"{self.archive.getinfo(name).file_size} bytes, its record says {numel} "
                                      f"elements ({nbytes} bytes).")
            raw = bytearray(self.archive.read(name))
            self.storages[key] = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
        return self.storages[key]


def is_torchscript(path: str) -> bool:
    """A zip with TorchScript's ``constants.pkl`` or ``code/`` next to ``data.pkl`` (torch.save zips have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names) or any(
        n.count("/") >= 2 and n.split("/")[1] == "code" for n in names)


def read_torchscript(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive as a state dict (module attribute paths as keys).

    Raises CheckpointError for anything but a little-endian TorchScript archive whose pickle names only tensors
    and TorchScript modules; nothing in the file is run.

    Example:
        >>> sd = read_torchscript("ViT-B-32.pt")        # doctest: +SKIP
        >>> sd["visual.conv1.weight"].shape
        torch.Size([768, 3, 32, 32])
    """
    try:
        with zipfile.ZipFile(path) as archive:
            roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.count("/") == 1
                     and n.endswith("/data.pkl")]
            if len(roots) != 1:
                raise CheckpointError(f"{path!r} is not a TorchScript archive: expected one '<name>/data.pkl'.")
            if f"{roots[0]}/byteorder" in archive.namelist() and archive.read(f"{roots[0]}/byteorder") == b"big":
                raise CheckpointError(f"{path!r} stores big-endian tensors, which clipfast does not read.")
            data = archive.read(f"{roots[0]}/data.pkl")
            root = _TorchScriptUnpickler(data, archive, roots[0], path).load()
    except _READ_ERRORS as exc:  # a corrupt or hostile pickle
        raise CheckpointError(f"{path!r} could not be read as a TorchScript archive ({type(exc).__name__}: "
                              f"{exc}).") from exc
    if not isinstance(root, _Record):
        raise CheckpointError(f"{path!r} holds a {type(root).__name__}, not a TorchScript module.")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, set(), path)
    return out


def _collect(record: _Record, path: str, out: dict[str, torch.Tensor], seen: set[int], source: str) -> None:
    """Walk the module records in attribute order: tensors become ``path + name`` entries, sub-modules are
    descended (each once), at most :data:`MAX_DEPTH` levels deep."""
    if id(record) in seen or not isinstance(record.state, dict):
        return
    if path.count(".") >= MAX_DEPTH:
        raise CheckpointError(f"{source!r} nests module records deeper than {MAX_DEPTH} levels (at "
                              f"{path[:60]!r}...); no CLIP checkpoint does, clipfast refuses it.")
    seen.add(id(record))
    for name, value in record.state.items():
        if isinstance(value, torch.Tensor):
            out[path + str(name)] = value
        elif isinstance(value, _Record):
            _collect(value, f"{path}{name}.", out, seen, source)
