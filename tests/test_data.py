"""Tests of ssl_jax.data: sources (IDX/Fashion-MNIST offline build, TFDS, folder, synthetic) and
the grain pipeline (epochs, sharding, exact resume). All data is tiny and made in tmp_path."""

import gzip
import json
import os
import pickle
import warnings

import grain
import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import (
    ArraySource,
    FolderSource,
    SyntheticSource,
    UnreadableImageError,
    collect,
    eval_batches,
    get_source,
    resize_center_crop,
    train_iterator,
)

# ---------------------------------------------------------------------------------------------
# IDX files and the offline Fashion-MNIST build


def write_idx(path, array, gz):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


def make_fake_fashion(directory, *, gz, n_train=40, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    os.makedirs(directory, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{ext}"), images, gz)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{ext}"), labels, gz)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip_and_errors(tmp_path, gz):
    from ssl_jax.data.fashion_mnist import read_idx

    a = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a", a, gz)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    raw = open(tmp_path / "a", "rb").read()
    plain = gzip.decompress(raw) if gz else raw
    (tmp_path / "short").write_bytes(plain[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + plain[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """A fake Fashion-MNIST (.gz IDX files) built once into a TFDS data dir via the env var."""
    root = tmp_path_factory.mktemp("fashion")
    idx_dir, data_dir = root / "idx", root / "tfds"
    arrays = make_fake_fashion(idx_dir, gz=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("SSL_JAX_FASHION_MNIST_DIR", str(idx_dir))
    try:
        train = get_source("fashion_mnist", split="train", data_dir=str(data_dir))
    finally:
        mp.undo()
    return arrays, str(data_dir), train


def test_fashion_mnist_offline_build_reads_back_originals(fashion):
    arrays, data_dir, train = fashion
    images, labels = arrays["train"]
    assert len(train) == len(images) and train.image_shape == (28, 28, 1)
    assert train.num_classes == 10 and train.class_names[0] == "T-shirt/top"
    ex = train[3]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 1)
    assert ex["label"].dtype == np.int32 and ex["label"] == labels[3]
    b = train.read_batch(range(len(train)))
    np.testing.assert_array_equal(b["image"][..., 0], images)  # same order as the IDX file
    np.testing.assert_array_equal(b["label"], labels)
    # Built as array_record under our own builder name, atomically (no incomplete dirs left).
    built = os.listdir(os.path.join(data_dir, "fashion_mnist_local"))
    assert built == ["1.0.0"]
    files = os.listdir(os.path.join(data_dir, "fashion_mnist_local", "1.0.0"))
    assert "fashion_mnist_local-train.array_record-00000-of-00001" in files
    # A second call reuses the copy: no IDX files needed any more.
    test = get_source("fashion_mnist", split="test", data_dir=data_dir, idx_dir="/nonexistent")
    np.testing.assert_array_equal(test.read_batch(range(len(test)))["label"], arrays["test"][1])
    # The generic TFDS reader opens the same prepared copy; the source pickles (grain workers).
    generic = get_source("tfds:fashion_mnist_local", split="test", data_dir=data_dir)
    np.testing.assert_array_equal(generic[5]["image"][..., 0], arrays["test"][0][5])
    clone = pickle.loads(pickle.dumps(train))
    np.testing.assert_array_equal(clone[7]["image"], train[7]["image"])


def test_fashion_mnist_plain_files_arg_resize_and_in_memory(tmp_path):
    arrays = make_fake_fashion(tmp_path / "idx", gz=False, n_train=10, n_test=3)
    src = get_source(
        "fashion_mnist",
        split="test",
        data_dir=str(tmp_path / "tfds"),
        idx_dir=str(tmp_path / "idx"),
        image_size=16,
    )
    assert src.image_shape == (16, 16, 1) and src[0]["image"].shape == (16, 16, 1)
    mem = get_source(
        "fashion_mnist", split="train", data_dir=str(tmp_path / "tfds"), in_memory=True
    )
    np.testing.assert_array_equal(
        mem.read_batch([0, 9])["image"][..., 0], arrays["train"][0][[0, 9]]
    )


def test_fashion_mnist_missing_files_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_JAX_FASHION_MNIST_DIR", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError) as e:
        get_source("fashion_mnist", data_dir=str(tmp_path / "tfds"), download=False)
    msg = str(e.value)
    for text in (
        "apt-get install dataset-fashion-mnist",
        "SSL_JAX_FASHION_MNIST_DIR",
        str(tmp_path / "nothing"),
        str(tmp_path / "tfds"),
        "train-images-idx3-ubyte",
        "tfds build fashion_mnist",
    ):
        assert text in msg


def test_fashion_mnist_download_when_no_local_files(tmp_path, monkeypatch):
    """The download path (TFDS's download manager, no TensorFlow), served from localhost."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import ssl_jax.data.fashion_mnist as fm

    arrays = make_fake_fashion(tmp_path / "served", gz=True, n_train=4, n_test=2)

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(tmp_path / "served"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(fm, "DOWNLOAD_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        src = get_source("fashion_mnist", data_dir=str(tmp_path / "tfds"), idx_dir="/nonexistent")
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_array_equal(src.read_batch(range(4))["image"][..., 0], arrays["train"][0])


def test_fashion_mnist_failed_or_killed_build_is_never_read(tmp_path):
    idx, data_dir = tmp_path / "idx", str(tmp_path / "tfds")
    arrays = make_fake_fashion(idx, gz=True, n_train=6, n_test=2)
    # A build killed midway leaves TFDS's temporary folder; it must be ignored.
    leftover = tmp_path / "tfds" / "fashion_mnist_local" / "incomplete.ABCDEF_1.0.0"
    leftover.mkdir(parents=True)
    (leftover / "fashion_mnist_local-train.array_record-00000-of-00001").write_bytes(b"junk")
    # A build that fails midway (labels file shorter than the images) leaves no dataset.
    good = (idx / "t10k-labels-idx1-ubyte.gz").read_bytes()
    write_idx(idx / "t10k-labels-idx1-ubyte.gz", arrays["test"][1][:1], gz=True)
    with pytest.raises(ValueError, match="expected 2 labels"):
        get_source("fashion_mnist", data_dir=data_dir, idx_dir=str(idx))
    assert not (tmp_path / "tfds" / "fashion_mnist_local" / "1.0.0").exists()
    (idx / "t10k-labels-idx1-ubyte.gz").write_bytes(good)
    src = get_source("fashion_mnist", split="test", data_dir=data_dir, idx_dir=str(idx))
    np.testing.assert_array_equal(src.read_batch([0, 1])["label"], arrays["test"][1])


def test_fashion_mnist_reads_a_copy_prepared_by_tfds_own_builder(tmp_path):
    """A stock 'fashion_mnist' copy (PNG Image feature, TFDS's shuffled order) is used as is."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification.mnist import FashionMNIST

    arrays = make_fake_fashion(tmp_path / "idx", gz=True, n_train=5, n_test=3)

    with tfds.core.registered.skip_registration():
        # TFDS's builder with only its inputs replaced (its own needs TensorFlow and internet).
        class StockFashion(FashionMNIST):
            name = "fashion_mnist"

            def _split_generators(self, dl_manager):
                return {s: self._generate_examples(s) for s in arrays}

            def _generate_examples(self, split):
                for i, (image, label) in enumerate(zip(*arrays[split], strict=True)):
                    yield i, {"image": Image.fromarray(image, "L"), "label": int(label)}

    StockFashion(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    src = get_source(
        "fashion_mnist", data_dir=str(tmp_path / "tfds"), idx_dir="/nonexistent", download=False
    )
    assert not (tmp_path / "tfds" / "fashion_mnist_local").exists()  # nothing was built
    got = src.read_batch(range(len(src)))
    assert got["image"].shape == (5, 28, 28, 1)
    want = {(img.tobytes(), int(lab)) for img, lab in zip(*arrays["train"], strict=True)}
    assert {
        (img.tobytes(), int(lab)) for img, lab in zip(got["image"], got["label"], strict=True)
    } == want


def test_tfds_missing_dataset_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tfds build cifar10 --data_dir") as e:
        get_source("tfds:cifar10", data_dir=str(tmp_path))
    assert str(tmp_path) in str(e.value)


# ---------------------------------------------------------------------------------------------
# Folder, synthetic, spec errors


def make_folder(root):
    """a/: RGB PNG 12x8, grayscale PNG 6x6, corrupt JPEG; b/: JPEG 10x10, nested RGBA PNG."""
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    Image.new("RGB", (12, 8), (200, 10, 10)).save(root / "a" / "0_red.png")
    Image.new("L", (6, 6), 77).save(root / "a" / "1_gray.png")
    (root / "a" / "2_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (10, 10), (10, 200, 10)).save(root / "b" / "3_green.JPG")
    Image.new("RGBA", (9, 7), (10, 10, 200, 255)).save(root / "b" / "deep" / "4_blue.png")
    (root / "b" / "notes.txt").write_text("not an image")


def test_folder_source_labels_rgb_resize_and_corrupt(tmp_path):
    make_folder(tmp_path / "imgs")
    src = get_source(f"folder:{tmp_path / 'imgs'}", image_size=4)
    assert len(src) == 5 and src.class_names == ["a", "b"] and src.num_classes == 2
    assert src.image_shape == (4, 4, 3)
    assert [int(src[i]["label"]) for i in (0, 1, 3, 4)] == [0, 0, 1, 1]
    gray = src[1]["image"]
    assert gray.shape == (4, 4, 3) and (gray == 77).all()  # grayscale converted to RGB
    assert src.num_corrupt == 0
    with pytest.warns(RuntimeWarning, match="2_bad.jpg"):
        sub = src[2]  # corrupt: replaced by the next readable file (3_green, label 1)
    np.testing.assert_array_equal(sub["image"], src[3]["image"])
    assert int(sub["label"]) == 1
    assert src.num_corrupt == 1 and src.corrupt_files == ["a/2_bad.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = train_iterator(src, global_batch_size=5, seed=0, prefetch=0)
        batch = next(it)
        assert batch["image"].shape == (5, 4, 4, 3) and batch["label"].shape == (5,)
        clone = pickle.loads(pickle.dumps(src))
        assert clone.find_corrupt() == ["a/2_bad.jpg"]
    assert get_source(f"folder:{tmp_path / 'imgs'}", image_size=4, channels=1)[0][
        "image"
    ].shape == (4, 4, 1)


def test_folder_source_errors_and_split_subfolder(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "x.txt").write_text("")
    with pytest.raises(
        FileNotFoundError, match=r"No images found in .*empty.*\.jpg, \.jpeg, \.png"
    ):
        get_source(f"folder:{tmp_path / 'empty'}", image_size=8)
    (tmp_path / "one" / "cls").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(tmp_path / "one" / "cls" / "x.png")
    # The message names the config field a CLI user sets, not the Python argument only.
    with pytest.raises(ValueError, match=r"--config\.data_image_size=N"):
        get_source(f"folder:{tmp_path / 'one'}")
    (tmp_path / "ds" / "test" / "k").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(tmp_path / "ds" / "test" / "k" / "x.png")
    src = get_source(f"folder:{tmp_path / 'ds'}", split="test", image_size=3)
    assert src.class_names == ["k"] and len(src) == 1


def save_pngs(root, names, size=6):
    """Tiny grayscale PNGs at root/NAME (value i for the i-th name)."""
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (size, size), 10 * i).save(root / name)


def test_folder_split_never_falls_back_to_the_training_images(tmp_path):
    flat = tmp_path / "flat"
    save_pngs(flat, ["cat/0.png", "cat/1.png", "dog/2.png"])
    for split in ("train", None):  # the training split may be the whole folder...
        src = FolderSource(flat, split=split, image_size=4)
        assert src.root == str(flat) and src.class_names == ["cat", "dog"]
    for split in ("test", "validation"):  # ...no other split may: it would score training images
        with pytest.raises(FileNotFoundError) as info:
            get_source(f"folder:{flat}", split=split, image_size=4)
        msg = str(info.value)
        assert f"no '{split}/' sub-folder" in msg and str(flat) in msg
        assert f"{flat}/train/<class>/" in msg and f"{flat}/test/<class>/" in msg

    split = tmp_path / "split"
    save_pngs(split, ["train/cat/0.png", "train/dog/1.png", "test/cat/2.png", "test/dog/3.png"])
    for name in ("train", None):
        assert FolderSource(split, split=name, image_size=4).root == str(split / "train")
    assert get_source(f"folder:{split}", split="test", image_size=4).class_names == ["cat", "dog"]
    # Split folders are never classes: a missing split is an error, not a 2-class 'train'/'test'.
    with pytest.raises(
        FileNotFoundError, match=r"split sub-folders test/, train/ but no 'validation/'"
    ):
        get_source(f"folder:{split}", split="validation", image_size=4)
    only_test = tmp_path / "only_test"
    save_pngs(only_test, ["cat/0.png", "test/cat/1.png"])
    with pytest.raises(FileNotFoundError, match=r"split sub-folders test/ but no 'train/'"):
        get_source(f"folder:{only_test}", split="train", image_size=4)


def test_folder_unreadable_raise_names_the_file(tmp_path):
    make_folder(tmp_path / "imgs")
    src = get_source(f"folder:{tmp_path / 'imgs'}", image_size=4, unreadable="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no substitution warning: an error instead
        assert int(src[3]["label"]) == 1
        with pytest.raises(UnreadableImageError, match=r"2_bad\.jpg") as info:
            src[2]
        assert isinstance(info.value, ValueError) and info.value.path == "a/2_bad.jpg"
        # The in-order evaluation reader stops too (grain re-raises the same error).
        with pytest.raises(UnreadableImageError, match=r"2_bad\.jpg"):
            collect(eval_batches(src, batch_size=2))
        assert src.find_corrupt() == ["a/2_bad.jpg"]
    good = src.without(["a/2_bad.jpg"])
    assert len(good) == 4 and len(src) == 5
    assert good.files == ["a/0_red.png", "a/1_gray.png", "b/3_green.JPG", "b/deep/4_blue.png"]
    np.testing.assert_array_equal(good.labels, [0, 0, 1, 1])
    assert collect(eval_batches(good, batch_size=2))["image"].shape == (4, 4, 4, 3)
    with pytest.raises(ValueError, match="unreadable must be one of"):
        get_source(f"folder:{tmp_path / 'imgs'}", image_size=4, unreadable="skip")


def test_folder_where_nothing_decodes_fails_when_built(tmp_path):
    for name in ("a/0.png", "a/1.jpg"):
        (tmp_path / "bad" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(b"garbage, not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A ValueError (which the CLI reports), before any pipeline or compilation.
        with pytest.raises(ValueError, match=r"None of the 2 image files .*bad.* a/0\.png"):
            get_source(f"folder:{tmp_path / 'bad'}", image_size=4)


def test_make_source_folder_channels_splits_and_monitor(tmp_path, capsys):
    from helpers import tiny_config
    from ssl_jax.data import source_from_config as make_source
    from ssl_jax.evaluation.monitor import make_monitor

    flat = tmp_path / "flat"
    save_pngs(flat, ["a/0.png", "a/1.png", "b/2.png", "b/3.png"])
    config = tiny_config(dataset=f"folder:{flat}", data_image_size=8, eval_every=2)
    config.image_channels = 1
    src = make_source(config)
    assert src.image_shape == (8, 8, 1)  # config.image_channels reaches the folder source
    assert src.unreadable == "substitute"  # training: a shuffled stream may substitute
    assert make_source(config, unreadable="raise").unreadable == "raise"
    config.image_channels = 3
    assert make_source(config).image_shape == (8, 8, 3)
    # No test/ folder: evaluation gets an error, the monitor turns itself off and says why.
    with pytest.raises(FileNotFoundError, match="no 'test/' sub-folder"):
        make_source(config, split="test")
    assert make_monitor(config, src, lambda: make_source(config, config.eval_split)) is None
    assert "kNN monitor off: no test split to score" in capsys.readouterr().out
    # With a test/ folder, the evaluation splits never substitute an unreadable image.
    split = tmp_path / "split"
    save_pngs(split, ["train/a/0.png", "train/b/1.png", "test/a/2.png", "test/b/3.png"])
    config.dataset = f"folder:{split}"
    assert make_source(config).root == str(split / "train")
    test = make_source(config, split="test")
    assert test.root == str(split / "test") and test.unreadable == "raise"


def test_resize_center_crop_takes_the_center():
    # 8 wide, 16 tall: red top quarter, green middle half, blue bottom quarter.
    img = np.zeros((16, 8, 3), np.uint8)
    img[:4, :, 0] = 255
    img[4:12, :, 1] = 255
    img[12:, :, 2] = 255
    out = resize_center_crop(img, 4)  # -> 4 wide x 8 tall, center 4 rows = green
    assert out.shape == (4, 4, 3)
    assert out[1:3, :, 1].min() > 200 and out[1:3, :, [0, 2]].max() < 50


def test_synthetic_is_deterministic_and_separates_classes():
    a = SyntheticSource(num_examples=200, image_shape=(8, 8, 3), num_classes=4, seed=1)
    b = get_source("synthetic", seed=1, num_examples=200, image_shape=(8, 8, 3), num_classes=4)
    np.testing.assert_array_equal(
        a.read_batch(range(50))["image"], b.read_batch(range(50))["image"]
    )
    other = get_source("synthetic", seed=2, num_examples=200, image_shape=(8, 8, 3), num_classes=4)
    assert not np.array_equal(a[0]["image"], other[0]["image"])
    assert int(a[0]["label"]) == int(other[0]["label"])
    # Nearest class mean, fit on one split, separates the classes of another split.
    test = get_source(
        "synthetic", split="test", num_examples=80, image_shape=(8, 8, 3), num_classes=4
    )
    tr, te = a.read_batch(range(200)), test.read_batch(range(80))
    x, xt = tr["image"].reshape(200, -1) / 255.0, te["image"].reshape(80, -1) / 255.0
    means = np.stack([x[tr["label"] == k].mean(0) for k in range(4)])
    pred = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == te["label"]).mean() > 0.95
    assert np.bincount(tr["label"]).tolist() == [50] * 4
    assert get_source("synthetic", image_size=16, num_examples=4).image_shape == (16, 16, 3)


def test_unknown_spec_lists_accepted_forms():
    with pytest.raises(ValueError, match=r"Unknown data source spec 'mnist'.*tfds:NAME.*folder:"):
        get_source("mnist")


# ---------------------------------------------------------------------------------------------
# Pipeline


def index_source(n=50):
    """Image pixel value and label both equal the example index (mod 256)."""
    images = np.broadcast_to(
        (np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 1)
    )
    return ArraySource(np.ascontiguousarray(images), np.arange(n))


def take(it, k):
    return [next(it) for _ in range(k)]


def test_pipeline_shapes_and_epochs_are_permutations():
    src = index_source(50)
    it = train_iterator(src, global_batch_size=8, seed=3, prefetch=2)
    assert it.steps_per_epoch == 6 and it.num_examples == 50 and it.examples_per_epoch == 48
    batches = take(it, 18)
    b = batches[0]
    assert b["image"].dtype == np.uint8 and b["image"].shape == (8, 2, 2, 1)
    assert b["label"].dtype == np.int32 and b["label"].shape == (8,)
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])
    epochs = [np.concatenate([x["label"] for x in batches[6 * e : 6 * e + 6]]) for e in range(3)]
    for order in epochs:  # every example at most once per epoch; 2 dropped (remainder)
        assert len(order) == 48 and len(set(order.tolist())) == 48 and order.max() < 50
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # the dropped 2 differ too
    assert it.step == 18 and it.epoch == 3
    same = take(train_iterator(src, global_batch_size=8, seed=3, prefetch=0), 18)
    for x, y in zip(batches, same, strict=True):
        np.testing.assert_array_equal(x["label"], y["label"])
    other = take(train_iterator(src, global_batch_size=8, seed=4, prefetch=0), 6)
    assert not np.array_equal(np.concatenate([x["label"] for x in other]), epochs[0])


def test_pipeline_finite_epochs_and_errors():
    src = index_source(20)
    assert len(list(train_iterator(src, global_batch_size=6, seed=0, num_epochs=2))) == 6
    with pytest.raises(
        ValueError, match=r"global_batch_size 10 is not divisible by process_count 4"
    ):
        train_iterator(src, global_batch_size=10, seed=0, process_count=4)
    with pytest.raises(ValueError, match="larger than the source"):
        train_iterator(src, global_batch_size=32, seed=0)


@pytest.mark.parametrize("process_count", [2, 4])
def test_global_batch_is_independent_of_process_count(process_count):
    src = index_source(50)
    single = take(train_iterator(src, global_batch_size=8, seed=7, prefetch=0), 14)
    shards = [
        take(
            train_iterator(
                src,
                global_batch_size=8,
                seed=7,
                process_index=p,
                process_count=process_count,
                prefetch=0,
            ),
            14,
        )
        for p in range(process_count)
    ]
    for step in range(14):
        parts = [shards[p][step] for p in range(process_count)]
        assert parts[0]["label"].shape == (8 // process_count,)
        np.testing.assert_array_equal(
            np.concatenate([x["label"] for x in parts]), single[step]["label"]
        )
        np.testing.assert_array_equal(
            np.concatenate([x["image"] for x in parts]), single[step]["image"]
        )


@pytest.mark.parametrize("stop", [3, 5, 6])  # mid-epoch, last step of an epoch, at the boundary
def test_exact_resume_from_json_state(stop):
    src = index_source(50)
    ref = take(train_iterator(src, global_batch_size=8, seed=1, prefetch=2), 16)
    it = train_iterator(src, global_batch_size=8, seed=1, prefetch=2)
    take(it, stop)
    state = json.loads(json.dumps(it.get_state()))
    resumed = train_iterator(src, global_batch_size=8, seed=1, prefetch=2)
    resumed.set_state(state)
    assert resumed.step == stop
    for k, b in enumerate(take(resumed, 16 - stop)):
        np.testing.assert_array_equal(b["label"], ref[stop + k]["label"])
    # The original iterator, rewound to the saved state, repeats itself too.
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["label"], ref[stop]["label"])
    with pytest.raises(ValueError, match="global_batch_size: saved 8, now 10"):
        train_iterator(src, global_batch_size=10, seed=1).set_state(state)


def test_resume_with_another_process_count():
    """A state saved by 1 process restores into 2 processes (global batches are the same)."""
    src = index_source(50)
    kw = dict(global_batch_size=8, seed=2, prefetch=2)
    ref = take(train_iterator(src, **kw), 14)
    it = train_iterator(src, **kw)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    shards = [train_iterator(src, process_index=p, process_count=2, **kw) for p in (0, 1)]
    for shard in shards:
        shard.set_state(state)
    for step in range(5, 9):
        got = np.concatenate([next(shard)["label"] for shard in shards])
        np.testing.assert_array_equal(got, ref[step]["label"])
    # ... and a state saved after that restart resumes exactly in a fresh iterator.
    state2 = json.loads(json.dumps(shards[1].get_state()))
    again = train_iterator(src, process_index=1, process_count=2, **kw)
    again.set_state(state2)
    for step in range(9, 14):
        np.testing.assert_array_equal(next(again)["label"], ref[step]["label"][4:])


def test_resume_through_grain_checkpoint_handler(tmp_path):
    from etils import epath

    src = index_source(30)
    it = train_iterator(src, global_batch_size=4, seed=0, process_index=1, process_count=2)
    take(it, 9)
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)
    expected = take(it, 3)
    fresh = train_iterator(src, global_batch_size=4, seed=0, process_index=1, process_count=2)
    grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=fresh)
    for a, b in zip(take(fresh, 3), expected, strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_batches_in_order_padded_and_sharded():
    src = index_source(23)
    ev = eval_batches(src, batch_size=8)
    batches = list(ev)
    assert len(ev) == len(batches) == 3 and ev.num_examples == 23
    assert all(b["image"].shape == (8, 2, 2, 1) for b in batches)
    assert batches[-1]["mask"].tolist() == [True] * 7 + [False]
    assert batches[-1]["label"][-1] == -1
    np.testing.assert_array_equal(collect(batches)["label"], np.arange(23))
    shards = [
        list(eval_batches(src, batch_size=8, process_index=p, process_count=2)) for p in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 3
    for step in range(3):
        for key in ("label", "mask"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][step][key], shards[1][step][key]]), batches[step][key]
            )


def test_worker_processes_give_the_same_batches_and_resume():
    # With JAX imported, grain's mp_prefetch needs absl flags parsed: train_iterator sees to it.
    import jax  # noqa: F401

    src = index_source(40)
    ref = take(train_iterator(src, global_batch_size=4, seed=5, prefetch=0), 8)
    it = train_iterator(src, global_batch_size=4, seed=5, worker_count=2, prefetch=1)
    try:
        got = take(it, 5)
        state = json.loads(json.dumps(it.get_state()))
    finally:
        it.close()
    resumed = train_iterator(src, global_batch_size=4, seed=5, worker_count=2, prefetch=1)
    try:
        resumed.set_state(state)
        got += take(resumed, 3)
    finally:
        resumed.close()
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
