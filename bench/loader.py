"""Training-batch throughput: our release shards vs the public SingingHead layout (mp4 + pkl + wav).

A SingingHead-layout folder of N windows (8 s: 240 × 59 motion, 100-d shape, 16 kHz singing and
BGM, a small MP4) is generated, imported into a release with `import-singinghead`, and both are
read through a torch DataLoader (same batch size, same workers, same warm-up) into the batches
UniSinger trains on: motion, shape, the raw singing audio (wav2vec 2.0 input) and the BGM's 64-d
MFCC per frame.

Fair to the layout: its BGM MFCCs are computed once and cached beside it (`bgm_mfcc/<name>.npy`),
as our import precomputes them into the shards; neither side reads BGM audio per window. The
layout's loader then unpickles the motion, reads the singing WAV and loads the cached MFCC per
window; ours reads shard row groups and one audio block per shard. `speedup` compares the
loaders alone; `speedup_including_import` adds each side's one-off preparation (our import;
the layout's MFCC cache) to the time of the epochs timed here (`epochs_timed`), so it says what
a run of that many epochs costs end to end. Last line: one JSON object, also in
bench/results/loader.json.
"""

from __future__ import annotations

import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from results_io import publish  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from singinghead.features.audio import bgm_mfcc_per_frame  # noqa: E402
from singinghead.samples.layout import write_singinghead_layout  # noqa: E402
from singinghead.schemas import release as R  # noqa: E402
from singinghead.tasks.interop import import_singinghead  # noqa: E402
from singinghead.trainer.data import ReleaseWindows  # noqa: E402

WINDOWS = 256
BATCH = 16
WORKERS = 2


def cache_layout_mfcc(folder: Path) -> None:
    """The layout's one-off preparation: every window's BGM MFCC, saved once as .npy."""
    (folder / "bgm_mfcc").mkdir(exist_ok=True)
    for name in (folder / "train.txt").read_text().split():
        bgm, _ = sf.read(folder / "bgm_seqs" / f"{name}_bgm.wav", dtype="float32")
        np.save(folder / "bgm_mfcc" / f"{name}.npy", bgm_mfcc_per_frame(bgm, R.WINDOW_FRAMES))


class LayoutWindows(Dataset):
    """What a trainer on the SingingHead layout does per window (BGM MFCCs cached)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names = (folder / "train.txt").read_text().split()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        with open(self.folder / "flame_seqs" / f"{name}.pkl", "rb") as fh:
            d = pickle.load(fh)
        singing, _ = sf.read(self.folder / "audio_seqs" / f"{name}.wav", dtype="float32")
        return {"window_id": name, "motion": torch.from_numpy(d["flame"]), "shape": torch.from_numpy(d["shape"]),
                "bgm_mfcc": torch.from_numpy(np.load(self.folder / "bgm_mfcc" / f"{name}.npy")),
                "singing": torch.from_numpy(singing)}


EPOCHS = 2


def throughput(dataset, shuffle: bool | None, epochs: int = EPOCHS) -> float:
    kwargs = {"shuffle": shuffle} if shuffle is not None else {}
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True, **kwargs)
    for _ in range(1):  # warm-up: start the workers, fill the page cache
        for _batch in loader:
            pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for batch in loader:
            assert batch["motion"].shape[1:] == (240, 59) and batch["bgm_mfcc"].shape[1:] == (240, 64)
            n += len(batch["window_id"])
    return n / (time.perf_counter() - t0)


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        layout, release = Path(tmp) / "layout", Path(tmp) / "release"
        write_singinghead_layout(layout, WINDOWS, subjects=8)
        t0 = time.perf_counter()
        imported = import_singinghead(layout, str(release), "bench")
        import_s = time.perf_counter() - t0
        assert imported["windows"] == WINDOWS, imported
        t0 = time.perf_counter()
        cache_layout_mfcc(layout)
        cache_s = time.perf_counter() - t0
        ours = throughput(ReleaseWindows(str(release), "train", audio=("singing",), shuffle=True), None)
        theirs = throughput(LayoutWindows(layout), True)
        shard_mb = sum(p.stat().st_size for p in (release / "shards").rglob("*")) / 2**20
    read = EPOCHS * WINDOWS
    return {
        "name": "loader",
        "windows": WINDOWS, "batch_size": BATCH, "workers": WORKERS, "epochs_timed": EPOCHS,
        "batch_fields": ["motion", "shape", "singing (16 kHz)", "bgm_mfcc"],
        "reference": "SingingHead layout, BGM MFCCs cached once as .npy (as our import precomputes them)",
        "ours_windows_per_s": ours,
        "singinghead_layout_windows_per_s": theirs,
        "speedup": ours / theirs,
        "import_s": import_s, "layout_mfcc_cache_s": cache_s,
        "speedup_including_import": (cache_s + read / theirs) / (import_s + read / ours),
        "import_windows_per_s": WINDOWS / import_s,
        "shards_mb": shard_mb,
        "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024,
    }


if __name__ == "__main__":
    publish(main())
