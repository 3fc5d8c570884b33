import numpy as np
import pytest

from stormvl.data.video import decode_frames, probe, read_clip, sample_indices, write_video
from stormvl.errors import VideoError


def _frames(t=12, h=32, w=48):
    f = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        f[i, :, (i * 3) % w : (i * 3) % w + 6] = (250, 40, 10)
    return f


def test_lossless_roundtrip_and_probe(tmp_path):
    f = _frames()
    write_video(tmp_path / "a.mp4", f, fps=6, lossless=True)
    info = probe(tmp_path / "a.mp4")
    assert (info.num_frames, info.fps, info.width, info.height) == (12, 6.0, 48, 32)
    g, fps = decode_frames(tmp_path / "a.mp4")
    assert fps == 6.0 and np.abs(g.astype(int) - f).max() <= 3


def test_clip_timestamps_are_the_sampled_frames(tmp_path):
    write_video(tmp_path / "a.mp4", _frames(), fps=6, lossless=True)
    clip = read_clip(tmp_path / "a.mp4", num_frames=4)
    assert clip.indices.tolist() == [1, 4, 7, 10]
    np.testing.assert_allclose(clip.timestamps, clip.indices / 6.0)
    ref, _ = decode_frames(tmp_path / "a.mp4")
    np.testing.assert_array_equal(clip.frames, ref[clip.indices])
    bounded = read_clip(tmp_path / "a.mp4", num_frames=2, start=1.0, end=1.5)
    assert all(6 <= i <= 9 for i in bounded.indices)


def test_sample_indices_rules():
    assert sample_indices(100, 10, num_frames=4).tolist() == [12, 37, 62, 87]
    assert len(sample_indices(100, 10, sample_fps=1)) == 10
    assert len(sample_indices(1000, 10, sample_fps=2, max_frames=16)) == 16
    assert sample_indices(3, 10, num_frames=8).max() <= 2
    with pytest.raises(ValueError):
        sample_indices(10, 10)


def test_bad_videos_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        read_clip(tmp_path / "missing.mp4", num_frames=2)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        read_clip(tmp_path / "empty.mp4", num_frames=2)
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
    with pytest.raises(VideoError, match="junk.mp4"):
        read_clip(tmp_path / "junk.mp4", num_frames=2)
    write_video(tmp_path / "ok.mp4", _frames(), fps=6)
    data = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        read_clip(tmp_path / "cut.mp4", num_frames=12)


def test_write_is_atomic_and_validates(tmp_path):
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_clip_cache_returns_what_a_fresh_read_does_and_decodes_once(tmp_path, monkeypatch):
    import os

    import stormvl.data.clip_cache as cc

    video = tmp_path / "a.mp4"
    write_video(video, _frames(), fps=6, lossless=True)
    reader = cc.ClipReader(tmp_path / "cache")
    for kw in ({"num_frames": 4}, {"num_frames": 2, "start": 1.0, "end": 1.5}, {"sample_fps": 2.0}):
        fresh, first = read_clip(video, **kw), reader.read_clip(video, **kw)
        monkeypatch.setattr(cc, "read_clip", lambda *a, **k: pytest.fail("decoded again"))
        again = reader.read_clip(video, **kw)  # from disk, not decoded
        monkeypatch.undo()
        for got in (first, again):
            np.testing.assert_array_equal(got.frames, fresh.frames)
            np.testing.assert_array_equal(got.indices, fresh.indices)
            np.testing.assert_array_equal(got.timestamps, fresh.timestamps)
            assert got.fps == fresh.fps and got.frames.dtype == np.uint8
    assert reader.probe(video) == reader.probe(video) == probe(video)
    assert len(list((tmp_path / "cache").rglob("*.clip"))) == 4  # 3 clips + 1 probe
    # an entry is read without parsing a Python literal: numpy's .npz header parse can raise
    # SystemError on CPython 3.11 when the evaluation's two decode threads read at once
    import ast
    monkeypatch.setattr(ast, "parse", lambda *a, **k: pytest.fail("ast used to read an entry"))
    monkeypatch.setattr(cc, "read_clip", lambda *a, **k: pytest.fail("decoded again"))
    assert reader.read_clip(video, num_frames=4).frames.shape == (4, *_frames().shape[1:])
    monkeypatch.undo()

    # a file rewritten in place is decoded again
    write_video(video, _frames()[::-1].copy(), fps=6, lossless=True)
    os.utime(video, ns=(1, 1))
    np.testing.assert_array_equal(reader.read_clip(video, num_frames=4).frames,
                                  read_clip(video, num_frames=4).frames)
    # a damaged entry is decoded again and rewritten
    entries = list((tmp_path / "cache").rglob("*.clip"))
    for entry in entries:
        entry.write_bytes(b"not an entry")
    np.testing.assert_array_equal(reader.read_clip(video, num_frames=4).frames,
                                  read_clip(video, num_frames=4).frames)
    # ... and so is a truncated one (never returned short)
    for entry in entries:
        if entry.stat().st_size > 1000:
            entry.write_bytes(entry.read_bytes()[:-5])
    np.testing.assert_array_equal(reader.read_clip(video, num_frames=4).frames,
                                  read_clip(video, num_frames=4).frames)
    assert all(cc._load(e) is not None for e in entries if e.stat().st_size > 1000)
    # errors are the reader's own and are never cached
    before = sorted((tmp_path / "cache").rglob("*"))
    with pytest.raises(VideoError, match="missing.mp4: video file not found"):
        reader.read_clip(tmp_path / "missing.mp4", num_frames=2)
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
    with pytest.raises(VideoError, match="junk.mp4"):
        reader.probe(tmp_path / "junk.mp4")
    with pytest.raises(VideoError, match="junk.mp4"):
        reader.read_clip(tmp_path / "junk.mp4", num_frames=2)
    assert sorted((tmp_path / "cache").rglob("*")) == before
    # no folder: a plain reader
    assert cc.ClipReader().read_clip(video, num_frames=4).indices.tolist() == [1, 4, 7, 10]
