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
        monkeypatch.setattr(cc.OpenVideo, "read", lambda *a, **k: pytest.fail("decoded again"))
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
    monkeypatch.setattr(cc.OpenVideo, "read", lambda *a, **k: pytest.fail("decoded again"))
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


def test_an_opened_source_probes_and_reads_with_one_open(tmp_path, monkeypatch):
    import av

    import stormvl.data.clip_cache as cc
    import stormvl.data.video as vid

    video = tmp_path / "a.mp4"
    write_video(video, _frames(), fps=6, lossless=True)
    fresh, info = read_clip(video, num_frames=4), probe(video)
    opens = []
    real = av.open
    monkeypatch.setattr(vid.av, "open", lambda *a, **k: opens.append(a[0]) or real(*a, **k))
    with cc.ClipReader().open(video) as src:
        assert src.info == info
        got = src.read_clip(num_frames=4, start=0.5)
    assert opens == [str(video)]  # the read continued the probe's decoder
    ref = read_clip(video, num_frames=4, start=0.5)
    np.testing.assert_array_equal(got.frames, ref.frames)
    np.testing.assert_array_equal(got.timestamps, ref.timestamps)
    np.testing.assert_array_equal(ref.frames[0], fresh.frames[1])  # the bound did apply
    # frame 0 comes from the probe's decode: a clip that starts there equals decode_frames
    with vid.OpenVideo(video) as v:
        assert v.info == info
        whole = v.read(num_frames=12)
        with pytest.raises(RuntimeError, match="read once"):
            v.read(num_frames=2)
    np.testing.assert_array_equal(whole.frames, decode_frames(video)[0])
    # the reader's check sees the probe before any frame is decoded, cached or not
    seen = []

    class Refusing(cc.ClipReader):
        def check(self, path, info):
            seen.append(info)
            raise vid.VideoError(f"{path}: refused")

    cc.ClipReader(tmp_path / "cache").probe(video)  # a cached probe is checked too
    monkeypatch.setattr(vid.OpenVideo, "read", lambda *a, **k: pytest.fail("decoded"))
    for root in (None, tmp_path / "cache"):
        with pytest.raises(vid.VideoError, match="refused"):
            Refusing(root).read_clip(video, num_frames=4)
        with pytest.raises(vid.VideoError, match="refused"), Refusing(root).open(video) as src:
            src.info  # noqa: B018
    assert seen == [info] * 4


# --- short clips, rotation, variable frame rate -----------------------------------------------


@pytest.mark.parametrize("total", [1, 2, 3, 5, 7, 8])
def test_short_clip_gives_every_frame_once(total):
    # fewer frames than asked for: each frame once, as the HF Qwen processors cap the count
    # at the frames there are (the backbone pads to the temporal patch)
    for kw in ({"num_frames": 8}, {"num_frames": total}, {"sample_fps": 100.0}):
        assert sample_indices(total, 25.0, **kw).tolist() == list(range(total))
    assert sample_indices(100, 25.0, num_frames=8).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]


def test_short_window_gives_its_frames_once():
    # MVBench's official bound rule: frames round(start * fps) .. round(end * fps)
    assert sample_indices(75, 25.0, num_frames=8, start=1.0, end=1.1).tolist() == [25, 26, 27, 28]
    assert sample_indices(75, 25.0, num_frames=8, start=1.0, end=1.0).tolist() == [25]
    got = sample_indices(75, 25.0, num_frames=3, start=1.0, end=1.5)  # 13 frames, 3 wanted
    assert len(set(got.tolist())) == 3 and all(25 <= i <= 38 for i in got)


def _write(path, frames, fps=6, rotation=None, pts_ms=None):
    """Lossless H.264 with an optional display rotation (counter-clockwise degrees, the
    container's display matrix) or explicit presentation times (a VFR file)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"qp": "0", "preset": "ultrafast"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                fr.pts, fr.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("rotation,corner", [(0, "top-left"), (-90, "top-right"),
                                             (90, "bottom-left"), (180, "bottom-right")])
def test_rotation_metadata_is_applied(tmp_path, rotation, corner):
    # stored 48 wide x 32 high, a white block in the stored top-left corner. A display
    # rotation of -90 (what phones write for an upright shot) turns the picture clockwise:
    # shown 32 wide x 48 high with the block top-right; +90 counter-clockwise: bottom-left.
    f = np.zeros((3, 32, 48, 3), np.uint8)
    f[:, :8, :8] = 255
    _write(tmp_path / "r.mp4", f, rotation=rotation)
    info = probe(tmp_path / "r.mp4")
    shown = (48, 32) if rotation in (0, 180) else (32, 48)
    assert (info.width, info.height) == shown
    clip = read_clip(tmp_path / "r.mp4", num_frames=3)
    assert clip.frames.shape == (3, shown[1], shown[0], 3)
    g = clip.frames[0].astype(int).mean(-1)
    quads = {"top-left": g[:8, :8], "top-right": g[:8, -8:], "bottom-left": g[-8:, :8],
             "bottom-right": g[-8:, -8:]}
    assert {k for k, q in quads.items() if q.mean() > 200} == {corner}
    frames, _ = decode_frames(tmp_path / "r.mp4")
    np.testing.assert_array_equal(frames, clip.frames)


def test_vfr_timestamps_are_presentation_times(tmp_path):
    pts_ms = [0, 100, 150, 500, 550, 1200, 1250]
    f = np.zeros((7, 32, 32, 3), np.uint8)
    f[:] = (30 * np.arange(7, dtype=np.uint8))[:, None, None, None]
    _write(tmp_path / "vfr.mp4", f, fps=10, pts_ms=pts_ms)
    clip = read_clip(tmp_path / "vfr.mp4", num_frames=7)
    assert clip.indices.tolist() == list(range(7))
    np.testing.assert_allclose(clip.timestamps, np.array(pts_ms) / 1000, rtol=0, atol=1e-12)
    assert np.abs(clip.frames[:, 0, 0, 0].astype(int) - 30 * np.arange(7)).max() <= 2
    three = read_clip(tmp_path / "vfr.mp4", num_frames=3)  # chosen by index, times are real
    np.testing.assert_allclose(three.timestamps, np.array(pts_ms)[three.indices] / 1000, atol=1e-12)


def test_cfr_timestamps_are_index_over_fps(tmp_path):
    from fractions import Fraction

    write_video(tmp_path / "a.mp4", _frames(30), fps=30000 / 1001)
    clip = read_clip(tmp_path / "a.mp4", num_frames=30)
    fps = Fraction(clip.fps).limit_denominator(1001)
    assert clip.timestamps.tolist() == [float(i / fps) for i in range(30)]
