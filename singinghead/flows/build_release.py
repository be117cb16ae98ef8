"""`build_release`: processed sessions → a versioned dataset release (layout: schemas/release.py).

Sources are processed-session folders (`OUT/sessions/<id>`, holding `processed.json`) or output
roots (every session under them). Each build only adds: windows already in the manifest are
skipped, their shards and media are never rewritten, and split assignment is a seeded hash, so
existing windows keep their split. A build stages each session's new windows (media files and
a staging table) as a Prefect task, then streams the staged windows into shards per split of the
target size, and rewrites the index files: manifest, `release.json`, the dataset card, the
statistics plots and the QA report.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from singinghead.flows.process_session import INDEX_NAME
from singinghead.flows.runtime import Listeners, prefect_api
from singinghead.schemas import release as R
from singinghead.schemas.errors import ReleaseError
from singinghead.storage import files
from singinghead.storage import release as store
from singinghead.tasks import qa, stats, windows

RELEASE_JSON = "release.json"


def find_sessions(sources: list[str]) -> list[str]:
    """`processed.json` URLs of the given session folders or output roots."""
    found = []
    for src in sources:
        direct = files.join(src, INDEX_NAME)
        if files.exists(direct):
            found.append(direct)
            continue
        fs, path = files.url_to_fs(files.join(src, "sessions"))
        hits = sorted(fs.glob(f"{path}/*/{INDEX_NAME}")) if fs.exists(path) else []
        if not hits:
            raise ReleaseError(src, f"no processed session ({INDEX_NAME}) here or under sessions/")
        found += [files.join(src, "sessions", Path(h).parent.name, INDEX_NAME) for h in hits]
    return found


def _write_wav(url: str, data: np.ndarray) -> None:
    with files.atomic_output(url) as tmp:
        sf.write(tmp, data, R.SAMPLE_RATE, subtype="FLOAT", format="WAV")


@task(name="stage-session", task_run_name="stage-{session_id}")
def stage_session(index_url: str, session_id: str, release: str, build: int, seed: int, split_by: str,
                  skip: list[str]) -> dict:
    """Media files of the session's new windows and a staging table + audio block for the shards."""
    index = files.read_json(index_url)
    rows, singing, bgm, media = [], [], [], {}
    skip_set = set(skip)
    for take_id, take in index["takes"].items():
        for seg in take["segments"]:
            for w in windows.segment_windows(index, take_id, seg, seed, split_by, skip_set):
                wid = w.row["window_id"]
                paths = {"video": f"media/{wid}.mp4", "singing": f"media/{wid}.wav", "bgm": f"media/{wid}_bgm.wav"}
                with files.atomic_output(files.join(release, paths["video"])) as tmp:
                    windows.cut_video(w.video_source, w.row["start_frame"], tmp)
                _write_wav(files.join(release, paths["singing"]), w.singing)
                _write_wav(files.join(release, paths["bgm"]), w.bgm)
                media[wid] = {role: {"path": p, **dict(zip(("sha256", "size"),
                                                             files.sha256_file(files.join(release, p)), strict=True))}
                              for role, p in paths.items()}
                rows.append(w.row)
                singing.append(w.singing)
                bgm.append(w.bgm)
    staging = f".staging/b{build:03d}-{session_id}.parquet"
    if rows:
        store.write_shard(release, staging, rows, np.stack(singing), np.stack(bgm))
    return {"staging": staging if rows else None, "media": media, "windows": len(rows)}


def _shard_windows(release: str, staged: list[dict], build: int, target_mb: float) -> list[dict]:
    """Stream the staged windows (one session's staging file at a time) into shards per split;
    returns the new manifest rows."""
    writers = {split: store.ShardWriter(release, split, build, target_mb) for split in R.SPLITS}
    for s in staged:
        if s["staging"] is None:
            continue
        table = pq.read_table(io.BytesIO(files.read_bytes(files.join(release, s["staging"]))))
        audio = store.read_audio_block(release, s["staging"].removesuffix(".parquet") + ".audio.npz")
        for i, row in enumerate(table.to_pylist()):
            row["_media"] = s["media"][row["window_id"]]
            writers[row["split"]].add(row, audio["singing"][i], audio["bgm"][i])
    for w in writers.values():
        w.flush()
    return [r for split in R.SPLITS for r in writers[split].manifest_rows]


#: A build's stages, in order; `with progress(callback):` is told (stage, done, total) as they go.
STAGES = ("sessions' windows", "shards", "manifest and card", "statistics", "QA report")
_PROGRESS = Listeners()
progress = _PROGRESS.listening
_tell = _PROGRESS.tell


@flow(name="build-release", flow_run_name="release-{version}")
def build_release(sources: list[str], out: str, version: str, seed: int = 0, split_by: str = "sequence",
                  shard_mb: float = 256.0) -> dict:
    logger = get_run_logger()
    info_url = files.join(out, RELEASE_JSON)
    info = files.read_json(info_url) if files.exists(info_url) else \
        {"seed": seed, "split_by": split_by, "ratios": list(R.SPLIT_RATIOS), "builds": []}
    if (info["seed"], info["split_by"]) != (seed, split_by):
        raise ReleaseError(info_url, f"this release splits with seed {info['seed']} by {info['split_by']}; "
                            f"a build with seed {seed} by {split_by} would move released windows")
    existing = store.read_manifest(out).to_pylist() if files.exists(files.join(out, store.MANIFEST)) else []
    known = sorted(r["window_id"] for r in existing)
    build = len(info["builds"])
    index_urls = find_sessions(sources)
    futures = {url: stage_session.submit(url, files.read_json(url)["session_id"], out, build, seed, split_by, known)
               for url in index_urls}
    _tell("sessions' windows", 0, len(index_urls))
    staged = []
    for k, url in enumerate(index_urls):
        staged.append(futures[url].result())
        _tell("sessions' windows", k + 1, len(index_urls))
    _tell("shards", 0, 1)
    new_rows = _shard_windows(out, staged, build, shard_mb)
    _tell("shards", 1, 1)
    for s in staged:
        if s["staging"]:
            for suffix in ("", ".audio.npz"):
                fs, path = files.url_to_fs(files.join(out, s["staging"].removesuffix(".parquet")
                                                      + (suffix or ".parquet")))
                fs.rm(path)
    manifest = existing + new_rows
    store.write_manifest(out, manifest)
    info["version"] = version
    if new_rows:
        info["builds"].append({"build": build, "version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "sources": index_urls, "windows_added": len(new_rows)})
    info["counts"] = {s: sum(r["split"] == s for r in manifest) for s in R.SPLITS}
    files.write_json_atomic(info_url, info)
    card = store.dataset_card(manifest, info)
    files.write_bytes_atomic(files.join(out, "dataset_card.md"), card.encode())
    _tell("manifest and card", 1, 1)
    stat = stats.release_stats(out, manifest)
    _tell("statistics", 1, 1)
    report = qa.qa_report(out, manifest)
    _tell("QA report", 1, 1)
    logger.info("release %s: %d windows (%d new), %s", version, len(manifest), len(new_rows), info["counts"])
    qa_md = "\n".join(f"- `{e['window_id']}`: {'; '.join(e['flags'])}" for e in report["entries"] if e["flags"])
    stats_md = "\n".join(f"- {k}: {v}" for k, v in stat.items() if k not in ("plots", "shares"))
    create_markdown_artifact(key="release-" + "".join(c if c.isalnum() else "-" for c in version.lower()),
                             markdown=card + f"\n## Statistics\n\n{stats_md}\n\nPlots: {', '.join(stat['plots'])}\n"
                             f"\n## QA\n\nReport: {report['html']} ({report['failing']} flagged)\n\n{qa_md}\n",
                             description=f"release {version}")
    return {"release": out, "version": version, "windows": len(manifest), "new_windows": len(new_rows),
            "counts": info["counts"], "stats": stat, "qa": report}


def run_build_release(sources: list[str], out: str | Path, version: str, seed: int = 0, split_by: str = "sequence",
                      shard_mb: float = 256.0) -> dict:
    out = str(out)
    if files.is_local(out):
        out = str(Path(out).resolve())
    with prefect_api():
        return build_release([str(s) for s in sources], out, version, seed, split_by, shard_mb)


def summary_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)
