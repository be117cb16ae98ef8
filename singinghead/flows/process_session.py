"""`process_session`: one capture session → processed artifacts, take by take, on Dask.

The flow validates the manifest, checksums raw files (stat-cached, read-only), asks the catalog
which steps of which takes still need work and submits only those as Prefect tasks to a
DaskTaskRunner (a local cluster by default, an existing scheduler with `dask_address`).
Steps per take, each take a pipeline of its own that moves on as soon as its own step is done:
ingest (probe and check the streams) → crop (portrait segments and their dense landmarks; a GPU
step) → audio (vocal removal, sync offsets, per-segment singing audio and BGM) → FLAME per-frame
fits; per subject, beside the takes, the subject's scan (light-stage photogrammetry, or the
lab's ready-made scan imported); then, joining the takes
only because the method needs all of them, the subject's shape: the monocular mean of all
takes' fits, refined by the FLAME fit to the scan when the session has a light stage (a failed
light stage leaves the monocular mean, and says so); then per take the FLAME sequences (59-d
motion per frame, a GPU step). A failed take is reported and the others finish. Re-running an
unchanged session submits no task at all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import json
import re
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import dask
import distributed
from distributed import LocalCluster
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from singinghead.flows.runtime import Listeners, local_cluster_kwargs, prefect_api, submit_gpu, task_runner
from singinghead.schemas.artifacts import IngestReport, RawFile, TakeIngest
from singinghead.schemas.errors import SingingHeadError
from singinghead.schemas.manifest import MANIFEST_NAME, load_manifest
from singinghead.schemas.motion import SHAPE_MONOCULAR, SHAPE_SCAN
from singinghead.schemas.settings import get_settings
from singinghead.storage import files
from singinghead.storage.catalog import Catalog
from singinghead.tasks import audio, crop, flame_fit, ingest, photogrammetry, scan_fit, scan_import

#: The steps a session's flow may submit, in order (per take, then per subject and per take).
STEPS = ("ingest", "crop", "audio", "flame frames", "scan", "scan fit", "flame sequence")
#: The light stage's row beside the takes' (progress, pipelines).
LIGHT_STAGE = "light stage"
#: Task time left in a take from each step on, per second of video (the sample's 4K takes here:
#: crop 2.5, audio 0.3, frame fits 1.5, sequence fit 0.8 s per second). A take's tasks reach Dask
#: with this × the video's size as their priority: of the queued tasks, the one with the most work
#: behind it runs first (critical path first), so a take's crop does not wait behind another take's
#: later steps while the light stage holds the other worker.
WORK_LEFT = {"ingest": 5.2, "crop": 5.1, "audio": 2.6, "flame frames": 2.3, "flame sequence": 0.8}


def work_left(video_bytes: int, step: str) -> int:
    """Dask priority of a take's `step` (WORK_LEFT; the video's size stands for its length)."""
    return round(WORK_LEFT[step] * video_bytes / 1e5)


def _raw_files(catalog: Catalog, root: Path, take) -> list[RawFile]:
    out = []
    for role, rel in (("video", take.video), ("mic", take.mic), ("song", take.song.file)):
        digest, size = catalog.raw_checksum(root / rel)
        out.append(RawFile(role=role, path=rel, sha256=digest, size=size))
    return out


def markdown_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return f"# {title}\n\n" + "\n".join(lines) + "\n"


def ingest_markdown(report: IngestReport) -> str:
    rows = []
    for t in report.takes:
        video = f"{t.video.width}×{t.video.height} {t.video.fps:.2f} fps {t.video.duration_s:.1f} s" if t.video else "–"
        mic = f"{t.mic.sample_rate} Hz {t.mic.duration_s:.1f} s" if t.mic else "–"
        song = f"{t.song.sample_rate} Hz {t.song.duration_s:.1f} s" if t.song else "–"
        rows.append([t.take_id, t.status, video, mic, song, "; ".join(t.problems) or "–"])
    return markdown_table(f"Ingest of session `{report.session_id}` (subject `{report.subject_id}`)",
                          ["take", "status", "video", "mic", "song", "problems"], rows)


def _failed_row(take_id: str, result: dict, width: int) -> list[str]:
    return [take_id] + ["–"] * (width - 2) + [f"{result['status']}: {result.get('problem', '')}"]


def crop_markdown(session_id: str, summaries: dict[str, dict]) -> str:
    header = ["take", "segments kept", "dropped", "seconds kept", "cuts", "warnings"]
    rows = []
    for take_id, s in summaries.items():
        if "segments_kept" not in s:
            rows.append(_failed_row(take_id, s, len(header)))
            continue
        cuts = "; ".join(f"{c['frame']}: {c['reason']}" for c in s["cuts"] if c["reason"] != "end of take")
        rows.append([take_id, str(s["segments_kept"]), str(s["segments_dropped"]), f"{s['seconds_kept']:.1f}",
                     cuts or "–", "; ".join(s["warnings"]) or "–"])
    return markdown_table(f"Portrait segments of session `{session_id}`", header, rows)


def audio_markdown(session_id: str, reports: dict[str, dict]) -> str:
    header = ["take", "dry vocal → song (s)", "video → mic (s)", "separation", "flags"]

    def show(o: dict) -> str:
        estimate = "none" if o.get("offset_s") is None else f"{o['offset_s']:.3f}"
        return (f"{o['used_s']:.3f} used ({o['status']}: estimate {estimate}, {o.get('evidence', '')}; "
                f"log {o['log_s']:.3f})")

    rows = [
        [take_id, show(r["song_offset"]), show(r["video_offset"]), r["separation"]["backend"],
         "; ".join(r["flags"]) or "–"] if "song_offset" in r else _failed_row(take_id, r, len(header))
        for take_id, r in reports.items()
    ]
    return markdown_table(f"Audio of session `{session_id}`", header, rows)


def motion_markdown(session_id: str, reports: dict[str, dict], shape_info: dict | None) -> str:
    header = ["take", "segment", "frames", "no landmarks", "outlier frames", "reprojection px (median / p95)"]
    rows = []
    for take_id, r in reports.items():
        if "segments" not in r:
            rows.append(_failed_row(take_id, r, len(header)))
            continue
        for seg in r["segments"]:
            px = seg["reprojection_px"]
            shown = f"{px['median']:.1f} / {px['p95']:.1f}" if px["median"] is not None else "–"
            outliers = ", ".join(f"{k} {v}" for k, v in seg["outlier_frames"].items() if v) or "–"
            rows.append([take_id, str(seg["segment_index"]), str(seg["frames"]), str(seg["frames_without_landmarks"]),
                         outliers, shown])
    text = markdown_table(f"FLAME motion of session `{session_id}`", header, rows)
    if shape_info:
        text += f"\nSubject shape: {shape_info['source']} (monocular mean over {shape_info['frames']} frames"
        if "scan_fit" in shape_info:
            fit = shape_info["scan_fit"]
            text += (f"; scan-to-FLAME distance median {fit['scan_to_mesh_mm']['p50']:.2f} mm, "
                     f"p95 {fit['scan_to_mesh_mm']['p95']:.2f} mm; landmark residual median "
                     f"{fit['landmark_residual_mm']['median']:.1f} mm")
        text += ").\n"
        for flag in shape_info.get("flags", []):
            text += f"\nShape flagged (every window of the subject carries it): {flag}\n"
        if "light_stage_problem" in shape_info:
            text += f"\nLight stage not used: {shape_info['light_stage_problem']}\n"
    return text


INDEX_NAME = "processed.json"


def session_index(manifest, shape_info: dict | None, crops: dict, audios: dict, audio_reports: dict,
                  motions: dict) -> dict:
    """What the release builder reads: per take the song, the offsets used and, per finished
    segment, the URLs of its portrait video, singing and BGM audio and motion table."""
    takes = {}
    for take in manifest.takes:
        if motions.get(take.id, {}).get("status") != "ok":
            continue

        def by_segment(refs, kind):
            return {r.meta["segment_index"]: r.url for r in refs if r.meta.get("kind") == kind}

        videos = by_segment(crops[take.id]["refs"], "portrait_video")
        singing, bgm = by_segment(audios[take.id]["refs"], "singing"), by_segment(audios[take.id]["refs"], "bgm")
        motion = by_segment(motions[take.id]["refs"], "motion")
        report = audio_reports[take.id]
        audio_flags = {s["segment_index"]: s["singing"]["flags"] + [f"bgm {f}" for f in s["bgm"]["flags"]]
                       for s in report["segments"]}
        takes[take.id] = {
            "song": take.song.model_dump(exclude={"file"}),
            "mic_to_song_s": report["song_offset"]["used_s"], "video_to_mic_s": report["video_offset"]["used_s"],
            "sync_status": "unverified" if "unverified" in (report["video_offset"].get("status"),
                                                            report["song_offset"].get("status")) else "measured",
            "sync_flags": report["flags"],
            "segments": [{"segment_index": i, "video": videos[i], "singing": singing[i], "bgm": bgm[i],
                          "motion": motion[i], "audio_flags": audio_flags.get(i, [])} for i in sorted(motion)],
        }
    return {"session_id": manifest.session_id, "subject": manifest.subject.model_dump(), "subject_shape": shape_info,
            "takes": takes}


def _publish_if_changed(url: str, data: bytes) -> None:
    if files.exists(url) and files.read_bytes(url) == data:
        return  # unchanged: leave the published file (and its mtime) alone
    files.write_bytes_atomic(url, data)


#: Who is told about progress: callbacks (session_id, take_id, step, state), state one of
#: "submitted", "done", "up to date", "failed". The CLI draws its progress table from them.
_PROGRESS = Listeners()
#: `with progress(callback):` tells `callback` about every step of every session processed meanwhile.
progress = _PROGRESS.listening
_tell = _PROGRESS.tell


def _step(session_id: str, take_id: str, step: str, done: Callable[[], object], submit: Callable[[], PrefectFuture],
          submitted: dict[str, list[str]], priority: int | None = None) -> Generator[PrefectFuture, object, dict]:
    """One step of one take, expressed once for all steps: its catalogued outputs when it is done
    already, else its task submitted (with its own Dask `priority` when given, else the
    pipeline's), yielded to the driver (`run_pipelines`) and awaited. A failure is recorded and
    logged, never raised: that take stops, the others go on."""
    try:
        refs = done()
        if refs is None:
            submitted[step].append(take_id)
            _tell(session_id, take_id, step, "submitted")
            with contextlib.nullcontext() if priority is None else dask.annotate(priority=priority):
                future = submit()
            refs = yield future
            if isinstance(refs, Exception):
                raise refs
            _tell(session_id, take_id, step, "done")
        else:
            _tell(session_id, take_id, step, "up to date")
        return {"status": "ok", "refs": refs}
    except Exception as exc:
        get_run_logger().error("%s: %s failed: %s", take_id, step, exc)
        _tell(session_id, take_id, step, "failed")
        return {"status": "failed", "problem": str(exc)}


def run_pipelines(pipelines: dict[str, Generator[PrefectFuture, object, object]],
                  priority: dict[str, int] | None = None) -> dict[str, object]:
    """Drive several pipelines at once. Each is a generator that yields the task future it waits
    for and is sent its result (or the exception); it moves on as soon as its own task finishes,
    whatever the others are doing. A pipeline's tasks carry its Dask `priority` (higher runs
    first when workers are busy). Returns what each pipeline returned, in the pipelines' order
    (not the order they finished in: what is computed from the results must not depend on timing)."""
    results: dict[str, object] = {}
    waiting: dict = {}  # the task runner's own future → (pipeline, Prefect future)
    priority = priority or {}

    def advance(key: str, value: object) -> None:
        try:
            with dask.annotate(priority=priority.get(key, 0)):  # whatever the pipeline submits now
                future = pipelines[key].send(value)
        except StopIteration as stop:
            results[key] = stop.value
            return
        waiting[future.wrapped_future] = (key, future)

    for key in pipelines:
        advance(key, None)
    while waiting:
        first = next(iter(waiting))
        if isinstance(first, distributed.Future):
            with first.client.as_current():
                finished, _ = distributed.wait(list(waiting), return_when="FIRST_COMPLETED")
        else:  # another task runner (threads): concurrent.futures
            finished, _ = concurrent.futures.wait(list(waiting), return_when=concurrent.futures.FIRST_COMPLETED)
        for runner_future in finished:
            key, future = waiting.pop(runner_future)
            try:
                value = future.result()
            except Exception as exc:
                value = exc
            advance(key, value)
    return {key: results[key] for key in pipelines}


def _ok(result: dict | None) -> bool:
    return result is not None and result.get("status") == "ok"


def take_pipeline(root: Path, session_id: str, take, video_bytes: int, out: str, catalog: Catalog,
                  submitted: dict[str, list[str]], crop_params: crop.CropParams, frame_steps: int
                  ) -> Generator[PrefectFuture, object, dict]:
    """ingest → crop → audio → per-frame FLAME of one take, each step as soon as this take's own
    inputs are ready (a long take never holds a short one back), with the most work left first
    (`work_left`). Returns the steps' results."""
    raw = _raw_files(catalog, root, take)
    priority = partial(work_left, video_bytes)

    def ingested():
        done = catalog.lookup(ingest.STEP, ingest.VERSION, {}, ingest.take_inputs(take, raw))
        return done.outputs[0] if done is not None else None

    ingest_step = yield from _step(session_id, take.id, "ingest", ingested,
                        lambda: ingest.ingest_take_task.submit(str(root), session_id, take, raw, out), submitted,
                        priority("ingest"))
    if not _ok(ingest_step):  # the ingest task itself broke (not a bad file: that is a report)
        raise SingingHeadError(f"take {take.id}: ingest failed: {ingest_step['problem']}")
    result = TakeIngest.model_validate(files.read_json(ingest_step["refs"].url))
    steps: dict = {"ingest": result}
    if result.status == "failed":
        steps["crop"] = {"status": "skipped", "problem": "ingest failed"}
        return steps
    sha = {f.role: f.sha256 for f in result.files}
    steps["crop"] = yield from _step(
        session_id, take.id, "crop", lambda: crop.done_outputs(out, sha["video"], crop_params),
        lambda: submit_gpu(crop.crop_take_task, str(root), session_id, take.id, take.video, sha["video"], out,
                           crop_params),
        submitted, priority("crop"))
    if not _ok(steps["crop"]):
        return steps
    crop_refs = steps["crop"]["refs"]
    steps["audio"] = yield from _step(
        session_id, take.id, "audio", lambda: audio.done_outputs(out, take, sha["song"], sha["mic"], crop_refs),
        lambda: submit_gpu(audio.audio_take_task, str(root), session_id, take, sha["song"], sha["mic"],
                           result.video.first_pts_s, crop_refs, out), submitted, priority("audio"))
    if not _ok(steps["audio"]):
        return steps
    steps["frames"] = yield from _step(  # fits the crop's landmarks; a take without usable audio is not fitted
        session_id, take.id, "flame frames", lambda: flame_fit.frames_done(out, crop_refs, frame_steps),
        lambda: submit_gpu(flame_fit.frame_fits_task, str(root), session_id, take.id, take.video, crop_refs, out,
                           frame_steps),
        submitted, priority("flame frames"))
    return steps


@flow(name="process-session", flow_run_name="process-{session_dir}", log_prints=True,
      task_runner=task_runner())  # the settings' scheduler (or a local cluster), also when served
def process_session(session_dir: str, out: str) -> dict:
    """Every take of `session_dir` through ingest, crop, audio and FLAME into `out` (path or fsspec URL)."""
    logger = get_run_logger()
    root = Path(session_dir).resolve()
    manifest = load_manifest(root)
    catalog = Catalog(out)
    manifest_sha, _ = catalog.raw_checksum(root / MANIFEST_NAME)
    submitted: dict[str, list[str]] = {s: [] for s in STEPS}

    # Every take runs its own pipeline, and the light stage its own beside them (it needs nothing
    # from the takes); the session joins only where the method needs all of them: the subject's
    # shape, below.
    pipelines = {}
    if manifest.light_stage is not None:  # first: the longest task, so Dask starts it first
        scan = scan_import if manifest.light_stage.scan else photogrammetry  # a ready-made scan, or photos
        pipelines[LIGHT_STAGE] = _step(
            manifest.session_id, LIGHT_STAGE, "scan",
            partial(scan.scan_done, str(root), manifest.light_stage, out),
            partial(submit_gpu, scan.scan_task, str(root), manifest.session_id, manifest.light_stage, out),
            submitted)
    # Most work left first, at every step (`work_left`): the session joins when its last take is
    # done, so a long take's next step goes before a short one's queued step, and a take's crop
    # before another's frame fits (critical path first); the light stage, longest of all, first.
    size = {take.id: (root / take.video).stat().st_size for take in manifest.takes}
    longest_first = sorted(manifest.takes, key=lambda take: -size[take.id])
    scan_first = {LIGHT_STAGE: max(map(partial(work_left, step="ingest"), size.values()), default=0) + 1}
    settings = get_settings()  # read here, where the flow runs: its tasks get them as arguments
    pipelines.update({take.id: take_pipeline(root, manifest.session_id, take, size[take.id], out, catalog, submitted,
                                             crop.CropParams.from_settings(), settings.flame_frame_steps)
                      for take in longest_first})
    pipelines = run_pipelines(pipelines, scan_first)
    light_stage = pipelines.pop(LIGHT_STAGE, {"status": "absent"})
    pipelines = {take.id: pipelines[take.id] for take in manifest.takes}  # reports in the manifest's order
    results: dict[str, TakeIngest] = {t: p["ingest"] for t, p in pipelines.items()}
    crops = {t: p["crop"] for t, p in pipelines.items()}
    audios = {t: p["audio"] for t, p in pipelines.items() if "audio" in p}
    fits = {t: p["frames"] for t, p in pipelines.items() if "frames" in p}
    session_url = files.join(out, "sessions", manifest.session_id)
    frame_refs = [r for f in fits.values() if f["status"] == "ok" for r in f["refs"]]
    motions: dict[str, dict] = {}
    shape_info = None
    try:
        shape, n_frames = flame_fit.subject_shape(frame_refs) if frame_refs else (None, 0)
    except ValueError as exc:  # no frame of any take had landmarks
        logger.error("session %s: no subject shape: %s", manifest.session_id, exc)
        shape = None
    if shape is not None:
        shape_info = {"subject_id": manifest.subject.id, "source": SHAPE_MONOCULAR, "frames": n_frames,
                      "shape": [float(x) for x in shape], "monocular_shape": [float(x) for x in shape]}
        if light_stage["status"] == "ok":
            fitted = run_pipelines({LIGHT_STAGE: _step(
                manifest.session_id, LIGHT_STAGE, "scan fit",
                partial(scan_fit.fit_done, out, light_stage["refs"], shape),
                partial(submit_gpu, scan_fit.fit_task, manifest.session_id, light_stage["refs"], shape_info["shape"],
                        out), submitted)})[LIGHT_STAGE]
            fit_refs = fitted.get("refs")
            if fit_refs is None:
                light_stage = {"status": "failed", "problem": f"scan fit: {fitted['problem']}"}
            if fit_refs is not None:
                fit = scan_fit.read_fit(fit_refs)
                light_stage["fit_refs"] = fit_refs
                shape_info.update(source=SHAPE_SCAN, shape=fit["shape"], scan_fit=fit["report"], scan=fit["scan"],
                                  flags=fit["flags"])
        if light_stage["status"] == "failed":
            shape_info["light_stage_problem"] = light_stage["problem"]
        _publish_if_changed(files.join(session_url, "subject_shape.json"),
                            (json.dumps(shape_info, indent=2) + "\n").encode())
        motions.update(run_pipelines({
            take_id: _step(manifest.session_id, take_id, "flame sequence",
                           partial(flame_fit.sequence_done, out, f["refs"], shape_info["shape"], shape_info["source"],
                                   settings.flame_sequence_steps),
                           partial(submit_gpu, flame_fit.sequences_task, manifest.session_id, take_id,
                                   crops[take_id]["refs"], f["refs"], shape_info["shape"], shape_info["source"], out,
                                   settings.flame_sequence_steps),
                           submitted, work_left(size[take_id], "flame sequence"))
            for take_id, f in fits.items() if f["status"] == "ok"}))
    motion_reports = {take_id: flame_fit.read_motion_summary(m["refs"]) if m["status"] == "ok" else m
                      for take_id, m in motions.items()}
    motion_reports.update({take_id: f for take_id, f in fits.items() if f["status"] != "ok"})

    audio_reports = {
        take_id: audio.read_report(a["refs"]) if a["status"] == "ok" else a for take_id, a in audios.items()
    }

    crop_summaries = {
        take_id: crop.read_summary(c["refs"]).model_dump(mode="json") if c["status"] == "ok" else c
        for take_id, c in crops.items()
    }

    report = IngestReport(
        session_id=manifest.session_id, subject_id=manifest.subject.id, manifest_sha256=manifest_sha,
        takes=[results[t.id] for t in manifest.takes],
    )
    markdown = ingest_markdown(report)
    _publish_if_changed(files.join(session_url, "ingest_report.json"),
                        (report.model_dump_json(indent=2) + "\n").encode())
    _publish_if_changed(files.join(session_url, "ingest_report.md"), markdown.encode())
    crop_md = crop_markdown(manifest.session_id, crop_summaries)
    _publish_if_changed(files.join(session_url, "crop_report.json"),
                        (json.dumps(crop_summaries, indent=2, sort_keys=True) + "\n").encode())
    _publish_if_changed(files.join(session_url, "crop_report.md"), crop_md.encode())
    _publish_if_changed(files.join(session_url, "audio_report.json"),
                        (json.dumps(audio_reports, indent=2, sort_keys=True) + "\n").encode())
    audio_md = audio_markdown(manifest.session_id, audio_reports)
    _publish_if_changed(files.join(session_url, "audio_report.md"), audio_md.encode())
    _publish_if_changed(files.join(session_url, "motion_report.json"),
                        (json.dumps(motion_reports, indent=2, sort_keys=True) + "\n").encode())
    motion_md = motion_markdown(manifest.session_id, motion_reports, shape_info)
    _publish_if_changed(files.join(session_url, "motion_report.md"), motion_md.encode())
    index = session_index(manifest, shape_info, crops, audios, audio_reports, motions)
    _publish_if_changed(files.join(session_url, INDEX_NAME), (json.dumps(index, indent=2) + "\n").encode())
    for name, text in (("ingest", markdown), ("crop", crop_md), ("audio", audio_md), ("motion", motion_md)):
        create_markdown_artifact(
            key=re.sub(r"[^a-z0-9-]", "-", f"{name}-{manifest.session_id}".lower()), markdown=text,
            description=f"{name} report of session {manifest.session_id}",
        )
    catalog.register_session(manifest.session_id, {
        "session_dir": str(root), "subject_id": manifest.subject.id, "manifest_sha256": manifest_sha,
        "takes": {t.take_id: t.status for t in report.takes},
    })
    for t in report.takes:
        if t.status == "failed":
            logger.error("take %s failed: %s", t.take_id, "; ".join(t.problems))
    return {
        "flow_run_id": str(flow_run.id),
        "session_id": manifest.session_id,
        "out": out,
        "submitted": sorted(submitted["ingest"]),
        "crop_submitted": sorted(submitted["crop"]),
        "segments": {
            take_id: [r.url for r in c["refs"] if r.meta.get("kind") == "portrait_video"]
            for take_id, c in crops.items() if c["status"] == "ok"
        },
        "crop_report": files.join(session_url, "crop_report.json"),
        "audio_submitted": sorted(submitted["audio"]),
        "audio": {
            take_id: [r.url for r in a["refs"] if r.meta.get("kind") in ("singing", "bgm")]
            for take_id, a in audios.items() if a["status"] == "ok"
        },
        "audio_report": files.join(session_url, "audio_report.json"),
        "flame_submitted": sorted(submitted["flame frames"]) + sorted(submitted["flame sequence"]),
        "motion": {
            take_id: [r.url for r in m["refs"] if r.meta.get("kind") == "motion"]
            for take_id, m in motions.items() if m["status"] == "ok"
        },
        "motion_report": files.join(session_url, "motion_report.json"),
        "subject_shape": files.join(session_url, "subject_shape.json") if shape_info else None,
        "scan_submitted": submitted["scan"] + submitted["scan fit"],
        "light_stage": {"status": light_stage["status"], "problem": light_stage.get("problem"),
                        "scan": [r.url for r in light_stage.get("refs", [])],
                        "fit": [r.url for r in light_stage.get("fit_refs", [])]},
        "index": files.join(session_url, INDEX_NAME),
        "takes": {t.take_id: t.status for t in report.takes},
        "report": files.join(session_url, "ingest_report.json"),
    }


def _resolved(out: str | Path) -> str:
    out = str(out)
    return str(Path(out).resolve()) if files.is_local(out) else out


def run_process_session(session_dir: str | Path, out: str | Path, dask_address: str | None = None) -> dict:
    with prefect_api():
        flow_ = process_session.with_options(task_runner=task_runner(dask_address))
        return flow_(str(session_dir), _resolved(out))


def run_process_sessions(session_dirs: list[str | Path], out: str | Path, dask_address: str | None = None
                         ) -> list[dict]:
    """Many sessions queued at once: one flow run per session, all started together and sharing
    one Dask cluster (an existing scheduler, or one local cluster for the batch) and one Prefect
    API, so the cluster's workers stay busy across sessions. A session whose flow fails is
    returned as {"session_dir", "status": "failed", "problem"}; the others finish."""
    out = _resolved(out)
    with prefect_api(), contextlib.ExitStack() as stack:
        address = dask_address or get_settings().dask_address
        if not address:
            address = stack.enter_context(LocalCluster(**local_cluster_kwargs())).scheduler_address

        def one(session_dir) -> dict:
            try:
                return process_session.with_options(task_runner=task_runner(address))(str(session_dir), out)
            except Exception as exc:  # a broken manifest, say: reported, the batch goes on
                return {"session_dir": str(session_dir), "status": "failed", "problem": str(exc)}

        # Each flow runs in its own thread, inside a copy of this context (Prefect's settings,
        # e.g. the API URL chosen above, live in context variables that threads do not inherit).
        with ThreadPoolExecutor(max_workers=max(1, len(session_dirs))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, s) for s in session_dirs]
            return [f.result() for f in futures]
