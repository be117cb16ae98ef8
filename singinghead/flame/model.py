"""The FLAME model as arrays: loaded safely from the official files (or the ICT head written in their formats)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from singinghead.flame.io import as_array, safe_load_npy_object, safe_load_pickle
from singinghead.schemas.errors import AssetError

MODEL_FILES = ("generic_model.pkl", "flame2023.pkl", "flame2020.pkl")


@dataclass(frozen=True)
class FlameModel:
    v_template: np.ndarray  # (V, 3) metres
    faces: np.ndarray  # (F, 3)
    shapedirs: np.ndarray  # (V, 3, 300 shape + 100 expression)
    posedirs: np.ndarray  # (V, 3, 36)
    J_regressor: np.ndarray  # (5, V) dense
    weights: np.ndarray  # (V, 5)
    parents: np.ndarray  # (5,) with −1 for the root
    lmk_faces_idx: np.ndarray  # (68,) full 68-point embedding
    lmk_bary_coords: np.ndarray  # (68, 3)
    dynamic_lmk_faces_idx: np.ndarray  # (79, 17) contour by yaw
    dynamic_lmk_bary_coords: np.ndarray  # (79, 17, 3)
    masks: dict[str, np.ndarray]

    @property
    def n_shape_max(self) -> int:
        return self.shapedirs.shape[2] - 100


def load_flame(folder: str | Path) -> FlameModel:
    """Read FLAME from `folder`: a generic model pickle, landmark_embedding.npy, FLAME_masks.pkl."""
    folder = Path(folder)
    model_file = next((folder / n for n in MODEL_FILES if (folder / n).is_file()), None)
    if model_file is None:
        raise AssetError(f"no FLAME model in {folder}: expected one of {', '.join(MODEL_FILES)} "
                         "(set SINGINGHEAD_FLAME_DIR; the files come from flame.is.tue.mpg.de)")
    for needed in ("landmark_embedding.npy", "FLAME_masks.pkl"):
        if not (folder / needed).is_file():
            raise AssetError(f"{folder / needed}: missing (FLAME's landmark embedding and masks sit beside the model)")
    raw = safe_load_pickle(model_file)
    emb = safe_load_npy_object(folder / "landmark_embedding.npy")
    masks = safe_load_pickle(folder / "FLAME_masks.pkl")
    kintree = np.asarray(raw["kintree_table"]).astype(np.int64)
    parents = kintree[0].copy()
    parents[0] = -1
    J_regressor = raw["J_regressor"]
    J_regressor = np.asarray(J_regressor.todense() if scipy.sparse.issparse(J_regressor) else J_regressor)
    v = as_array(raw["v_template"])
    posedirs = as_array(raw["posedirs"])
    if posedirs.ndim == 2:
        posedirs = posedirs.reshape(len(v), 3, -1)
    return FlameModel(
        v_template=v, faces=np.asarray(raw["f"]).astype(np.int64), shapedirs=as_array(raw["shapedirs"]),
        posedirs=posedirs, J_regressor=J_regressor.astype(np.float64), weights=as_array(raw["weights"]),
        parents=parents, lmk_faces_idx=np.asarray(emb["full_lmk_faces_idx"]).reshape(-1).astype(np.int64),
        lmk_bary_coords=as_array(emb["full_lmk_bary_coords"]).reshape(-1, 3),
        dynamic_lmk_faces_idx=np.asarray(emb["dynamic_lmk_faces_idx"]).astype(np.int64),
        dynamic_lmk_bary_coords=as_array(emb["dynamic_lmk_bary_coords"]),
        masks={k: np.asarray(v).astype(np.int64) for k, v in masks.items()},
    )
