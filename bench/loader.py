"""Training-batch throughput: our release shards vs the public SingingHead layout (mp4 + pkl + wav).

A SingingHead-layout folder of N windows (8 s: 240 × 59 motion, 100-d shape, 16 kHz singing and
BGM, a small MP4) is generated, imported into a release with `import-singinghead`, and both are
read through a torch DataLoader (same batch size, same workers) into the batches UniSinger
trains on: motion, shape, the raw singing audio (wav2vec 2.0 input) and the BGM's 64-d MFCC per
frame. From the layout, a loader has to unpickle, read two WAVs and compute the MFCC per window;
from our shards it reads row groups and one audio block per shard. Last line: one JSON object,
also in bench/results/loader.json (target: `speedup` ≥ 10).
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


class LayoutWindows(Dataset):
    """What a trainer on the SingingHead layout does per window."""

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
        bgm, _ = sf.read(self.folder / "bgm_seqs" / f"{name}_bgm.wav", dtype="float32")
        return {"window_id": name, "motion": torch.from_numpy(d["flame"]), "shape": torch.from_numpy(d["shape"]),
                "bgm_mfcc": torch.from_numpy(bgm_mfcc_per_frame(bgm, R.WINDOW_FRAMES)),
                "singing": torch.from_numpy(singing)}


def throughput(dataset, shuffle: bool | None, epochs: int = 2) -> float:
    kwargs = {"shuffle": shuffle} if shuffle is not None else {}
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True, **kwargs)
    seen = 0
    for _ in range(1):  # warm-up: start the workers, fill the page cache
        for batch in loader:
            seen += len(batch["window_id"])
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
        ours = throughput(ReleaseWindows(str(release), "train", audio=("singing",), shuffle=True), None)
        theirs = throughput(LayoutWindows(layout), True)
        shard_mb = sum(p.stat().st_size for p in (release / "shards").rglob("*")) / 2**20
    return {
        "name": "loader",
        "windows": WINDOWS, "batch_size": BATCH, "workers": WORKERS,
        "batch_fields": ["motion", "shape", "singing (16 kHz)", "bgm_mfcc"],
        "ours_windows_per_s": ours,
        "singinghead_layout_windows_per_s": theirs,
        "speedup": ours / theirs,
        "import_windows_per_s": WINDOWS / import_s,
        "shards_mb": shard_mb,
        "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024,
        "target": {"speedup": 10},
    }


if __name__ == "__main__":
    publish(main())
