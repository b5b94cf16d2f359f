"""Issue 5, bad images: every decodable file is extracted as RGB, the rest are skipped with a reason."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import featcache
from featcache.backbones.spec import Preprocess
from featcache.extraction.decode import Transform
from featcache.extraction.images import BadImage, open_rgb
from tests.conftest import featcache as run_cli
from tests.conftest import make_images, without_root_privileges

NON_UTF8 = b"caf\xe9.png"


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _asymmetric(size=(60, 40)) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 3] = (250, 20, 20)
    pixels[: size[1] // 2, size[0] // 3:] = (20, 20, 250)
    return Image.fromarray(pixels)


def build_messy_folder(root: Path) -> dict[str, str]:
    """A class folder of every awkward file we know; returns name -> expected outcome."""
    make_images(root, classes=("good", "messy"), per_class=3)
    d = root / "messy"
    expected = {}

    (d / "zero.jpg").write_bytes(b"")
    expected["messy/zero.jpg"] = "skip"
    whole = _jpeg_bytes(_asymmetric((200, 160)))
    (d / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    expected["messy/truncated.jpg"] = "skip"
    (d / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    expected["messy/random.jpg"] = "skip"
    (d / "letter.png").write_text("Dear user, this is not a picture.\n")
    expected["messy/letter.png"] = "skip"
    (d / "notes.txt").write_text("a text file beside the images\n")  # not an image extension: ignored, reported

    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    rgba.save(d / "alpha.png")
    expected["messy/alpha.png"] = "ok"
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(d / "palette.png", transparency=0)
    expected["messy/palette.png"] = "ok"
    Image.fromarray(np.full((30, 40), 32768, np.uint16)).save(d / "sixteen.png")
    expected["messy/sixteen.png"] = "ok"
    Image.new("L", (40, 30), 128).save(d / "gray.png")
    expected["messy/gray.png"] = "ok"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    expected["messy/cmyk.jpg"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (d / "rotated.jpg").write_bytes(_jpeg_bytes(_asymmetric(), exif=exif.tobytes()))
    expected["messy/rotated.jpg"] = "ok"
    Image.new("1", (10000, 9000)).save(d / "bomb.png")
    expected["messy/bomb.png"] = "skip"
    Image.new("RGB", (30, 30), "green").save(os.path.join(os.fsencode(d), NON_UTF8))
    expected[os.fsdecode(b"messy/" + NON_UTF8)] = "ok"
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not an input at all
    os.symlink("loop.jpg", d / "loop.jpg")
    expected["messy/loop.jpg"] = "skip"
    Image.new("RGB", (30, 30), "blue").save(d / "locked.png")
    os.chmod(d / "locked.png", 0)
    expected["messy/locked.png"] = "skip"
    return expected


def test_messy_folder_skip_mode_extracts_every_decodable_image(tmp_path):
    data = tmp_path / "data"
    expected = build_messy_folder(data)
    prefix = without_root_privileges()
    if prefix is None:  # root without setpriv: the locked file stays readable, so expect it extracted
        expected["messy/locked.png"] = "ok"
    cache = tmp_path / "cache"
    r = run_cli("extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32",
                "--cache-dir", cache, "--json", prefix=prefix or ())
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    skipped = {s["path"]: s["reason"] for s in out["skipped"]}
    want_skipped = {os.fsencode(k).decode("utf-8", "backslashreplace") for k, v in expected.items() if v == "skip"}
    assert set(skipped) == want_skipped, skipped
    assert "truncated" in skipped["messy/truncated.jpg"]
    assert "empty file" in skipped["messy/zero.jpg"]
    assert "too large" in skipped["messy/bomb.png"] and "pixels" in skipped["messy/bomb.png"]
    assert "symlink loop" in skipped["messy/loop.jpg"]
    if expected["messy/locked.png"] == "skip":
        assert "permission denied" in skipped["messy/locked.png"]
    assert "not an image" in skipped["messy/letter.png"] and "not an image" in skipped["messy/random.jpg"]
    assert "notes.txt" in r.stderr and "ignored 1 non-image" in r.stderr
    for path in want_skipped:  # the summary on stderr lists each with its reason
        assert path in r.stderr

    with featcache.open_features(out["id"], cache) as fs:
        paths = fs.paths
        X = fs.load(np.float32)
        stored_skips = dict(fs.skipped)
    ok = sorted(k for k, v in expected.items() if v == "ok")
    assert set(ok) <= set(paths) and len(paths) == 3 + 3 + len(ok)
    assert os.fsencode(next(p for p in paths if p.startswith("messy/caf"))) == b"messy/" + NON_UTF8
    assert np.isfinite(X).all()
    assert set(map(lambda p: os.fsencode(p).decode("utf-8", "backslashreplace"), stored_skips)) == want_skipped
    assert ".DS_Store" not in " ".join(paths) + " ".join(stored_skips)


def test_fail_mode_stops_at_the_first_bad_file_with_its_name_and_reason(tmp_path):
    data = make_images(tmp_path / "data", per_class=3)
    whole = _jpeg_bytes(_asymmetric((200, 160)))
    (data / "dogs" / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    r = run_cli("extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32",
                "--cache-dir", tmp_path / "c", "--on-error", "fail", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "dogs/broken.jpg" in r.stderr and "truncated" in r.stderr and "--on-error skip" in r.stderr
    assert not list((tmp_path / "c").glob("*.h5"))  # nothing that looks complete


def test_exif_orientation_is_applied_before_resizing(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(_asymmetric((60, 40)), exif=exif.tobytes()))
    img = open_rgb(str(path), draft=False)
    assert img.size == (40, 60)  # displayed upright: portrait
    manual = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert np.array_equal(np.asarray(img), np.asarray(manual))
    pre = Preprocess(resize_size=40, crop_size=32)
    plain = path.with_name("plain.png")
    manual.save(plain)
    assert np.array_equal(Transform(pre)(str(path)).numpy(), Transform(pre)(str(plain)).numpy())


def test_modes_convert_to_rgb_faithfully(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "s.png")
    assert np.asarray(open_rgb(str(tmp_path / "s.png"))).max() == 127  # scaled, not clipped to 255
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    assert np.asarray(open_rgb(str(tmp_path / "a.png")))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = np.asarray(open_rgb(str(tmp_path / "c.jpg")))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60
    with pytest.raises(BadImage, match="not an image"):
        (tmp_path / "t.png").write_text("hello")
        open_rgb(str(tmp_path / "t.png"))


def test_a_file_that_later_disappears_is_skipped_not_fatal(tmp_path, cache_dir):
    data = make_images(tmp_path / "data", per_class=3)
    from featcache.extraction import scan as m
    from featcache.extraction.decode import ImageRows

    man = m.scan(data)
    (data / "cats" / "cats_001.png").unlink()
    rows = ImageRows([str(data / p) for p in man.paths], list(range(len(man))), Transform(Preprocess(40, 32)))
    index, tensor, reason = rows[1]
    assert tensor is None and "disappeared" in reason
    assert stat.S_ISDIR(os.stat(data).st_mode)
