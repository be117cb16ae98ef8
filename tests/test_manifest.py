import os
import shutil
from pathlib import Path

import pytest
import yaml

from singinghead.schemas.errors import ManifestError
from singinghead.schemas.manifest import CATEGORIES, load_manifest, normalise_category


def _edit(session: Path, change) -> None:
    path = session / "session.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _problems(session: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(session)
    assert str(session / "session.yaml") in str(info.value)
    return info.value.problems


def test_sample_manifest_is_valid(sample_session):
    m = load_manifest(sample_session)
    assert [t.id for t in m.takes] == ["take01", "take02"]
    assert m.subject.level == "professional"
    assert {t.song.category for t in m.takes} <= set(CATEGORIES)
    assert m.takes[0].mic_to_song_s == pytest.approx(1.5)
    assert m.takes[0].video_to_mic_s == pytest.approx(0.4)


def test_missing_file(session_copy):
    (session_copy / "takes/take02/mic.wav").unlink()
    assert _problems(session_copy) == ["takes[1].mic 'takes/take02/mic.wav': file not found"]


def test_empty_file(session_copy):
    (session_copy / "takes/take01/mic.wav").write_bytes(b"")
    assert _problems(session_copy) == ["takes[0].mic 'takes/take01/mic.wav': file is empty"]


@pytest.mark.parametrize("how", ["broken link", "folder", "no read permission"])
def test_unreadable_file(session_copy, how):
    """A file that cannot be read is named with the reason. Permission bits do not stop root (CI
    runs as root), so that case runs for other users only; a broken link and a folder where the
    file should be are unreadable for everyone."""
    mic = session_copy / "takes/take01/mic.wav"
    mic.unlink()
    if how == "broken link":
        mic.symlink_to("mic-on-the-lab-nas.wav")
        expected = ("takes[0].mic 'takes/take01/mic.wav': unreadable (a broken symbolic link to "
                    "'mic-on-the-lab-nas.wav')")
    elif how == "folder":
        mic.mkdir()
        expected = "takes[0].mic 'takes/take01/mic.wav': unreadable (a folder, not a file)"
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their mode")
        mic.write_bytes(b"RIFF")
        mic.chmod(0)
        expected = "takes[0].mic 'takes/take01/mic.wav': unreadable (Permission denied)"
    assert _problems(session_copy) == [expected]


def test_unknown_category(session_copy):
    _edit(session_copy, lambda d: d["takes"][0]["song"].update(category="jazz"))
    (problem,) = _problems(session_copy)
    assert problem.startswith("takes[0].song.category: unknown category 'jazz'; expected one of art_music")


def test_duplicate_take_id(session_copy):
    _edit(session_copy, lambda d: d["takes"][1].update(id="take01"))
    assert _problems(session_copy) == ["takes[1].id: duplicate take id 'take01'"]


def test_path_escaping_session(session_copy, tmp_path):
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(session_copy / "takes/take01/mic.wav", outside)
    _edit(session_copy, lambda d: d["takes"][0].update(mic="../elsewhere.wav"))
    _edit(session_copy, lambda d: d["takes"][1].update(mic=str(outside)))
    problems = _problems(session_copy)
    assert problems == [
        "takes[0].mic '../elsewhere.wav': path escapes the session folder",
        f"takes[1].mic '{outside}': absolute paths are not allowed; give a path inside the session folder",
    ]


def test_wrong_types_and_unknown_fields(session_copy):
    def change(d):
        d["takes"][0]["capture_log"]["video_start_s"] = "soon"
        d["subject"]["level"] = "expert"
        d["subject"]["age"] = 30
    _edit(session_copy, change)
    problems = _problems(session_copy)
    assert len(problems) == 3
    assert any(p.startswith("takes[0].capture_log.video_start_s: Input should be a valid number") for p in problems)
    assert any(p.startswith("subject.level: Input should be 'professional' or 'amateur'") for p in problems)
    assert "subject.age: unknown field" in problems


def test_every_problem_reported_at_once(session_copy):
    (session_copy / "songs/take01.flac").unlink()
    _edit(session_copy, lambda d: d["takes"][1].update(id="take01", video="takes/none.mkv"))
    assert len(_problems(session_copy)) == 3


def test_not_a_session(tmp_path):
    with pytest.raises(ManifestError, match="no session.yaml"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(("given", "slug"), [("Hip-Hop", "hip_hop"), ("R&B", "rhythm_and_blues"),
                                              ("Art music", "art_music"), ("Theater and Drama", "theater_and_drama"),
                                              ("rock music", "rock")])
def test_category_names(given, slug):
    assert normalise_category(given) == slug
