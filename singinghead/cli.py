"""`singinghead …`: build the sample session, process sessions, run the demo."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from singinghead.schemas.errors import SingingHeadError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Prefect's and COLMAP's own logs on the console")
             ) -> None:
    """Process capture sessions, build releases, train and evaluate UniSinger."""
    if verbose:  # (read by Prefect when it is first imported, and by the photogrammetry step)
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
        os.environ["SINGINGHEAD_COLMAP_VERBOSE"] = "true"


class StepBoard:
    """A live table while sessions are processed: a row per session and take (and light stage),
    a column per step; fed by process_session's progress callbacks (thread-safe)."""

    MARKS = {"submitted": "[yellow]…[/]", "done": "[green]✓[/]", "up to date": "[blue]=[/]", "failed": "[red]✗[/]"}
    HEADERS = {"flame frames": "frames", "flame sequence": "motion"}

    def __init__(self, steps: tuple[str, ...]):
        self.steps, self.rows, self._lock, self.live = steps, {}, threading.Lock(), None

    def table(self) -> Table:
        table = Table(title="processing on the Dask cluster (details: Prefect UI)",
                      caption="… running  ✓ done  = up to date  ✗ failed  · not yet")
        table.add_column("session / take", no_wrap=True)
        for step in self.steps:
            table.add_column(self.HEADERS.get(step, step))
        for (session_id, take_id), states in self.rows.items():
            table.add_row(f"{session_id} / {take_id}", *(self.MARKS.get(states.get(s), "·") for s in self.steps))
        return table

    def __call__(self, session_id: str, take_id: str, step: str, state: str) -> None:
        with self._lock:
            self.rows.setdefault((session_id, take_id), {})[step] = state
            if self.live is not None:
                self.live.update(self.table())


@contextlib.contextmanager
def step_board():
    """Show a StepBoard while the block processes sessions."""
    from rich.live import Live

    from singinghead.flows.process_session import STEPS, progress

    board = StepBoard(STEPS)
    with Live(board.table(), console=console, refresh_per_second=2) as live, progress(board):
        board.live = live
        yield board
    console.print()


@contextlib.contextmanager
def release_stages():
    """A progress bar per stage of a release build, ticked by the flow's progress callbacks."""
    from singinghead.flows.build_release import STAGES, progress

    with _progress() as bars:
        jobs = {stage: bars.add_task(stage, total=None) for stage in STAGES}

        def tell(stage: str, done: int, total: int) -> None:
            bars.update(jobs[stage], completed=done, total=total)

        with progress(tell):
            yield


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=console)


@app.command("sample-session")
def sample_session(
    out: Path = typer.Argument(..., help="Folder to write the session into"),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same session"),
    seconds: float = typer.Option(20.0, help="Length of each take"),
    scan: Path = typer.Option(None, help="A real textured scan (OBJ with texture) for the light stage to "
                                         "photograph instead of the stand-in head"),
    scan_landmarks: Path = typer.Option(None, help="Its 68 3D landmarks (LJSON, iBUG groups)"),
    scan_units: str = typer.Option("mm", help="Units of the scan: m, cm or mm"),
) -> None:
    """Build the embedded sample session (4K Kinect MKV, dry vocal, song, ground truth)."""
    from singinghead.samples.real_scan import load_textured_scan
    from singinghead.samples.session import TAKES, build_sample_session

    if (scan is None) != (scan_landmarks is None):
        raise typer.BadParameter("--scan and --scan-landmarks go together")
    real = load_textured_scan(scan, scan_landmarks, scan_units) if scan else None
    with _progress() as progress:
        job = progress.add_task("rendering sample session", total=len(TAKES) + 1)  # + the light stage
        build_sample_session(out, seed=seed, duration_s=seconds, scan=real,
                             on_take=lambda take_id: progress.advance(job))
    console.print(f"sample session written to [bold]{out}[/] (ground truth in {out / 'ground_truth'})")


def _print_summary(summary: dict) -> None:
    from singinghead.schemas.artifacts import IngestReport
    from singinghead.storage import files

    report = IngestReport.model_validate(files.read_json(summary["report"]))
    table = Table(title=f"session {report.session_id} — subject {report.subject_id}")
    for col in ("take", "status", "video", "mic", "song", "problems"):
        table.add_column(col)
    colours = {"ok": "green", "warning": "yellow", "failed": "red"}
    for t in report.takes:
        table.add_row(
            t.take_id, f"[{colours[t.status]}]{t.status}[/]",
            f"{t.video.width}×{t.video.height} {t.video.fps:.1f} fps {t.video.frames} fr" if t.video else "–",
            f"{t.mic.sample_rate} Hz {t.mic.duration_s:.1f} s" if t.mic else "–",
            f"{t.song.sample_rate} Hz {t.song.duration_s:.1f} s" if t.song else "–",
            "\n".join(t.problems) or "–",
        )
    console.print(table)

    crops = files.read_json(summary["crop_report"])
    seg_table = Table(title="portrait segments (1024², H.264)")
    for col in ("take", "kept", "dropped", "seconds", "cuts", "files"):
        seg_table.add_column(col)
    for take_id, c in crops.items():
        if "segments_kept" not in c:
            seg_table.add_row(take_id, "–", "–", "–", f"[red]{c['status']}[/] {c.get('problem', '')}", "")
            continue
        cuts = "\n".join(f"frame {x['frame']}: {x['reason']}" for x in c["cuts"] if x["reason"] != "end of take")
        seg_table.add_row(take_id, str(c["segments_kept"]), str(c["segments_dropped"]), f"{c['seconds_kept']:.1f}",
                          cuts or "–", "\n".join(Path(u).name for u in summary["segments"].get(take_id, [])))
    console.print(seg_table)
    audio_reports = files.read_json(summary["audio_report"])
    sync = Table(title="audio: offsets (s) and per-segment WAVs (16 kHz: singing, BGM)")
    for col in ("take", "dry vocal → song", "video → mic", "flags", "files"):
        sync.add_column(col)
    for take_id, r in audio_reports.items():
        if "song_offset" not in r:
            sync.add_row(take_id, "–", "–", f"[red]{r['status']}[/] {r.get('problem', '')}", "")
            continue
        def offset(o: dict) -> str:
            estimate = "none" if o.get("offset_s") is None else f"{o['offset_s']:.3f}"
            return f"{o['used_s']:.3f} {o['status']} (estimate {estimate}, log {o['log_s']:.3f})"

        so, vo = r["song_offset"], r["video_offset"]
        sync.add_row(take_id, offset(so), offset(vo), "\n".join(r["flags"]) or "–",
                     "\n".join(Path(u).name for u in summary["audio"].get(take_id, [])))
    console.print(sync)
    motion_reports = files.read_json(summary["motion_report"])
    motion = Table(title="FLAME motion (59-d per frame, 30 fps)")
    for col in ("take", "segment", "frames", "outlier frames", "reprojection px (median / p95)"):
        motion.add_column(col)
    for take_id, r in motion_reports.items():
        if "segments" not in r:
            motion.add_row(take_id, "–", "–", f"[red]{r['status']}[/] {r.get('problem', '')}", "")
            continue
        for seg in r["segments"]:
            px = seg["reprojection_px"]
            motion.add_row(take_id, str(seg["segment_index"]), str(seg["frames"]),
                           ", ".join(f"{k} {v}" for k, v in seg["outlier_frames"].items() if v) or "–",
                           f"{px['median']:.1f} / {px['p95']:.1f}" if px["median"] is not None else "–")
    console.print(motion)
    light = summary["light_stage"]
    if light["status"] == "ok":
        report = files.read_json(next(u for u in light["scan"] if u.endswith("scan_report.json")))
        shape = files.read_json(summary["subject_shape"])
        fit = shape["scan_fit"]
        scan = Table(title="light stage: scan and FLAME scan fit (the subject's final shape)")
        for col in ("scan", "points (sparse / dense)", "area m²", "holes", "landmarks (px residual)",
                    "scan→FLAME mm (p50 / p95)", "files"):
            scan.add_column(col)
        lmk = report["landmarks"]
        source = f"{report['file']} ({report['units']}, ready-made)" if report.get("source") == "ready-made scan" \
            else f"{report['views']} views (missing: {', '.join(report['missing_views']) or '–'})"
        found = "68 given" if lmk.get("source") == "given" \
            else f"{lmk['landmarks_triangulated']} ({lmk['residual_px_median']:.1f})"
        scan.add_row(source, f"{report.get('sparse_points', '–')} / {report['points']}\n{report.get('dense', '')}",
                     f"{report['surface_area_m2']:.3f}", str(report["holes"]), found,
                     f"{fit['scan_to_mesh_mm']['p50']:.2f} / {fit['scan_to_mesh_mm']['p95']:.2f}",
                     "\n".join(Path(u).name for u in light["scan"] + light["fit"]))
        console.print(scan)
        for flag in shape.get("flags", []):  # the scan's landmark warning among them; every window carries them
            console.print(f"[yellow]subject shape flagged[/]: {flag}")
    elif light["status"] == "failed":
        console.print(f"[red]light stage not used[/]: {light['problem']} (the subject keeps the monocular shape)")
    ran = sorted(set(summary["submitted"]) | set(summary["crop_submitted"]) | set(summary["audio_submitted"])
                 | set(summary["flame_submitted"]) | set(summary["scan_submitted"]))
    console.print(f"takes processed this run: {', '.join(ran) if ran else 'none (everything was up to date)'}")
    session_dir = summary["report"].rsplit("/", 1)[0]
    console.print(f"reports: {session_dir}/ (ingest, crop, audio, motion: .json and .md; subject_shape.json; "
                  "processed.json)")
    scan = "; the scan and its fit under light_stage/" if light["scan"] else ""
    console.print(f"artifacts: {session_dir}/takes/<take>/<step>/<key>/ (portrait segments, audio, frame fits, "
                  f"motion){scan}; catalog: {summary['out']}/catalog")


@app.command()
def process(
    session_dirs: list[Path] = typer.Argument(..., exists=True, file_okay=False,
                                              help="Capture session folder(s); several are queued at once"),
    out: str = typer.Option(..., "--out", help="Output folder or fsspec URL (s3://bucket/prefix)"),
    dask_address: str | None = typer.Option(None, "--dask-address", help="Existing Dask scheduler"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Process capture sessions (incremental: finished steps are skipped)."""
    from singinghead.flows.process_session import run_process_session, run_process_sessions

    with step_board():
        if len(session_dirs) == 1:
            summaries = [run_process_session(session_dirs[0], out, dask_address=dask_address)]
        else:
            summaries = run_process_sessions(session_dirs, out, dask_address=dask_address)
    if as_json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
        return
    for summary in summaries:
        if summary.get("status") == "failed":
            console.print(f"[red]{summary['session_dir']} failed[/]: {summary['problem']}")
        else:
            _print_summary(summary)
    if any(s.get("status") == "failed" for s in summaries):
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Where the demo writes everything"),
    seed: int = typer.Option(0),
    dask_address: str | None = typer.Option(None, "--dask-address"),
    scan: Path = typer.Option(None, help="A real textured scan (OBJ) for the light stage to photograph "
                                         "(its own texture, no painted speckle) instead of the stand-in head"),
    scan_landmarks: Path = typer.Option(None, help="Its 68 3D landmarks (LJSON, iBUG groups)"),
    scan_units: str = typer.Option("mm", help="Units of the scan: m, cm or mm"),
) -> None:
    """Sample session → process_session → release, with a summary of what was produced and where."""
    from singinghead.flows.process_session import run_process_session
    from singinghead.samples.real_scan import load_textured_scan
    from singinghead.samples.session import GENERATOR_VERSION, TAKES, build_sample_session

    if (scan is None) != (scan_landmarks is None):
        raise typer.BadParameter("--scan and --scan-landmarks go together")
    session = out / "session"
    gt = session / "ground_truth" / "ground_truth.json"
    truth = json.loads(gt.read_text()) if gt.is_file() else {}
    source = "real scan" if scan else "stand-in head"
    fresh = truth.get("generator_version") == GENERATOR_VERSION and truth.get("seed") == seed \
        and (truth.get("light_stage") or {}).get("source") == source
    if not fresh:
        real = load_textured_scan(scan, scan_landmarks, scan_units) if scan else None
        with _progress() as progress:
            job = progress.add_task(f"rendering the sample session (4K MJPEG; light stage: {source})",
                                    total=len(TAKES))
            build_sample_session(session, seed=seed, scan=real, on_take=lambda take_id: progress.advance(job))
    else:
        console.print(f"sample session already at {session}")
    with step_board():
        summary = run_process_session(session, out / "processed", dask_address=dask_address)
    _print_summary(summary)
    from singinghead.flows.build_release import run_build_release

    with release_stages():
        result = run_build_release([str(out / "processed")], out / "release", "demo")
    _print_release(result)

    from singinghead.trainer.evaluate import evaluate, split_with_windows, table_markdown
    from singinghead.trainer.train import TrainConfig, train

    cfg = TrainConfig.load(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                           data=str(out / "release"), out=str(out / "run"))
    console.print(f"training UniSinger on the demo release ({cfg.max_steps} steps, small model, CPU)")
    trained = train(cfg)
    split = split_with_windows(str(out / "release"))
    note = "" if split == "test" else f" (the demo release has no test windows: evaluated on {split})"
    rows = evaluate(trained["checkpoint"], str(out / "release"), split, (1, 10))
    console.print(table_markdown(rows, f"UniSinger after {trained['steps']} steps{note}"))
    _demo_2d(out, trained["checkpoint"], session)


def _demo_2d(out: Path, vae_checkpoint: str, session: Path) -> None:
    """The demo's 2D part: eye metrics, sync check, a short renderer run and an animated portrait."""
    import cv2
    import numpy as np
    import skimage.data
    import soundfile as sf

    from singinghead.flows.animate import animate as run_animate
    from singinghead.storage import release as store
    from singinghead.trainer.data import ReleaseWindows
    from singinghead.trainer.metrics import eyes
    from singinghead.trainer.renderer_train import train_renderer
    from singinghead.trainer.sync import sync_check

    release = str(out / "release")
    eye_table = Table(title="eye states of the released sequences (MusicFace: per video; blinks < 0.5 s)")
    for col in ("sequence", "windows", "blinks/s", "blink duration (s)", "long closures", "head roughness (deg²/s⁴)"):
        eye_table.add_column(col)
    sequences: dict[str, list[dict]] = {}
    for split in ("train", "val", "test"):
        for w in ReleaseWindows(release, split, fields=("eye_closure", "motion")):
            sequences.setdefault(w["window_id"].rsplit("_w", 1)[0], []).append(w)
    for name, ws in sorted(sequences.items()):
        ws.sort(key=lambda w: w["window_id"])
        closure = np.concatenate([w["eye_closure"].numpy().mean(axis=1) for w in ws])
        motion = np.concatenate([w["motion"].numpy() for w in ws])
        stats = eyes.blink_stats(closure)
        eye_table.add_row(name, str(len(ws)), f"{stats['blinks_per_s']:.2f}", f"{stats['blink_duration_s']:.2f}",
                          f"{stats['long_closures']:.0f}", f"{eyes.roughness(motion):.1f}")
    console.print(eye_table)
    with console.status("sync check: training the MS-Sync syncer pyramid on the release's train split"):
        report = sync_check(release, steps=150)
    console.print(f"sync check (held-out windows): {len(report['flagged'])} of {len(report['windows'])} flagged "
                  f"(offsets at 200 ms: {[r['scales'][0]['offset_frames'] for r in report['windows']]}); "
                  f"{release}/qa/sync_check.json")
    subject = store.read_manifest(release).column("subject_id")[0].as_py()
    with console.status(f"training a small face renderer for {subject} (a few steps: a smoke run on CPU)"):
        rend = train_renderer(release, subject, out / "renderer", steps=3, max_windows=1,
                              channels=(16, 32, 64, 64, 64, 64, 64, 64))
    console.print(f"renderer: {rend['steps']} steps, checkpoint {rend['checkpoint']}")
    from singinghead.trainer.evaluate import split_with_windows
    from singinghead.trainer.evaluate_2d import evaluate_2d, table_2d

    rows = evaluate_2d(rend["checkpoint"], release, split_with_windows(release), max_windows=1, frame_step=8,
                       vae_checkpoint=vae_checkpoint, samples=2)
    console.print("2D metrics (Table IV) of the (barely trained) renderer, on windows it did not train on — "
                  "from the fitted motion and audio-driven:\n" + table_2d(rows))
    photo = out / "animate" / "astronaut.png"
    photo.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    vocal, sr = sf.read(session / "takes" / "take01" / "mic.wav", dtype="float32")
    song = photo.parent / "vocal_4s.wav"
    sf.write(song, vocal[: 4 * sr], sr)
    with console.status("animate: photo + 4 s of singing → MP4"):
        result = run_animate(photo, song, None, vae_checkpoint, photo.parent / "animated.mp4", rend["checkpoint"])
    console.print(f"animate: {result['frames']} frames → {result['out']}")


@app.command()
def release(
    sessions: list[str] = typer.Argument(..., help="Processed session folders (OUT/sessions/<id>) or output roots"),
    out: str = typer.Option(..., "--out", help="Release folder or fsspec URL"),
    version: str = typer.Option(..., "--version", help="Version name of this release"),
    seed: int = typer.Option(0, help="Seed of the split assignment (fixed for the life of a release)"),
    split_by: str = typer.Option("sequence", help="sequence (the papers' split: a recording's windows stay together) "
                                 "| subject (identity-disjoint) | window (adjacent windows leak across splits)"),
    shard_mb: float = typer.Option(256.0, help="Target shard size (Parquet + audio block), MB"),
) -> None:
    """Build (or extend) a release: 8 s windows, splits, shards, manifest, card, stats, QA report."""
    from singinghead.flows.build_release import run_build_release

    with release_stages():
        result = run_build_release(sessions, out, version, seed=seed, split_by=split_by, shard_mb=shard_mb)
    _print_release(result)


def _print_release(result: dict) -> None:
    console.print(f"release {result['version']} at {result['release']}: {result['windows']} windows "
                  f"({result['new_windows']} new) — " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
    console.print(f"QA report: {result['qa']['html']} ({result['qa']['failing']} windows flagged)")
    console.print(f"stats: {', '.join(result['stats']['plots'])}")


@app.command()
def verify(release_dir: str = typer.Argument(..., help="Release folder or URL")) -> None:
    """Re-check every file of a release against its manifest (size, SHA-256, shard schema)."""
    from singinghead.storage.release import read_manifest, verify_release

    problems = verify_release(release_dir)
    n = read_manifest(release_dir).num_rows
    if problems:
        for p in problems:
            console.print(f"[red]{p}[/]")
        console.print(f"{len(problems)} problems in {release_dir} ({n} windows)")
        raise typer.Exit(1)
    console.print(f"{release_dir}: {n} windows, every file matches the manifest")


@app.command("export-singinghead")
def export_singinghead(release_dir: str = typer.Argument(..., help="Release folder or URL"),
                       out: Path = typer.Argument(..., help="Folder for the SingingHead layout")) -> None:
    """Write a release in the public SingingHead layout (txt splits, video/flame/audio/bgm seqs)."""
    from singinghead.tasks.interop import export_singinghead as export

    result = export(release_dir, out)
    console.print(f"{result['windows']} windows written to {result['out']} (SingingHead layout)")


@app.command("import-singinghead")
def import_singinghead(src: Path = typer.Argument(..., exists=True, file_okay=False, help="SingingHead layout folder"),
                       out: str = typer.Argument(..., help="New release folder or URL"),
                       version: str = typer.Option("imported", "--version")) -> None:
    """Read the public SingingHead layout into release shards our trainer reads."""
    from singinghead.tasks.interop import import_singinghead as do_import

    result = do_import(src, out, version)
    for p in result["problems"]:
        console.print(f"[yellow]skipped:[/] {p}")
    console.print(f"{result['windows']} windows imported into {result['release']} — "
                  + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))


@app.command("serve")
def serve_cmd(limit: int | None = typer.Option(None, "--limit", help="Flow runs at once (default: no limit)")) -> None:
    """Register process-session, build-release and train-unisinger as Prefect deployments and run
    what is started from the Prefect UI or `prefect deployment run` (until Ctrl-C)."""
    from singinghead.flows.deployments import serve_deployments

    serve_deployments(limit)


@app.command("train")
def train_cmd(
    data: str = typer.Option(..., "--data", help="Release folder"),
    config: Path | None = typer.Option(None, "--config", help="YAML training config (see configs/)"),
    out: str | None = typer.Option(None, "--out", help="Run folder (resumes when it has a checkpoint)"),
    variant: str | None = typer.Option(None, help="unisinger | faceformer"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
) -> None:
    """Train UniSinger's 3D module (or the FaceFormer-style baseline) on a release."""
    from singinghead.trainer.train import TrainConfig, train

    cfg = TrainConfig.load(config, data=data, out=out, variant=variant, max_steps=max_steps)
    result = train(cfg)
    console.print(f"{result['steps']} steps; checkpoint {result['checkpoint']}; log {result['log']}")


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., exists=True, dir_okay=False),
    data: str = typer.Option(..., "--data", help="Release folder"),
    split: str = typer.Option("test"),
    samples: str = typer.Option("1,10,30", help="Sample counts n (Mean and Min over n)"),
    max_windows: int | None = typer.Option(None, "--max-windows"),
    ground_truth: bool = typer.Option(False, "--ground-truth",
                                      help="Also score the ground truth through the same path (the tables' GT row)"),
) -> None:
    """Journal Table II metrics (+ MinDist/MeanDist/APD) of a checkpoint on a release split."""
    from singinghead.trainer.evaluate import evaluate, table_markdown

    ns = tuple(int(s) for s in samples.split(","))
    rows = evaluate(checkpoint, data, split, ns, max_windows=max_windows)
    console.print(table_markdown(rows, f"{checkpoint} on {split}"))
    if ground_truth:
        rows = evaluate(checkpoint, data, split, ns, max_windows=max_windows, ground_truth_as_prediction=True)
        console.print(table_markdown(rows, f"ground truth on {split}"))


@app.command("sync-check")
def sync_check_cmd(release_dir: str = typer.Argument(..., help="Release folder"),
                   steps: int = typer.Option(300, help="Training steps per syncer level"),
                   train_split: str = typer.Option("train", help="Split the syncers learn from (never checked)"),
                   pyramid: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                                       help="A pyramid trained elsewhere (qa/sync_pyramid.pt)")
                   ) -> None:
    """MS-Sync syncer pyramid: flag held-out windows whose AV offset is not 0 ± 1 frame."""
    from singinghead.trainer.sync import sync_check

    report = sync_check(release_dir, steps=steps, train_split=train_split,
                        pyramid_path=str(pyramid) if pyramid else None)
    console.print(f"syncers trained on {report['trained_on']}")
    for r in report["windows"]:
        scales = ", ".join(f"{s['scale_ms']} ms: {s['offset_frames']:+d} (conf {s['confidence']:.2f})"
                           for s in r["scales"] if s["offset_frames"] is not None)
        mark = "[red]flagged[/]" if r["flagged"] else "ok"
        console.print(f"{r['window_id']} [{r['split']}] {mark} — {scales}")
    console.print(f"{len(report['flagged'])} of {len(report['windows'])} windows flagged; "
                  f"report: {release_dir}/qa/sync_check.json")


@app.command("train-renderer")
def train_renderer_cmd(
    data: str = typer.Option(..., "--data", help="Release folder"),
    subject: str = typer.Option(..., "--subject", help="The identity to train a renderer for"),
    out: Path = typer.Option(..., "--out", help="Run folder"),
    steps: int = typer.Option(1000),
    size: int = typer.Option(256),
) -> None:
    """Train the face renderer of one identity (depth + reference image → portrait)."""
    from singinghead.trainer.renderer_train import train_renderer

    result = train_renderer(data, subject, out, steps=steps, size=size)
    console.print(f"{result['steps']} steps on {result['windows']} windows; checkpoint {result['checkpoint']}")


@app.command("evaluate-2d")
def evaluate_2d_cmd(
    renderer: Path = typer.Argument(..., exists=True, dir_okay=False, help="Renderer checkpoint"),
    data: str = typer.Option(..., "--data", help="Release folder"),
    split: str = typer.Option("test"),
    max_windows: int | None = typer.Option(None, "--max-windows"),
    vae: Path | None = typer.Option(None, "--vae", exists=True, dir_okay=False,
                                    help="UniSinger checkpoint: adds the audio-driven rows (the papers' Table IV)"),
    samples: int = typer.Option(1, "--samples", help="Generated motions per window (mean and best rows)"),
    frame_step: int = typer.Option(1, "--frame-step", help="Score every k-th frame (faster; BA then n/a)"),
) -> None:
    """Journal Table IV columns (FID, LPIPS, SSIM, CPBD, M-LMD, F-LMD, BA) of an identity's renderer:
    the reconstruction row (fitted motion) and, with --vae, audio-driven synthesis."""
    from singinghead.trainer.evaluate_2d import evaluate_2d, table_2d

    console.print(table_2d(evaluate_2d(str(renderer), data, split, max_windows, frame_step=frame_step,
                                       vae_checkpoint=str(vae) if vae else None, samples=samples)))


@app.command()
def animate(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="A portrait photo"),
    audio: Path = typer.Argument(..., exists=True, dir_okay=False, help="Singing (dry vocal) audio"),
    bgm: Path | None = typer.Argument(None, help="Background music (optional)"),
    vae: Path = typer.Option(..., "--vae", exists=True, help="UniSinger checkpoint (singinghead train)"),
    renderer: Path | None = typer.Option(None, "--renderer", help="Renderer checkpoint; without: depth video"),
    out: Path = typer.Option(Path("animated.mp4"), "--out"),
    size: int = typer.Option(256),
) -> None:
    """Photo + song → singing portrait MP4 (FLAME motion from the VAE, depth, renderer, audio muxed)."""
    from singinghead.flows.animate import animate as run

    result = run(image, audio, bgm, vae, out, renderer, size=size)
    console.print(f"{result['frames']} frames → {result['out']} ({'rendered' if result['rendered'] else 'depth'})")


def main() -> None:
    # Keep the console readable: Dask's per-worker chatter and Prefect's telemetry off by default.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's per-task INFO lines go to the Prefect UI; the console shows warnings and errors
    # beside our own progress tables (--verbose shows them all).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    try:
        app()
    except SingingHeadError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
