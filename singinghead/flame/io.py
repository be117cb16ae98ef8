"""Safe loading of the official FLAME files.

FLAME's `generic_model.pkl`, `FLAME_masks.pkl` and the landmark embeddings are Python pickles,
some written under Python 2 with chumpy arrays inside. Unpickling can run arbitrary code, so
they are read with a restricted unpickler that resolves only numpy's array reconstruction,
scipy.sparse matrices and a stand-in for chumpy objects (chumpy itself is never imported).
Anything else — `os.system`, `builtins.eval`, any other class — is refused.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import copyreg
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from singinghead.schemas.errors import AssetError


class ChumpyStandIn:
    """Holds a chumpy array's state; `np.asarray` gives its value (chumpy stores it as `x`)."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})

    def __array__(self, dtype=None, copy=None):
        for key in ("x", "r", "a"):
            value = self.__dict__.get(key)
            if isinstance(value, np.ndarray | ChumpyStandIn):
                return np.asarray(value, dtype=dtype)
        raise AssetError(f"chumpy object without a value (attributes: {sorted(self.__dict__)})")


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("builtins", "object"): object,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles carry bytes (array buffers)
}
_NUMPY_RECONSTRUCT = {"numpy.core.multiarray", "numpy._core.multiarray"}
_SPARSE_MODULES = {"scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
                   "scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse._arrays"}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__) as pickle itself maps them for old protocols
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in _NUMPY_RECONSTRUCT and name in ("_reconstruct", "scalar"):
            return np._core.multiarray._reconstruct if name == "_reconstruct" else np._core.multiarray.scalar
        if module in ("numpy", "numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return np._core.numeric._frombuffer
        if module in _SPARSE_MODULES and name in ("csc_matrix", "csr_matrix", "coo_matrix"):
            return getattr(scipy.sparse, name)
        if module.startswith("chumpy"):
            return ChumpyStandIn
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: FLAME files contain only arrays")


def safe_load_pickle(path: str | Path) -> Any:
    data = Path(path).read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{path}: {exc}") from None


def safe_load_npy_object(path: str | Path) -> Any:
    """An `.npy` file holding a pickled object (FLAME's landmark_embedding.npy), read safely."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        read_header(fh)
        payload = fh.read()
    obj = RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def as_array(value: Any, dtype=np.float64) -> np.ndarray:
    if scipy.sparse.issparse(value):
        return np.asarray(value.todense(), dtype=dtype)
    return np.asarray(value, dtype=dtype)


class _Ch:
    """Written under chumpy's name (chumpy.ch.Ch) with chumpy's state layout (`x`)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __reduce__(self):
        return (copyreg._reconstructor, (type(self), object, None), {"x": self.x})


def write_flame_files(folder: str | Path, generic: dict, embedding: dict, masks: dict) -> Path:
    """Write generic_model.pkl (shapedirs as a chumpy array, protocol 2, like the official file),
    landmark_embedding.npy and FLAME_masks.pkl into `folder`, for heads the project makes."""
    import sys
    import types

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generic = dict(generic, shapedirs=_Ch(generic["shapedirs"]))
    # `_Ch` pickles as chumpy.ch.Ch without chumpy installed: a module of that name exists only
    # while the file is written, so the pickle references exactly what the official one does.
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    fake = types.ModuleType("chumpy.ch")
    fake.Ch = _Ch
    _Ch.__module__, _Ch.__qualname__, _Ch.__name__ = "chumpy.ch", "Ch", "Ch"
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), fake
    try:
        with open(folder / "generic_model.pkl", "wb") as fh:
            pickle.dump(generic, fh, protocol=2)
    finally:
        _Ch.__module__, _Ch.__qualname__, _Ch.__name__ = __name__, "_Ch", "_Ch"
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    emb = np.empty((), dtype=object)
    emb[()] = embedding
    np.save(folder / "landmark_embedding.npy", emb, allow_pickle=True)
    with open(folder / "FLAME_masks.pkl", "wb") as fh:
        pickle.dump(masks, fh, protocol=2)
    return folder
