"""Static HTML QA report of a release: failing windows first.

Per window: a strip of four portrait frames with the detected landmarks (green) and the
projected FLAME landmarks of the fitted motion (red), the sync offsets, reprojection error
(median / p95) and every QA flag. Thumbnails are cached by window id (`qa/thumbs/`).
"""

from __future__ import annotations

import html
import io

import av
import cv2
import numpy as np
import pyarrow.parquet as pq

from singinghead.schemas import release as R
from singinghead.storage import files
from singinghead.storage import release as store
from singinghead.tasks import flame_fit

THUMB = 256
STRIP_FRAMES = (0, 80, 160, 239)


def _frames(video_url: str, picks: tuple[int, ...]) -> dict[int, np.ndarray]:
    out = {}
    with av.open(io.BytesIO(files.read_bytes(video_url))) as c:
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            if i in picks:
                out[i] = frame.to_ndarray(format="bgr24")
            if i >= max(picks):
                break
    return out


def thumbnail_strip(video_url: str, detected: np.ndarray, projected: np.ndarray) -> bytes:
    """JPEG of STRIP_FRAMES side by side with the two landmark sets drawn."""
    frames = _frames(video_url, STRIP_FRAMES)
    tiles = []
    for i in STRIP_FRAMES:
        img = frames.get(i, np.zeros((THUMB, THUMB, 3), np.uint8))
        s = THUMB / img.shape[1]
        img = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        for pts, colour in ((detected[i], (0, 200, 0)), (projected[i], (0, 0, 230))):
            for x, y in pts[np.isfinite(pts).all(axis=1)] * s:
                cv2.circle(img, (int(round(x)), int(round(y))), 1, colour, -1, lineType=cv2.LINE_AA)
        tiles.append(img)
    ok, jpg = cv2.imencode(".jpg", np.concatenate(tiles, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return jpg.tobytes()


def qa_report(release: str, manifest: list[dict]) -> dict:
    folder = flame_fit.flame_folder(release)
    layer = flame_fit.flame_layer(str(folder), flame_fit.model_id(folder))
    entries = []
    by_shard: dict[str, list[dict]] = {}
    for r in manifest:
        by_shard.setdefault(r["shard_path"], []).append(r)
    for shard, rows in sorted(by_shard.items()):
        table = pq.read_table(io.BytesIO(files.read_bytes(files.join(release, shard))))
        a = store.arrays(table, ["motion", "translation", "camera", "shape", "landmarks", "reprojection_error_px"])
        for r in rows:
            i = r["shard_row"]
            err = a["reprojection_error_px"][i]
            thumb = f"qa/thumbs/{r['window_id']}.jpg"
            if not files.exists(files.join(release, thumb)):
                fx, fy, cx, cy = a["camera"][i]
                K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
                if np.isfinite(K).all():
                    proj = flame_fit.project_motion(layer, a["shape"][i], a["motion"][i], a["translation"][i], K)
                else:  # imported data without a camera: no overlay
                    proj = np.full((R.WINDOW_FRAMES, 68, 2), np.nan)
                files.write_bytes_atomic(files.join(release, thumb),
                                         thumbnail_strip(files.join(release, r["video_path"]), a["landmarks"][i], proj))
            finite = err[np.isfinite(err)]
            entries.append({
                "window_id": r["window_id"], "split": r["split"], "thumb": thumb, "flags": list(r["qa_flags"]),
                "offsets": table.slice(i, 1).select(["video_to_mic_s", "mic_to_song_s"]).to_pylist()[0],
                "sync_status": r["sync_status"],
                "median_px": float(np.median(finite)) if len(finite) else None,
                "p95_px": float(np.percentile(finite, 95)) if len(finite) else None,
            })
    entries.sort(key=lambda e: (-len(e["flags"]), -(e["p95_px"] or 0.0), e["window_id"]))
    rows_html = []
    for e in entries:
        px = f"{e['median_px']:.1f} / {e['p95_px']:.1f}" if e["median_px"] is not None else "–"
        o = e["offsets"]
        status = "fail" if e["flags"] else "ok"
        rows_html.append(
            f"<tr class='{status}'><td>{html.escape(e['window_id'])}<br>{e['split']}</td>"
            f"<td><img src='{html.escape(e['thumb'].removeprefix('qa/'))}' width='{4 * THUMB // 2}'></td>"
            f"<td>video→mic {o['video_to_mic_s']:.3f} s<br>mic→song {o['mic_to_song_s']:.3f} s"
            f"<br><b>{html.escape(e['sync_status'])}</b></td><td>{px}</td>"
            f"<td>{'<br>'.join(html.escape(f) for f in e['flags']) or 'ok'}</td></tr>")
    failing = sum(bool(e["flags"]) for e in entries)
    unverified = sum(e["sync_status"] == "unverified" for e in entries)
    page = ("<!doctype html><meta charset='utf-8'><title>QA report</title><style>"
            "body{font-family:sans-serif} td{padding:4px;vertical-align:top;border-bottom:1px solid #ddd}"
            "tr.fail td:first-child{border-left:4px solid #c33} tr.ok td:first-child{border-left:4px solid #3a3}"
            "</style>"
            f"<h1>QA report</h1><p>{len(entries)} windows, {failing} with flags (listed first), {unverified} "
            "with unverified sync offsets. Green: detected "
            "landmarks; red: projected FLAME landmarks.</p><table><tr><th>window</th><th>frames 0, 80, 160, 239</th>"
            "<th>sync offsets</th><th>reprojection px (median / p95)</th><th>flags</th></tr>"
            + "".join(rows_html) + "</table>")
    files.write_bytes_atomic(files.join(release, "qa", "index.html"), page.encode())
    return {"html": files.join(release, "qa", "index.html"), "windows": len(entries), "failing": failing,
            "unverified": unverified,
            "entries": entries}
