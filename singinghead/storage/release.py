"""Reading, writing and verifying a release folder (layout in schemas/release.py)."""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from singinghead.schemas import release as R
from singinghead.schemas.errors import ReleaseError
from singinghead.storage import files

MANIFEST = "manifest.parquet"
ROW_GROUP = 32  # windows per Parquet row group: the reader's unit of work


def window_table(rows: list[dict]) -> pa.Table:
    """A WINDOW_SCHEMA table from per-window dicts (arrays as flat float32)."""
    columns = {}
    for f in R.WINDOW_SCHEMA:
        values = [r[f.name] for r in rows]
        if isinstance(f.type, pa.FixedSizeListType):
            flat = np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in values]) if values \
                else np.zeros(0, np.float32)
            columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), f.type.list_size)
        else:
            columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=R.WINDOW_SCHEMA)


def write_shard(release: str, rel_path: str, rows: list[dict], singing: np.ndarray, bgm: np.ndarray
                ) -> tuple[str, str]:
    """Write a Parquet shard and its audio block; returns both release-relative paths."""
    audio_rel = rel_path.removesuffix(".parquet") + ".audio.npz"
    with files.atomic_output(files.join(release, rel_path)) as tmp:
        pq.write_table(window_table(rows), tmp, row_group_size=ROW_GROUP, compression="zstd")
    with files.atomic_output(files.join(release, audio_rel)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, singing=singing.astype(np.float32), bgm=bgm.astype(np.float32),
                 window_id=np.asarray([r["window_id"] for r in rows]))  # uncompressed: read at disk speed
    return rel_path, audio_rel


def read_manifest(release: str) -> pa.Table:
    url = files.join(release, MANIFEST)
    if not files.exists(url):
        raise ReleaseError(url, f"not a release (no {MANIFEST})")
    table = pq.read_table(io.BytesIO(files.read_bytes(url)))
    if table.schema.remove_metadata() != R.MANIFEST_SCHEMA:
        raise ReleaseError(url, "manifest schema differs from this version's MANIFEST_SCHEMA")
    return table


def write_manifest(release: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["window_id"])
    table = pa.Table.from_pylist(rows, schema=R.MANIFEST_SCHEMA)
    with files.atomic_output(files.join(release, MANIFEST)) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_audio_block(release: str, rel_path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(files.read_bytes(files.join(release, rel_path)))) as z:
        return {k: z[k] for k in z.files}


def audio_rows(release: str, rel_path: str, key: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of one array of an audio block. On a local disk the array is memory-
    mapped inside the (uncompressed) NPZ, so only those rows are read; remote blocks are fetched."""
    url = files.join(release, rel_path)
    if not files.is_local(url):
        return read_audio_block(release, rel_path)[key][start:stop]
    _, path = files.url_to_fs(url)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as fh:
                return np.load(fh)[start:stop]
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # ZIP local file header: name and extra-field lengths at bytes 26–29
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            return read_audio_block(release, rel_path)[key][start:stop]
        shape, fortran, dtype = header[version](fh)
        offset = fh.tell()
    if fortran:
        raise ReleaseError(url, f"{key} is stored in Fortran order")
    block = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return np.array(block[start:stop])


def arrays(table: pa.Table, names: list[str]) -> dict[str, np.ndarray]:
    """Per-window arrays of a shard table (or row group) as numpy, shaped per WINDOW_ARRAYS."""
    out = {}
    for name in names:
        col = table.column(name).combine_chunks()
        flat = np.require(col.flatten().to_numpy(zero_copy_only=False), requirements="W")  # torch wants writable
        out[name] = flat.reshape(len(table), *R.WINDOW_ARRAYS[name])
    return out


def verify_release(release: str) -> list[str]:
    """Every file of every window: present, its size and SHA-256 as in the manifest; every shard
    with this version's schema and the windows the manifest puts in it. Returns the problems."""
    problems = []
    manifest = read_manifest(release).to_pylist()
    checked: dict[str, tuple[str, int] | None] = {}
    for row in manifest:
        for role in R.FILE_ROLES:
            rel = row[f"{role}_path"]
            if rel not in checked:
                url = files.join(release, rel)
                checked[rel] = files.sha256_file(url) if files.exists(url) else None
            got = checked[rel]
            if got is None:
                problems.append(f"{rel}: missing (window {row['window_id']})")
            elif got != (row[f"{role}_sha256"], row[f"{role}_size"]):
                problems.append(f"{rel}: checksum or size differs from the manifest (window {row['window_id']})")
    for shard in sorted({r["shard_path"] for r in manifest}):
        if checked.get(shard) is None:
            continue
        try:
            table = pq.read_table(io.BytesIO(files.read_bytes(files.join(release, shard))))
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{shard}: unreadable Parquet ({exc})")
            continue
        if table.schema.remove_metadata() != R.WINDOW_SCHEMA:
            problems.append(f"{shard}: schema differs from WINDOW_SCHEMA")
            continue
        ids = table.column("window_id").to_pylist()
        for r in manifest:
            if r["shard_path"] == shard and (r["shard_row"] >= len(ids) or ids[r["shard_row"]] != r["window_id"]):
                problems.append(f"{shard}: row {r['shard_row']} is not window {r['window_id']}")
    return sorted(set(problems))


class ShardWriter:
    """Collects one split's windows and writes a shard (Parquet + audio block) per target size."""

    def __init__(self, release: str, split: str, build: int, target_mb: float):
        self.release, self.split, self.build, self.target_mb = release, split, build, target_mb
        self.buffer: list[tuple[dict, np.ndarray, np.ndarray]] = []
        self.mb = 0.0
        self.shards = 0
        self.manifest_rows: list[dict] = []

    def add(self, row: dict, singing: np.ndarray, bgm: np.ndarray) -> None:
        self.buffer.append((row, singing, bgm))
        self.mb += (singing.nbytes + bgm.nbytes + 260_000) / 2**20  # audio + ≈ the arrays of a window
        if self.mb >= self.target_mb:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        rel = f"shards/{self.split}/windows-b{self.build:03d}-{self.shards:04d}.parquet"
        rows = [b[0] for b in self.buffer]
        shard, audio = write_shard(self.release, rel, rows, np.stack([b[1] for b in self.buffer]),
                                         np.stack([b[2] for b in self.buffer]))
        shard_sum = files.sha256_file(files.join(self.release, shard))
        audio_sum = files.sha256_file(files.join(self.release, audio))
        for i, row in enumerate(rows):
            media = row["_media"]
            self.manifest_rows.append({
                **{f.name: row[f.name] for f in R.IDENTITY_FIELDS}, "build": self.build, "shard_row": i,
                "shard_path": shard, "shard_sha256": shard_sum[0], "shard_size": shard_sum[1],
                "audio_block_path": audio, "audio_block_sha256": audio_sum[0], "audio_block_size": audio_sum[1],
                **{f"{role}_{k}": media[role][k] for role in ("video", "singing", "bgm")
                   for k in ("path", "sha256", "size")},
                "sync_status": row["sync_status"], "qa_flags": row["qa_flags"],
            })
        self.buffer, self.mb, self.shards = [], 0.0, self.shards + 1


def quality_section(manifest: list[dict]) -> str:
    """What training may want to filter: windows with QA flags, and takes whose audio offsets are
    unverified (the capture log's value, unchecked) listed by name."""
    flagged = sum(bool(r["qa_flags"]) for r in manifest)
    by_status: dict[str, set] = defaultdict(set)
    windows: dict[str, int] = defaultdict(int)
    for r in manifest:
        by_status[r["sync_status"]].add((r["session_id"], r["take_id"]))
        windows[r["sync_status"]] += 1
    takes = len({(r["session_id"], r["take_id"]) for r in manifest})
    lines = ["### Quality", "", f"- windows with QA flags: {flagged} of {len(manifest)} (`qa_flags` in the manifest)"]
    for status in R.SYNC_STATUSES:
        if by_status[status]:
            lines.append(f"- sync `{status}`: {len(by_status[status])} of {takes} takes, {windows[status]} windows")
    if by_status["unverified"]:
        names = ", ".join(f"{s}/{t}" for s, t in sorted(by_status["unverified"]))
        lines.append(f"- unverified takes (filter on `sync_status`): {names}")
    return "\n".join(lines) + "\n"


def dataset_card(manifest: list[dict], info: dict) -> str:
    hours = len(manifest) * R.WINDOW_FRAMES / 30 / 3600

    def table(title: str, key: str) -> str:
        groups: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(R.SPLITS, 0))
        for r in manifest:
            groups[r[key]][r["split"]] += 1
        lines = [f"### {title}", "", "| " + title.lower() + " | " + " | ".join(R.SPLITS) + " | hours |",
                 "|---|" + "---|" * (len(R.SPLITS) + 1)]
        for name, c in sorted(groups.items()):
            lines.append(f"| {name} | " + " | ".join(str(c[s]) for s in R.SPLITS)
                         + f" | {sum(c.values()) * 8 / 3600:.3f} |")
        return "\n".join(lines) + "\n"

    schema = "\n".join(f"| `{f.name}` | `{f.type}` | {R.WINDOW_ARRAYS.get(f.name, '')} |" for f in R.WINDOW_SCHEMA)
    return (f"# SingingHead-format release `{info.get('version')}`\n\n"
            f"{len(manifest)} windows of 8 s (240 frames at 30 fps, 16 kHz audio) = {hours:.3f} h; "
            f"splits {info['counts']} (ratios {info['ratios']}, seed {info['seed']}, by {info['split_by']}); "
            f"{len({r['subject_id'] for r in manifest})} subjects, {len({r['session_id'] for r in manifest})} "
            f"sessions; {len(info['builds'])} builds.\n\n"
            + table("Category", "song_category") + "\n" + table("Subject", "subject_id") + "\n"
            + table("Language", "song_language") + "\n" + quality_section(manifest) + "\n"
            + "## Shard schema (`shards/<split>/*.parquet`; audio in the `.audio.npz` beside each shard)\n\n"
            + "| field | type | per-window shape |\n|---|---|---|\n" + schema + "\n\n"
            + "`manifest.parquet` lists each window's split and the path, size and SHA-256 of every file it "
              "uses; `singinghead verify` re-checks them.\n")
