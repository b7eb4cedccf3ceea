"""Runs on one's own data and models: image folders, .npz files, model
names, and the teacher sanity check."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from kd_keras.config import RunConfig, data_kind
from kd_keras.data.image_folders import load_image_folder
from kd_keras.data.npz import load_npz
from kd_keras.data.source_checks import carve_test_split
from kd_keras.errors import MAX_MESSAGE_CHARS, ConfigError, DataSourceError


def write_images(root, per_class, size=(12, 12), classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=size[::-1] + (3,), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


# --- Model names: validated without Keras ---


def test_unknown_model_name_is_refused_with_the_valid_names():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_preset("smoke", student_model="vgg16")
    message = str(error.value)
    assert "'vgg16'" in message
    for name in ("resnet<depth>", "mobilenetv3small", "efficientnetb0", ".keras"):
        assert name in message
    with pytest.raises(ConfigError, match="unknown option 'beta=1'.*alpha="):
        RunConfig.from_preset("smoke", teacher_model="mobilenetv3small:beta=1")
    with pytest.raises(ConfigError, match="never downloads"):
        RunConfig.from_preset("smoke", teacher_model="efficientnetb0:weights=imagenet")
    with pytest.raises(ConfigError, match="at least 32x32"):
        RunConfig.from_preset("smoke", student_model="efficientnetb0", image_size=16)
    config = RunConfig.from_preset(
        "smoke", student_model="mobilenetv3small:alpha=0.35,minimalistic=true", image_size=32
    )
    assert config.student_model.startswith("mobilenetv3small")


def test_model_names_are_validated_without_importing_keras():
    code = (
        "import sys\n"
        "from kd_keras.config import RunConfig, ConfigError\n"
        "RunConfig.from_preset('smoke', teacher_model='resnet20', student_model='efficientnetb0')\n"
        "try:\n"
        "    RunConfig.from_preset('smoke', teacher_model='nosuchnet')\n"
        "except ConfigError:\n"
        "    pass\n"
        "print('keras' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


# --- Image folders ---


def test_image_folder_reads_sorted_classes_and_carves_a_stratified_test_split(tmp_path):
    write_images(tmp_path / "data", per_class=10)
    assert data_kind(tmp_path / "data") == "folder"
    (x_train, y_train), (x_test, y_test), names = load_image_folder(tmp_path / "data", seed=3)
    assert names == ["cat", "dog", "emu"]
    assert x_train.dtype == np.uint8 and x_train.shape[1:] == (12, 12, 3)
    assert np.bincount(y_test).tolist() == [2, 2, 2]  # 20% of 10 per class.
    assert np.bincount(y_train).tolist() == [8, 8, 8]
    # The pixels are the files' (class "cat" image 0 is the first one written).
    first = np.asarray(Image.open(tmp_path / "data" / "cat" / "0.png"))
    stacked = np.concatenate([x_train, x_test])
    assert any(np.array_equal(first, image) for image in stacked)
    again = load_image_folder(tmp_path / "data", seed=3)
    assert np.array_equal(again[1][0], x_test)  # Seeded.


def test_image_folder_train_test_layout_and_resize(tmp_path):
    write_images(tmp_path / "d" / "train", per_class=4, size=(20, 10))
    write_images(tmp_path / "d" / "test", per_class=1, size=(7, 9))
    (x_train, y_train), (x_test, y_test), names = load_image_folder(tmp_path / "d", image_size=16)
    assert x_train.shape == (12, 16, 16, 3) and x_test.shape == (3, 16, 16, 3)
    assert y_test.tolist() == [0, 1, 2]
    with pytest.raises(DataSourceError, match="pass --image-size"):
        load_image_folder(tmp_path / "d")


def test_bad_image_folders_give_one_line_errors(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataSourceError, match="no class subfolders"):
        load_image_folder(tmp_path / "flat")

    write_images(tmp_path / "notes", per_class=3)
    (tmp_path / "notes" / "dog" / "readme.txt").write_text("hi")
    with pytest.raises(DataSourceError, match=r"readme.txt.*not an image file"):
        load_image_folder(tmp_path / "notes")

    write_images(tmp_path / "broken", per_class=3)
    (tmp_path / "broken" / "dog" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataSourceError, match=r"x.png.*not a readable image"):
        load_image_folder(tmp_path / "broken")

    write_images(tmp_path / "mixed", per_class=3)
    Image.new("RGB", (30, 20)).save(tmp_path / "mixed" / "emu" / "big.png")
    with pytest.raises(DataSourceError, match=r"30x20.*--image-size"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", image_size=12)[0][0].shape[1:] == (12, 12, 3)

    write_images(tmp_path / "few", per_class=3)
    for extra in ("1.png", "2.png"):
        (tmp_path / "few" / "emu" / extra).unlink()
    with pytest.raises(DataSourceError, match=r"'emu' \(1\) have fewer than 3 images"):
        load_image_folder(tmp_path / "few")
    for error in (DataSourceError,):
        message = str(pytest.raises(error, load_image_folder, tmp_path / "few").value)
        assert "\n" not in message


def test_carve_test_split_is_proportional_and_leaves_two_per_class():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 3)
    test, rest = carve_test_split(labels, seed=0)
    assert np.bincount(labels[test]).tolist() == [10, 1, 1]
    assert sorted(np.concatenate([test, rest]).tolist()) == list(range(len(labels)))


# --- .npz files ---


def test_npz_keys_class_names_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 10, 10), dtype=np.uint8)  # Grey.
    y = np.arange(30) % 3
    np.savez(
        tmp_path / "d.npz",
        x_train=x,
        y_train=y.reshape(-1, 1),
        class_names=np.array(["a", "b", "c"]),
    )
    assert data_kind(tmp_path / "d.npz") == "npz"
    (x_train, y_train), (x_test, y_test), names = load_npz(tmp_path / "d.npz")
    assert names == ["a", "b", "c"] and x_test is None
    assert x_train.shape == (30, 10, 10, 3) and np.array_equal(x_train[..., 1], x)
    assert y_train.dtype == np.int64 and y_train.shape == (30,)

    np.savez(tmp_path / "float.npz", x_train=x / 255.0, y_train=y)
    with pytest.raises(DataSourceError, match="scaled to 0-1"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "nolabels.npz", x_train=x)
    with pytest.raises(DataSourceError, match="needs x_train and y_train"):
        load_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "range.npz", x_train=x, y_train=y, class_names=np.array(["a", "b"]))
    with pytest.raises(DataSourceError, match=r"y_train' must lie in \[0, 1\]"):
        load_npz(tmp_path / "range.npz")


def test_prepare_splits_on_npz_records_classes(tmp_path):
    from kd_keras.data.splits import prepare_splits

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    y = np.arange(60) % 4
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    splits = prepare_splits(tmp_path / "d.npz", val_size=8, seed=0)
    assert splits["classes"] == ("0", "1", "2", "3")
    assert len(splits["val"][1]) == 8 and len(splits["train"][1]) == 32
    assert np.bincount(splits["val"][1]).tolist() == [2, 2, 2, 2]
    assert len(splits["test"][1]) == 20
    with pytest.raises(
        ConfigError,
        match=r"--val-size 39 leaves no training image in class '0', '1', '2'; at most 36",
    ):
        prepare_splits(tmp_path / "d.npz", val_size=39, seed=0)


# --- Runs (TensorFlow) ---


def constant_teacher(path, shape, classes):
    """A teacher whose logits are all zero: it always predicts class 0."""
    import keras

    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(classes, kernel_initializer="zeros")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def balanced_npz(path, n=200, size=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    # Class c is brighter in channel c % 3: learnable in one epoch.
    x = rng.integers(0, 120, size=(n, size, size, 3), dtype=np.uint8)
    for c in range(classes):
        x[y == c, :, :, c % 3] += np.uint8(40 * (c + 1) // 2)
    np.savez(
        path,
        x_train=x[: n * 3 // 4],
        y_train=y[: n * 3 // 4],
        x_test=x[n * 3 // 4 :],
        y_test=y[n * 3 // 4 :],
        class_names=np.array([f"k{c}" for c in range(classes)]),
    )
    return path


@pytest.mark.slow
def test_near_chance_teacher_is_refused_with_the_causes(tmp_path):
    from kd_keras.errors import TeacherError
    from kd_keras.train.pipeline import run_pipeline

    data = balanced_npz(tmp_path / "d.npz")
    teacher = constant_teacher(tmp_path / "t.keras", (16, 16, 3), 4)
    config = tiny_config(data=str(data), teacher=str(teacher), val_size=40, teacher_epochs=0)
    with pytest.raises(TeacherError) as error:
        run_pipeline(config, tmp_path / "run")
    message = str(error.value)
    assert "validation accuracy 0.2500 on 40 images, chance 0.2500" in message
    for cause in (
        "preprocessing",
        "0-255",
        "Rescaling(1/255)",
        "class order",
        "k0, k1, k2, k3",
    ):
        assert cause in message
    assert not (tmp_path / "run").exists()  # Refused before the folder is made.
    assert "--accept-weak-teacher" in message
    # Meant: the run goes ahead, warns, and records the teacher's chance level.
    config.accept_weak_teacher = True
    rows = run_pipeline(config, tmp_path / "run")
    assert [r["stage"] for r in rows] == ["teacher", "student_baseline", "student_distilled"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["accept_weak_teacher"]


@pytest.mark.slow
def test_npz_run_with_odd_image_size_records_classes(tmp_path):
    from kd_keras.train.pipeline import run_pipeline

    data = balanced_npz(tmp_path / "d.npz", size=20)
    config = tiny_config(data=str(data), val_size=40, image_size=18)
    rows = run_pipeline(config, tmp_path / "run")
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["classes"] == ["k0", "k1", "k2", "k3"]
    assert classes["kind"] == "npz" and classes["image_shape"] == [18, 18, 3]
    assert classes["images"] == {"train": 110, "val": 40, "test": 50}
    teacher = json.loads((tmp_path / "run" / "stages" / "teacher.json").read_text())
    assert teacher["chance_accuracy"] == 0.25
    assert [r["stage"] for r in rows] == ["teacher", "student_baseline", "student_distilled"]
    import keras

    model = keras.saving.load_model(tmp_path / "run" / "models" / "student_distilled.keras")
    assert tuple(model.input_shape) == (None, 18, 18, 3) and model.output_shape == (None, 4)


@pytest.mark.slow
def test_image_folder_run_with_a_keras_applications_student(tmp_path, cifar10_archive):
    from kd_keras.data.cifar10 import CLASS_NAMES, load_cifar10
    from kd_keras.train.pipeline import run_pipeline

    _, (x_test, y_test) = load_cifar10(cifar10_archive)
    root = tmp_path / "images"
    for c, name in enumerate(CLASS_NAMES):
        (root / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(y_test == c)[:30]):
            Image.fromarray(x_test[index]).save(root / name / f"{i:03d}.png")
    config = tiny_config(
        data=str(root),
        val_size=50,
        student_model="mobilenetv3small:alpha=0.35,minimalistic=true",
    )
    rows = run_pipeline(config, tmp_path / "run")
    out = tmp_path / "run"
    classes = json.loads((out / "classes.json").read_text())
    assert classes["classes"] == list(CLASS_NAMES)  # Sorted folder names.
    assert classes["images"] == {"train": 190, "val": 50, "test": 60}
    assert classes["image_shape"] == [32, 32, 3]
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["student_distilled"]["model"] == "student_mobilenetv3small"
    assert by_stage["student_distilled"]["depth"] is None
    assert by_stage["teacher"]["depth"] == 8
    assert 0.0 <= by_stage["student_distilled"]["test_accuracy"] <= 1.0
    # The same student as the baseline: same architecture and parameter count.
    assert by_stage["student_baseline"]["params"] == by_stage["student_distilled"]["params"]
    assert json.loads((out / "config.json").read_text())["student_model"].startswith(
        "mobilenetv3small"
    )


def test_evaluate_uses_the_datas_classes_and_image_size(tmp_path, capsys):
    from kd_keras.cli import main

    data = balanced_npz(tmp_path / "d.npz", size=20)  # 4 classes, 50 test images.
    model = constant_teacher(tmp_path / "m.keras", (18, 18, 3), 4)
    assert main(["evaluate", str(model), "--data", str(data), "--image-size", "18"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The model always says class 0: its accuracy is the share of class 0.
    y_test = np.load(data)["y_test"]
    assert result["test_images"] == len(y_test) == 50
    assert result["accuracy"] == pytest.approx(np.mean(y_test == 0)) == 12 / 50
    # Without --image-size the model's (18, 18) input does not fit 20x20 images.
    assert main(["evaluate", str(model), "--data", str(data)]) == 2
    assert "takes inputs of shape (18, 18, 3), not (20, 20, 3)" in capsys.readouterr().err


def channel_teacher(path, shape, classes):
    """A teacher whose logits are the mean of each colour channel (and 0
    for any further class): on `balanced_npz` it gets classes 0-2 right and
    calls class 3 (brighter in red, like class 0) class 0."""
    import keras

    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    kernel = np.zeros((3, classes), dtype="float32")
    kernel[[0, 1, 2], [0, 1, 2]] = 1.0
    dense = keras.layers.Dense(classes, use_bias=False)
    outputs = dense(x)
    dense.set_weights([kernel])
    keras.Model(inputs, outputs).save(path)
    return path


def test_evaluate_per_class_on_a_runs_validation_split(tmp_path, capsys):
    from kd_keras.cli import main
    from kd_keras.data.splits import prepare_splits

    data = balanced_npz(tmp_path / "d.npz")  # 4 classes, 150 train, 50 test images.
    model = channel_teacher(tmp_path / "m.keras", (16, 16, 3), 4)
    assert main(["evaluate", str(model), "--data", str(data), "--per-class"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_images"] == 50
    per_class = result["per_class"]
    assert list(per_class) == ["k0", "k1", "k2", "k3"]
    assert [per_class[k]["accuracy"] for k in per_class] == [1.0, 1.0, 1.0, 0.0]
    assert [per_class[k]["images"] for k in per_class] == [12, 12, 13, 13]
    assert result["accuracy"] == pytest.approx(37 / 50)

    # The validation split of a run: the one its seed and val_size carved.
    run = tmp_path / "run"
    run.mkdir()
    config = tiny_config(data=str(data), val_size=40, seed=3)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    assert main(["evaluate", str(model), "--run", str(run), "--split", "val", "--per-class"]) == 0
    result = json.loads(capsys.readouterr().out)
    val_labels = prepare_splits(str(data), val_size=40, seed=3)["val"][1]
    assert result["val_images"] == 40 and "test_images" not in result
    assert [r["images"] for r in result["per_class"].values()] == list(np.bincount(val_labels))
    assert result["accuracy"] == pytest.approx(np.mean(val_labels != 3))
    assert result["per_class"]["k3"]["accuracy"] == 0.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "val"], "--split val needs --run RUN_DIR"),
        (["--run", "{tmp}"], "is not a kd_keras run folder (no config.json)"),
    ],
)
def test_evaluate_refuses_a_split_it_cannot_carve(tmp_path, capsys, args, message):
    from kd_keras.cli import main

    model = constant_teacher(tmp_path / "m.keras", (16, 16, 3), 4)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["evaluate", str(model), "--data", str(tmp_path / "none.npz"), *args]) == 2
    assert message in capsys.readouterr().err


def test_dry_run_describes_the_users_data_and_models(tmp_path, capsys):
    from kd_keras.cli import main

    data = balanced_npz(tmp_path / "d.npz", size=20)  # 150 train, 50 test, 4 classes.
    assert (
        main(
            [
                "run",
                "--preset",
                "smoke",
                "--data",
                str(data),
                "--val-size",
                "40",
                "--train-per-class",
                "20",
                "--val-per-class",
                "10",
                "--test-per-class",
                "10",
                "--image-size",
                "32",
                "--student-model",
                "mobilenetv3small:alpha=0.35",
                "--precision",
                "float32",
                "--teacher-precision",
                "float32",
                "--out",
                str(tmp_path / "run"),
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("}\n{") + 2 :])  # The second JSON document.
    assert summary["data"] == {
        "kind": "npz",
        "train_images": 80,
        "val_images": 40,
        "test_images": 40,
        "image_shape": [32, 32, 3],
        "num_classes": 4,
    }
    assert summary["student"]["model"] == "mobilenetv3small:alpha=0.35"
    assert "blocks" not in summary["student"] and "blocks" in summary["teacher"]
    assert summary["estimate"]["train_images"] == 80
    assert summary["estimate"]["steps_per_epoch"] == -(
        -80 // RunConfig.from_preset("smoke").batch_size
    )
    assert not (tmp_path / "run").exists()


# --- Sizes that follow the data; data that travels; bounded, honest reads ---


def folder_of(root, counts, size=(12, 12), grey=()):
    """Class folders with `counts[name]` images each; classes in `grey` are
    saved as one-channel PNGs."""
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 200, size=size[::-1] + (3,), dtype=np.uint8)
            pixels[..., c % 3] += 50
            image = Image.fromarray(pixels)
            (image.convert("L") if name in grey else image).save(root / name / f"{i}.png")
    return root


def test_a_small_folder_needs_no_size_flag_and_the_sizes_are_recorded_resolved(tmp_path):
    from kd_keras.data.splits import describe_splits, splits_for

    # 4 classes of 45 images (names with spaces, one class grey): 180 images.
    names = {"red car": 45, "blue sky": 45, "green leaf": 45, "grey cat": 45}
    data = folder_of(tmp_path / "my images", names, size=(20, 20), grey=("grey cat",))
    for preset in ("quick", "full"):
        config = RunConfig.from_preset(preset, data=str(data))
        # CIFAR-10's preset sizes are not applied to other data.
        assert [config.val_size, config.train_per_class, config.val_per_class] == [None] * 3
    splits = splits_for(config, batch_size=config.batch_size)
    # 36 test images carved (20 %), a tenth of the other 144 for validation.
    assert splits["sizes"] == {
        "val_size": 14,
        "train_per_class": 33,
        "val_per_class": 4,
        "test_per_class": 9,
    }
    assert [len(splits[k][1]) for k in ("train", "val", "test")] == [130, 14, 36]
    assert splits["train"][0].shape[1:] == (20, 20, 3)
    line = describe_splits(splits)
    assert "\n" not in line and "4 classes, 20x20; training 130, validation 14, test 36" in line
    assert "--val-size 14 --train-per-class 33" in line
    # "all" is everything; the resolved numbers select the same images again.
    every = splits_for(RunConfig.from_preset("quick", data=str(data), train_per_class="all"))
    assert every["sizes"] == splits["sizes"]
    assert np.array_equal(every["train"][1], splits["train"][1])
    # The preset's batch of 128 fits 130 images; a larger batch is refused up front.
    big = RunConfig.from_preset("quick", data=str(data), batch_size=200)
    with pytest.raises(ConfigError, match=r"--batch-size 200 > the 130 training images"):
        splits_for(big, batch_size=big.batch_size)


def test_size_conflicts_on_own_data_are_listed_at_once_by_flag(tmp_path):
    from kd_keras.data.splits import splits_for

    data = folder_of(tmp_path / "d", {"a": 45, "b": 45, "c": 45, "d": 45})
    config = RunConfig.from_preset(
        "quick", data=str(data), val_size=5000, train_per_class=1000, val_per_class=200
    )
    with pytest.raises(ConfigError) as info:
        splits_for(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the sizes do not fit the data (4 classes, 144 training and 36 test")
    assert "--val-size 5000 leaves no training image in class 'a', 'b', 'c', 'd'; at most 140" in (
        message
    )
    assert "--train-per-class 1000 > the 33 training images" in message
    assert "--val-per-class 200 > the 4 validation images" in message
    assert "train_per_class" not in message  # Flags, not field names.


@pytest.mark.parametrize("classes", [2, 20])
def test_two_and_twenty_classes_of_odd_sized_images(tmp_path, classes):
    from kd_keras.data.splits import prepare_splits

    data = folder_of(tmp_path / "d", {f"class {i}": 6 for i in range(classes)}, size=(9, 7))
    splits = prepare_splits(data)
    assert len(splits["classes"]) == classes and splits["train"][0].shape[1:] == (7, 9, 3)
    # 6 a class: 1 test, then at least one validation image per class.
    assert np.bincount(splits["val"][1]).tolist() == [1] * classes
    assert np.bincount(splits["train"][1]).tolist() == [4] * classes


def png_header_only(path, width, height, bit_depth=8, colour=2):
    """A PNG whose header claims width x height; its pixel data is a stub
    (a reader that checks headers first never decodes it)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_sixteen_bit_and_grey_images_are_scaled_not_clipped(tmp_path):
    data = folder_of(tmp_path / "d", {"rgb": 3, "grey": 3}, size=(8, 8), grey=("grey",))
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(data / "grey" / "sixteen.png")
    assert Image.open(data / "grey" / "sixteen.png").mode.startswith("I;16")
    (x_train, y_train), (x_test, y_test), names = load_image_folder(data, seed=0)
    images = np.concatenate([x_train, x_test])
    # The 16-bit ramp (0..63000), scaled by 255/65535 to 0..245: not clipped to white.
    expected = np.round(ramp.astype(float) * 255 / 65535).astype(np.uint8)
    found = [i for i in images if np.array_equal(i[..., 0], expected)]
    assert len(found) == 1 and np.array_equal(found[0][..., 1], expected)
    assert found[0].max() == 245 and (found[0] == 255).sum() == 0


def test_symlinked_class_folders_and_links_out_of_the_folder_are_refused(tmp_path):
    data = folder_of(tmp_path / "d", {"a": 3, "b": 3})
    (data / "c").symlink_to(data / "a", target_is_directory=True)
    with pytest.raises(DataSourceError, match=r"class folder\(s\) 'c' are symbolic links"):
        load_image_folder(data)
    (data / "c").unlink()
    outside = folder_of(tmp_path / "outside", {"x": 1})
    (data / "b" / "stolen.png").symlink_to(outside / "x" / "0.png")
    with pytest.raises(DataSourceError, match="symbolic link that leads out of the data folder"):
        load_image_folder(data)
    (data / "b" / "stolen.png").unlink()
    (data / "b" / "sub").symlink_to(outside / "x", target_is_directory=True)
    with pytest.raises(DataSourceError, match=r"sub': a symbolic link to a folder"):
        load_image_folder(data)
    (data / "b" / "sub").unlink()
    (data / "train").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataSourceError, match=r"train': a symbolic link"):
        load_image_folder(data)
    (data / "train").unlink()
    (data / "b" / "inside.png").symlink_to(data / "a" / "0.png")  # One image, two labels.
    with pytest.raises(DataSourceError) as raised:
        load_image_folder(data)
    assert str(raised.value) == (
        f"data at '{data}': 'a/0.png' and 'b/inside.png' are the same file (a link or hard "
        "link), so the image would count twice; keep one"
    )
    (data / "b" / "inside.png").unlink()
    (data / "b" / "hard.png").hardlink_to(data / "b" / "1.png")
    with pytest.raises(DataSourceError, match="'b/1.png' and 'b/hard.png' are the same file"):
        load_image_folder(data)
    (data / "b" / "hard.png").unlink()
    folder_of(data / ".pool", {"p": 1})  # Hidden: not a class, its image counted once.
    (data / "b" / "inside.png").symlink_to(data / ".pool" / "p" / "0.png")  # Inside: read.
    assert len(np.concatenate(load_image_folder(data)[0][1:] + load_image_folder(data)[1][1:])) == 7


def test_oversized_images_are_refused_from_their_headers(tmp_path):
    data = folder_of(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8))
    png_header_only(data / "a" / "huge.png", 20000, 10000)  # 200 Mpixel.
    with pytest.raises(
        DataSourceError,
        match=r"huge.png.*more than 50,000,000 pixels; shrink it",
    ):
        load_image_folder(data, image_size=16)
    png_header_only(data / "a" / "huge.png", 10000, 6000)  # Below Pillow's own limit.
    with pytest.raises(DataSourceError, match=r"10000x6000 = 60,000,000 pixels, more than"):
        load_image_folder(data, image_size=16)
    (data / "a" / "huge.png").unlink()
    for i in range(6):
        png_header_only(data / "b" / f"big{i}.png", 4096, 4096)
    with pytest.raises(
        DataSourceError, match=r"4096x4096, larger than 1024 a side; pass --image-size"
    ):
        load_image_folder(data)


def npz_with(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, -1, 1, 0, 1]), "'y_train' holds negative class ids (down to -1)"),
        (np.array([0, 1, 0, 1, 0, 1.0]), "'y_train' holds floats (float64); store y_train.astype"),
        (np.array([0, 1, np.nan, 1, 0, 1]), "'y_train' holds NaN"),
        (np.array([True, False] * 3), "'y_train' holds booleans"),
        (np.zeros((6, 3)), "'y_train' has shape (6, 3): it looks one-hot"),
        (np.array([], dtype=int), "'y_train' is empty"),
    ],
)
def test_each_kind_of_bad_label_has_its_own_message(tmp_path, labels, message):
    x = np.full((6, 4, 4, 3), 100, np.uint8)
    path = npz_with(tmp_path / "d.npz", x_train=x, y_train=labels)
    with pytest.raises(DataSourceError) as info:
        load_npz(path)
    assert message in str(info.value) and "found 1 classes" not in str(info.value)


def test_empty_class_is_named_and_pixels_in_0_1_get_the_hint(tmp_path):
    x = np.full((12, 4, 4, 3), 100, np.uint8)
    y = np.arange(12) % 2  # Class 'c' has no image.
    path = npz_with(
        tmp_path / "d.npz",
        x_train=x,
        y_train=y,
        x_test=x[:3],
        y_test=y[:3],
        class_names=np.array(["a", "b", "c"]),
    )
    with pytest.raises(DataSourceError, match=r"class\(es\) 'c' have no images in y_train"):
        load_npz(path)
    scaled = npz_with(tmp_path / "s.npz", x_train=(x > 50).astype(np.uint8), y_train=y)
    with pytest.raises(DataSourceError, match="they look scaled to 0-1"):
        load_npz(scaled)
    folder = folder_of(tmp_path / "f", {"a": 3, "b": 3}, size=(4, 4))
    for path in folder.glob("*/*.png"):
        Image.fromarray(np.ones((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(DataSourceError, match="every pixel is 0 or 1 .*look scaled to 0-1"):
        load_image_folder(folder)


def test_a_thousand_class_refusal_stays_one_short_line(tmp_path):
    names = np.array([f"class number {i}" for i in range(1000)] * 2)
    path = npz_with(
        tmp_path / "d.npz",
        x_train=np.full((4, 4, 4, 3), 9, np.uint8),
        y_train=np.arange(4),
        class_names=names,
    )
    message = str(pytest.raises(DataSourceError, load_npz, path).value)
    assert "class names repeat" in message and "and 995 more" in message
    assert "\n" not in message and len(message) < 300
    from kd_keras.data.sizes import resolve_sizes

    with pytest.raises(ConfigError) as info:
        resolve_sizes({"val_size": 10**6}, [3] * 1000, [1] * 1000)
    assert "and 995 more" in str(info.value) and len(str(info.value)) < 400


def run_limited(code, limit=3 << 30):
    """Runs `code` in a fresh interpreter under an address-space limit, so a
    regression that allocates fails the test, not the machine."""
    script = (
        f"import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n" + code
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_label_range_is_checked_before_class_names_are_made(tmp_path):
    path = npz_with(
        tmp_path / "d.npz",
        x_train=np.full((4, 4, 4, 3), 9, np.uint8),
        y_train=np.array([0, 1, 2**64 - 1, 1], dtype=np.uint64),
    )
    done = run_limited(
        "from kd_keras.data.npz import load_npz\n"
        "from kd_keras.errors import DataSourceError\n"
        f"try:\n    load_npz({str(path)!r})\n"
        "except DataSourceError as error:\n    print(error)\n"
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "class ids reach 18446744073709551615 and there are no class_names" in done.stdout


def test_npz_member_sizes_are_checked_from_their_headers_before_reading(tmp_path):
    import zipfile

    # A zip bomb's shape: x_train's npy header claims 7.4 GB (6.9 GiB) of images.
    path = tmp_path / "bomb.npz"
    header = io_bytes_of_npy_header((600_000, 64, 64, 3), np.uint8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", header + b"\0" * 1024)
        labels = io_bytes_of_npy_header((600_000,), np.int64) + b"\0" * (8 * 600_000)
        archive.writestr("y_train.npy", labels)
    assert path.stat().st_size < 10 << 20
    done = run_limited(
        "from kd_keras.data.npz import load_npz\n"
        "from kd_keras.errors import DataSourceError\n"
        f"try:\n    load_npz({str(path)!r})\n"
        "except DataSourceError as error:\n    print(error)\n"
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "its arrays need 6.9 GiB decoded, more than the" in done.stdout
    assert "store fewer or smaller images" in done.stdout


def io_bytes_of_npy_header(shape, dtype):
    """The bytes of an npy header (magic included) for an array of `shape`."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_a_runs_data_that_moved_is_named_again_and_checked_by_its_fingerprint(
    tmp_path, monkeypatch
):
    from kd_keras.data.splits import splits_for
    from kd_keras.run_folder import RunFolder

    data = folder_of(tmp_path / "data", {"a": 10, "b": 10, "c": 10})
    splits = splits_for(RunConfig.from_preset("smoke", data=str(data)))
    # A run's config.json as the pipeline writes it: absolute path, resolved
    # sizes (which CIFAR-10's counts would refuse), the fingerprint.
    run = tmp_path / "run"
    run.mkdir()
    recorded = RunConfig.from_preset(
        "smoke", data=str(data.resolve()), data_fingerprint=splits["fingerprint"], **splits["sizes"]
    )
    (run / "config.json").write_text(recorded.to_json())
    moved = data.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "run")  # Another working directory.
    config = RunFolder(run).config()  # Valid, though its data is gone: not "damaged".
    assert config.val_per_class == splits["sizes"]["val_per_class"]
    with pytest.raises(DataSourceError) as info:
        splits_for(config)
    assert str(info.value) == (
        f"data at '{data.resolve()}': the run's data is not there (moved, or the run folder "
        "was made on another machine); pass --data PATH naming where it is now (checked "
        "against the run's fingerprint)"
    )
    again = splits_for(config, data=str(moved))  # Same data, new place: accepted.
    assert np.array_equal(again["val"][1], splits["val"][1])
    assert np.array_equal(again["train"][0], splits["train"][0])
    other = folder_of(tmp_path / "other", {"a": 10, "b": 10, "c": 9})
    with pytest.raises(DataSourceError) as info:
        splits_for(config, data=str(other))
    message = str(info.value)
    assert "not the data the run was made with" in message and "\n" not in message
    assert "image counts (recorded 24 training and 6 test, found 23 and 6)" in message
    # Same counts, other pixels: refused too.
    for path in sorted((moved / "c").iterdir())[:1]:
        Image.new("RGB", (12, 12), (1, 2, 3)).save(path)
    with pytest.raises(DataSourceError, match=r"its pixels differ"):
        splits_for(config, data=str(moved))


def test_resume_refuses_changed_images_that_an_old_sample_would_miss(tmp_path):
    from kd_keras.data.fingerprint import SAMPLE, _sample, data_fingerprint
    from kd_keras.data.splits import splits_for

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, size=(200, 8, 8, 3), dtype=np.uint8), np.arange(200) % 4
    x_test, y_test = x[:40].copy(), y[:40].copy()
    names = np.array(["a", "b", "c", "d"])
    np.savez(
        tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test, class_names=names
    )
    splits = splits_for(RunConfig.from_preset("smoke", data=str(tmp_path / "d.npz")))
    recorded = splits["fingerprint"]
    assert recorded["pixels"] == "all"
    changed = x.copy()
    changed[1] = 255 - changed[1]  # Image 1 is not in the old 64-image sample.
    assert SAMPLE < len(x) and np.array_equal(_sample(changed), _sample(x))
    np.savez(
        tmp_path / "e.npz",
        x_train=changed,
        y_train=y,
        x_test=x_test,
        y_test=y_test,
        class_names=names,
    )
    config = RunConfig.from_preset(
        "smoke", data=str(tmp_path / "d.npz"), data_fingerprint=recorded, **splits["sizes"]
    )
    with pytest.raises(DataSourceError, match=r"its pixels differ"):
        splits_for(config, data=str(tmp_path / "e.npz"))
    assert splits_for(config, data=str(tmp_path / "d.npz"))["fingerprint"] == recorded
    # A run recorded by an older kd_keras (a sampled fingerprint) still resumes
    # on its own data: compared like with like.
    old = data_fingerprint(str(tmp_path / "d.npz"), (x, y), (x_test, y_test), names, "sample")
    assert "pixels" not in old and old["pixels_sha256"] != recorded["pixels_sha256"]
    config = RunConfig.from_preset(
        "smoke", data=str(tmp_path / "d.npz"), data_fingerprint=old, **splits["sizes"]
    )
    assert (
        splits_for(config, data=str(tmp_path / "d.npz"))["fingerprint"]["pixels_sha256"]
        == (old["pixels_sha256"])
    )
    changed[0] = 255 - changed[0]  # Image 0 is in the sample: refused.
    np.savez(
        tmp_path / "f.npz",
        x_train=changed,
        y_train=y,
        x_test=x_test,
        y_test=y_test,
        class_names=names,
    )
    with pytest.raises(DataSourceError, match=r"its pixels differ"):
        splits_for(config, data=str(tmp_path / "f.npz"))


def test_user_strings_in_data_messages_are_shortened(tmp_path, capsys):
    from kd_keras.errors import DataSourceError, run_command

    x, y = np.zeros((12, 8, 8, 3), np.uint8) + 9, np.arange(12) % 4
    names = np.array(["n" * 100000] * 3 + ["m"])
    np.savez(tmp_path / "long.npz", x_train=x, y_train=y, class_names=names)
    with pytest.raises(DataSourceError) as raised:
        load_npz(tmp_path / "long.npz")
    assert str(raised.value) == (
        f"data at '{tmp_path / 'long.npz'}': class names repeat: '{'n' * 39}…'"
    )
    # The CLI's line is capped whatever a message holds.
    assert run_command("kd_keras", lambda: load_npz(tmp_path / "long.npz")) == 2
    assert run_command("kd_keras", lambda: (_ for _ in ()).throw(DataSourceError("d", "x" * 10**5)))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].endswith("'" + "n" * 39 + "…'")
    assert len(err[1]) <= len("kd_keras: error: ") + MAX_MESSAGE_CHARS
    assert "characters left out" in err[1]


def test_committed_results_cite_their_data_by_file_name_and_fingerprint():
    from pathlib import Path

    from kd_keras.run_folder import RunFolder

    configs = sorted(Path(__file__).parent.parent.glob("results/*/config.json"))
    assert configs
    for path in configs:
        config = RunFolder(path.parent).config()
        assert config.data == "cifar-10-python.tar.gz"
        fingerprint = config.data_fingerprint
        assert fingerprint["counts"] == {"train": 50000, "test": 10000}
        assert fingerprint["classes"][0] == "airplane" and fingerprint["image_shape"] == [32, 32, 3]


@pytest.mark.slow
@pytest.mark.real_data
def test_committed_results_fingerprint_matches_the_real_archive(cifar10_archive, monkeypatch):
    from pathlib import Path

    from kd_keras.data.splits import run_source, splits_for
    from kd_keras.run_folder import RunFolder

    monkeypatch.setenv("KD_KERAS_CIFAR10", str(cifar10_archive))
    run = Path(__file__).parent.parent / "results" / "quick-seed0"
    monkeypatch.chdir(run)
    config = RunFolder(run).config()
    assert run_source(config) == str(cifar10_archive)  # Found through $KD_KERAS_CIFAR10.
    splits = splits_for(config, test_per_class=1)  # Checked against the fingerprint.
    assert splits["fingerprint"]["pixels_sha256"] == config.data_fingerprint["pixels_sha256"]


def test_size_flags_take_a_number_or_all():
    import argparse

    from kd_keras.options import add_run_options, command_line_flags, overrides_from_args

    fields = ("val_size", "train_per_class", "val_per_class", "test_per_class")
    parser = argparse.ArgumentParser()
    add_run_options(parser, fields=fields)
    args = parser.parse_args(
        ["--val-size", "all", "--train-per-class", "30", "--test-per-class", "ALL"]
    )
    overrides = overrides_from_args(args, fields=fields)
    assert overrides == {"val_size": "all", "train_per_class": 30, "test_per_class": "all"}
    assert command_line_flags(overrides) == [
        "--val-size",
        "all",
        "--train-per-class",
        "30",
        "--test-per-class",
        "all",
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["--val-per-class", "most"])


@pytest.mark.slow
def test_own_folder_runs_without_size_flags_and_the_run_folder_travels(
    tmp_path, monkeypatch, capsys
):
    from kd_keras.cli import main

    names = {"red car": 45, "blue sky": 45, "green leaf": 45, "grey cat": 45}
    data = folder_of(tmp_path / "my images", names, size=(12, 12), grey=("grey cat",))
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--data", "my images", "--preset", "smoke", "--epochs", "1", "--quiet"]
    assert main(argv + ["--out", "runs/a"]) == 0
    printed = capsys.readouterr().out
    assert "kd_keras: data: 4 classes, 12x12; training 130, validation 14, test 36 images" in (
        printed
    )
    saved = json.loads((tmp_path / "runs" / "a" / "config.json").read_text())
    assert saved["data"] == str(data.resolve())  # Absolute, wherever it was typed from.
    assert [saved[k] for k in ("val_size", "train_per_class", "val_per_class")] == [14, 33, 4]
    assert saved["data_fingerprint"]["counts"] == {"train": 144, "test": 36}
    classes = (tmp_path / "runs" / "a" / "classes.json").read_text()

    # From another working directory, after the data moved.
    data.rename(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = str(tmp_path / "runs" / "a")
    model = str(tmp_path / "runs" / "a" / "models" / "student_distilled.keras")
    assert main(["evaluate", model, "--run", run]) == 2
    assert "pass --data PATH naming where it is now" in capsys.readouterr().err
    assert main(["evaluate", model, "--run", run, "--data", str(tmp_path / "moved")]) == 0
    assert json.loads(capsys.readouterr().out)["test_images"] == 36
    assert main(["report", run]) == 0
    capsys.readouterr()
    # Other data is refused on resume, and nothing of the run is rewritten.
    other = folder_of(tmp_path / "other", {"a": 20, "b": 20}, size=(16, 16))
    assert main(["run", "--resume", "--out", run, "--data", str(other), "--quiet"]) == 2
    assert "not the data the run was made with" in capsys.readouterr().err
    assert json.loads((tmp_path / "runs" / "a" / "config.json").read_text()) == saved
    assert (tmp_path / "runs" / "a" / "classes.json").read_text() == classes
    # The moved data, named again, is accepted ("all" resolves to the saved 33).
    resumed = ["run", "--resume", "--out", run, "--data", str(tmp_path / "moved"), "--quiet"]
    assert main(resumed + ["--train-per-class", "all"]) == 0
    capsys.readouterr()
    assert main(resumed + ["--train-per-class", "20"]) == 2
    assert "--train-per-class (saved 33, asked 20)" in capsys.readouterr().err


def test_resume_of_a_run_recorded_before_fingerprints_compares_its_classes_json(tmp_path):
    from kd_keras.data.splits import splits_for
    from kd_keras.errors import RunFolderError
    from kd_keras.train.run_setup import check_resumed_data, write_classes

    data = folder_of(tmp_path / "d", {"a": 10, "b": 10, "c": 10})
    config = RunConfig.from_preset("smoke", data=str(data))
    run = tmp_path / "run"
    run.mkdir()
    write_classes(run, config, splits_for(config))  # As an older run left it.
    other = folder_of(tmp_path / "o", {"a": 10, "b": 10, "x": 12})
    old = RunConfig.from_preset("smoke", data=str(other))  # No fingerprint recorded.
    with pytest.raises(RunFolderError) as info:
        check_resumed_data(run, old, old, splits_for(old))
    message = str(info.value)
    assert "the data's classes (saved 3: 'a', 'b', 'c', found 3: 'a', 'b', 'x')" in message
    assert "the data's images" in message and "\n" not in message
    check_resumed_data(run, config, config, splits_for(config))  # The same data: accepted.
    asked = RunConfig.from_preset("smoke", data=str(data), train_per_class=3)
    with pytest.raises(RunFolderError, match=r"--train-per-class \(saved 7, asked 3\)"):
        check_resumed_data(run, asked, config, splits_for(config))
