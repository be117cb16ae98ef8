"""Release shards as a torch IterableDataset.

The unit of work is a Parquet row group (32 windows): units are shuffled per epoch (seeded) and
dealt round-robin to (distributed rank × DataLoader worker), so every window is read exactly
once per epoch whatever the worker count. Within a worker an optional shuffle buffer mixes
windows across row groups. Audio (`audio=("singing",)`, `("singing", "bgm")` or True for both)
comes from the shard's NPZ block, memory-mapped so only the row group's rows are read; video is
decoded from the window MP4 only when asked for (`video_size`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import av
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from singinghead.schemas import release as R
from singinghead.storage import files
from singinghead.storage import release as store

DEFAULT_FIELDS = ("motion", "shape", "bgm_mfcc")


def _open(url: str):
    fs, path = files.url_to_fs(url)
    return fs.open(path, "rb")


class ReleaseWindows(IterableDataset):
    def __init__(self, release: str, split: str = "train", fields: tuple[str, ...] = DEFAULT_FIELDS,
                 audio: tuple[str, ...] | bool = (), video_size: int | None = None, shuffle: bool = False,
                 shuffle_buffer: int = 256, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        unknown = set(fields) - set(R.WINDOW_ARRAYS)
        if unknown:
            raise ValueError(f"unknown window fields {sorted(unknown)}; known: {sorted(R.WINDOW_ARRAYS)}")
        self.release, self.split, self.fields = str(release), split, tuple(fields)
        self.audio = ("singing", "bgm") if audio is True else tuple(audio or ())
        self.video_size = video_size
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        manifest = store.read_manifest(self.release).to_pylist()
        self.rows = [r for r in manifest if r["split"] == split]
        self.video_of = {r["window_id"]: r["video_path"] for r in self.rows}
        self.units: list[tuple[str, int]] = []
        for shard in sorted({r["shard_path"] for r in self.rows}):
            with _open(files.join(self.release, shard)) as fh:
                n_groups = pq.ParquetFile(fh).num_row_groups
            self.units += [(shard, g) for g in range(n_groups)]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the units for a new epoch (call before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def _my_units(self) -> list[tuple[str, int]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        units = list(self.units)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(units)
        return units[self.rank * n_workers + worker:: self.world_size * n_workers]

    def _windows(self) -> Iterator[dict]:
        columns = ["window_id", *self.fields]
        for shard, group in self._my_units():
            with _open(files.join(self.release, shard)) as fh:
                pf = pq.ParquetFile(fh)
                table = pf.read_row_group(group, columns=columns)
                first = sum(pf.metadata.row_group(g).num_rows for g in range(group))
            arrays = store.arrays(table, list(self.fields))
            ids = table.column("window_id").to_pylist()
            audio = {}
            if self.audio:
                block = shard.removesuffix(".parquet") + ".audio.npz"
                audio = {k: store.audio_rows(self.release, block, k, first, first + len(table)) for k in self.audio}
            for i, wid in enumerate(ids):
                sample = {"window_id": wid, **{k: torch.from_numpy(v[i]) for k, v in arrays.items()}}
                sample.update({k: torch.from_numpy(v[i]) for k, v in audio.items()})
                if self.video_size:
                    sample["video"] = torch.from_numpy(self.decode_video(wid))
                yield sample

    def decode_video(self, window_id: str) -> np.ndarray:
        """(240, S, S, 3) uint8 RGB frames of a window at `video_size`."""
        frames = []
        with _open(files.join(self.release, self.video_of[window_id])) as fh, av.open(fh) as c:
            for frame in c.decode(c.streams.video[0]):
                frames.append(frame.reformat(width=self.video_size, height=self.video_size, format="rgb24")
                              .to_ndarray())
        return np.stack(frames)

    def __iter__(self) -> Iterator[dict]:
        if not self.shuffle:
            yield from self._windows()
            return
        info = get_worker_info()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{info.id if info else 0}")
        buffer: list[dict] = []
        for sample in self._windows():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = rng.randrange(len(buffer))
            yield buffer[j]
            buffer[j] = sample
        rng.shuffle(buffer)
        yield from buffer
