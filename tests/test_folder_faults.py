"""Image folders nobody checked (issue 18, group 6): symlink loops, FIFOs and devices named like
images, a class missing from one split, 16-bit images, images over the pixel limit.

Each case is a tiny folder of 8x8 PNGs made in tmp_path. The cases that used to hang (a FIFO, two
symlink loops) run in a thread with a timeout, so a regression fails instead of hanging CI.
"""

import os
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import FolderSource, UnreadableImageError, get_source
from ssl_jax.data.folder_scan import scan_image_folder
from ssl_jax.data.image_file import (
    MAX_PIXELS_ENV,
    ImageTooLargeError,
    decode_image,
    max_image_pixels,
    to_8bit,
)


def save_pngs(root, names, size=8):
    """Grayscale size x size PNGs at root/NAME, the i-th of value 20 * i + 10."""
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (size, size), 20 * i + 10).save(root / name)


def in_thread(fn, timeout=30.0):
    """fn() run in a daemon thread; fails the test if it has not returned after `timeout` s.
    Returns (result, warning messages)."""
    box = {}

    def target():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                box["value"] = fn()
            box["warnings"] = [str(w.message) for w in caught]
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: a hang"
    if "error" in box:
        raise box["error"]
    return box["value"], box["warnings"]


ABC = [f"{c}/{i}.png" for c in "abc" for i in range(2)]


def label_of(src, path):
    return int(src.labels[src.files.index(path)])


# ---------------------------------------------------------------------------------------------
# 1. The scan: symlink loops, links to siblings, special files


def test_symlink_loops_end_and_never_duplicate_or_mislabel_images(tmp_path):
    root = tmp_path / "imgs"
    save_pngs(root, ABC)
    os.symlink("..", root / "a" / "loop")  # one loop inflated the data 41x, labelled a
    os.symlink("..", root / "b" / "loop2")  # two made the scan run forever
    os.symlink("../c", root / "a" / "to_c")  # a link to a sibling class: c stays c
    save_pngs(tmp_path / "elsewhere", ["x.png"])
    os.symlink(tmp_path / "elsewhere", root / "d")  # a linked class folder is still read
    src, caught = in_thread(lambda: FolderSource(root, image_size=4))
    assert src.files == [*ABC, "d/x.png"]
    assert src.class_names == ["a", "b", "c", "d"]
    assert [label_of(src, f) for f in src.files] == [0, 0, 1, 1, 2, 2, 3]
    (msg,) = caught
    assert "3 symlinked folder(s)" in msg and "a/loop, a/to_c, b/loop2" in msg
    # A link from one tree into another already scanned is entered once only.
    os.symlink(tmp_path / "elsewhere", root / "c" / "again")
    assert in_thread(lambda: scan_image_folder(root))[0].files == [*ABC, "d/x.png"]


def test_fifos_and_devices_named_like_images_are_never_opened(tmp_path):
    root = tmp_path / "imgs"
    save_pngs(root, ABC)
    os.mkfifo(root / "a" / "x.png")  # open() on it blocked forever
    os.symlink("/dev/zero", root / "b" / "zero.png")
    os.symlink(tmp_path / "missing.png", root / "c" / "broken.png")
    fifo = str(root / "a" / "x.png")
    try:
        src, caught = in_thread(lambda: FolderSource(root, image_size=4, unreadable="raise"))
        assert src.files == ABC and len(src.labels) == 6
        (msg,) = caught
        assert "3 name(s) like images that are not regular files" in msg
        assert "a/x.png, b/zero.png, c/broken.png" in msg
        # A file swapped for a FIFO after the scan is refused when read, not waited on.
        with pytest.raises(OSError, match="not a regular file but a FIFO"):
            in_thread(lambda: decode_image(fifo, image_size=4, mode="L", max_pixels=100))
    finally:  # a hung reader would wait for a writer: give it one so the thread can end
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# 2. Labels: one class index per class over all splits


def test_a_class_missing_from_test_does_not_shift_the_test_labels(tmp_path):
    root = tmp_path / "imgs"
    save_pngs(root, [f"train/{f}" for f in ABC] + ["test/b/0.png", "test/c/0.png"])
    train = get_source(f"folder:{root}", split="train", image_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a split lacking a class is normal: no warning
        test = get_source(f"folder:{root}", split="test", image_size=4)
    assert train.class_names == test.class_names == ["a", "b", "c"]
    assert test.num_classes == 3
    # Used to be b=0, c=1 against train's b=1, c=2: every accuracy 0.0%.
    assert test.labels.tolist() == [1, 2]
    assert [label_of(train, f"{c}/0.png") for c in "bc"] == [1, 2]


def test_a_test_class_that_train_lacks_is_named(tmp_path):
    root = tmp_path / "imgs"
    save_pngs(root, [f"train/{f}" for f in ABC] + ["test/a/0.png", "test/zebra/0.png"])
    with pytest.warns(RuntimeWarning, match=r"class folder\(s\) that .*train' lacks: zebra"):
        test = FolderSource(root, split="test", image_size=4)
    train = FolderSource(root, split="train", image_size=4)
    assert train.class_names == test.class_names == ["a", "b", "c", "zebra"]
    assert test.labels.tolist() == [0, 3] and train.labels.max() == 2


# ---------------------------------------------------------------------------------------------
# 3. 16-bit images


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    pixels = np.array([[65535, 32768], [257, 0]], np.uint16).repeat(4, 0).repeat(4, 1)
    Image.fromarray(pixels).save(root / "a" / "deep.png")
    assert Image.open(root / "a" / "deep.png").mode == "I;16"
    for channels in (1, 3):
        image = FolderSource(root, image_size=8, channels=channels)[0]["image"]
        assert image.shape == (8, 8, channels)
        # Pillow's own conversion gave 255 255 / 255 0 (clipped to white).
        np.testing.assert_array_equal(image[::4, ::4, 0], [[255, 128], [1, 0]])
    i32 = Image.fromarray(np.array([[65535, 32768]], np.int32))
    assert i32.mode == "I" and np.asarray(to_8bit(i32)).tolist() == [[255, 128]]
    with pytest.raises(ValueError, match="32-bit integer image"):
        to_8bit(Image.fromarray(np.array([[70000]], np.int32)))


# ---------------------------------------------------------------------------------------------
# 4. The pixel limit and reduced-size decoding


def png_header_only(path, width, height):
    """A PNG that claims width x height (8-bit gray) but holds one row: decoding it all would
    fail, so an ImageTooLargeError proves that nothing was decoded."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    save_pngs(root, ["a/0.png"])
    png_header_only(root / "a" / "1_huge.png", 10_000, 5_000)  # 50 Mpx, under Pillow's limit
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    src = FolderSource(root, image_size=4, unreadable="raise")
    assert src.max_pixels == max_image_pixels() == 40_000_000
    with pytest.raises(UnreadableImageError) as info:
        src[1]
    msg = str(info.value)
    assert "10000x5000 = 50,000,000 pixels is over the decoding limit of 40,000,000" in msg
    assert f"{MAX_PIXELS_ENV}=50000000" in msg and "1_huge.png" in msg
    # The limit is configurable: the environment variable, or max_pixels=.
    monkeypatch.setenv(MAX_PIXELS_ENV, "60_000_000")
    assert FolderSource(root, image_size=4).max_pixels == 60_000_000
    assert FolderSource(root, image_size=4, max_pixels=100).max_pixels == 100
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV}='lots' must be a positive number"):
        FolderSource(root, image_size=4)


def test_big_jpegs_decode_at_reduced_size_within_the_limit(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1600), (200, 30, 30)).save(big, quality=90)
    # Decoded at 1/8 scale (250x200 = 0.05 Mpx): allowed under a 0.1 Mpx limit.
    image = decode_image(big, image_size=8, mode="RGB", max_pixels=100_000)
    assert image.shape == (8, 8, 3) and abs(int(image[..., 0].mean()) - 200) < 8
    Image.new("RGB", (2000, 1600)).save(tmp_path / "big.png")  # no reduced decoding for PNG
    with pytest.raises(ImageTooLargeError, match="2000x1600 = 3,200,000 pixels"):
        decode_image(tmp_path / "big.png", image_size=8, mode="RGB", max_pixels=100_000)
