"""Layouts: the real devkit sample, tiny devkits, class folders and CSV manifests, the split rule, errors."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import need_real_photos
from PIL import Image

from carcli.data.layouts import DataSet, Sample, detect_layout, load_dataset
from carcli.errors import CarcliError, UsageError

ANNO_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


@pytest.fixture(scope="module")
def real_root() -> Path:
    return need_real_photos()


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _folder_set(root: Path, counts: dict[str, int], split: str | None = None, ext: str = ".png") -> None:
    """counts[class] tiny images in root/[split/]class/."""
    for name, n in counts.items():
        for i in range(n):
            _image(root / (split or "") / name / f"{name}_{i:03d}{ext}")


def _by_split(dataset: DataSet) -> dict[str, Counter[str]]:
    """split -> class name -> number of images."""
    counts: dict[str, Counter[str]] = {}
    for sample in dataset.samples:
        counts.setdefault(sample.split, Counter())[dataset.class_names[sample.label]] += 1
    return counts


# ---------------------------------------------------------------- the real devkit sample


def test_real_devkit_sample(real_root):
    assert detect_layout(real_root) == "devkit"
    dataset = load_dataset(real_root)
    assert dataset.layout == "devkit"
    assert len(dataset.class_names) == 196
    assert dataset.class_names[0] == "AM General Hummer SUV 2000"
    assert len(dataset.samples) == 3136
    preds = [int(line) for line in (real_root / "devkit" / "train_perfect_preds.txt").read_text().split()]
    assert [s.label for s in dataset.samples] == [p - 1 for p in preds]
    assert all(s.path.parent == real_root / "cars_train" and s.path.is_file() for s in dataset.samples)
    assert all(s.bbox is not None and s.bbox[2] > s.bbox[0] for s in dataset.samples)


def test_real_devkit_gets_a_stratified_val_split(real_root):
    dataset = load_dataset(real_root, val_fraction=0.25, seed=3)
    assert dataset.eval_split == "val"
    per_class = Counter(s.label for s in dataset.samples)
    val = Counter(s.label for s in dataset.split("val"))
    assert set(val) == set(range(196))
    assert all(val[c] == round(per_class[c] * 0.25) for c in per_class)
    assert len(dataset.split("train")) + len(dataset.split("val")) == 3136
    assert dataset.split("test") == []


def test_torchvision_parent_folder_is_a_devkit(real_root, tmp_path):
    (tmp_path / "stanford_cars").symlink_to(real_root, target_is_directory=True)
    assert detect_layout(tmp_path) == "devkit"
    dataset = load_dataset(tmp_path)
    assert len(dataset.samples) == 3136
    assert dataset.root == tmp_path


# ---------------------------------------------------------------- tiny devkits


def _annotations(rows: list[tuple[int, int, int, int, int, str]]) -> np.ndarray:
    records = np.zeros((1, len(rows)), dtype=[(name, "O") for name in ANNO_FIELDS])
    for i, row in enumerate(rows):
        records[0, i] = row
    return records


def _tiny_devkit(real_root: Path, base: Path, n_classes: int = 3, per_class: int = 3) -> list[str]:
    """base/cars_train + base/devkit with the first n_classes real classes and per_class real photos each."""
    names = [str(n) for n in scipy.io.loadmat(real_root / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]
    annos = scipy.io.loadmat(real_root / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    rows, taken = [], Counter()
    for record in annos:
        label, fname = int(record["class"]), str(record["fname"])
        if label <= n_classes and taken[label] < per_class:
            taken[label] += 1
            rows.append((1, 2, 100, 50, label, fname))
            (base / "cars_train").mkdir(parents=True, exist_ok=True)
            shutil.copy(real_root / "cars_train" / fname, base / "cars_train" / fname)
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names[:n_classes], dtype=object)})
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(rows)})
    return names[:n_classes]


def _test_photos(real_root: Path, base: Path, n: int) -> list[str]:
    """n real photos copied into base/cars_test as 00001.jpg, 00002.jpg, ..."""
    sources = sorted((real_root / "cars_train").iterdir())[:n]
    names = [f"{i + 1:05d}.jpg" for i in range(n)]
    for src, name in zip(sources, names, strict=True):
        (base / "cars_test").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, base / "cars_test" / name)
    return names


def test_tiny_devkit_with_test_labels_csv(real_root, tmp_path):
    names = _tiny_devkit(real_root, tmp_path)
    photos = _test_photos(real_root, tmp_path, 4)  # the 4th photo has no label: ignored
    (tmp_path / "test_labels.csv").write_text(
        "image_name,x_min,y_min,x_max,y_max,label\n"
        f"{photos[0]},5,6,70,80,3\n{photos[1]},1,1,20,20,1\n{photos[2]},2,2,30,30,2\n"
        "09999.jpg,1,1,2,2,1\n"  # labelled but no photo: ignored
    )
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "devkit"
    assert dataset.class_names == names
    assert len(dataset.split("train")) == 9
    assert dataset.split("val") == []
    assert dataset.eval_split == "test"
    assert dataset.split("test") == [
        Sample(tmp_path / "cars_test" / photos[0], 2, "test", (5, 6, 70, 80)),
        Sample(tmp_path / "cars_test" / photos[1], 0, "test", (1, 1, 20, 20)),
        Sample(tmp_path / "cars_test" / photos[2], 1, "test", (2, 2, 30, 30)),
    ]
    assert all(s.bbox == (1, 2, 100, 50) for s in dataset.split("train"))


def test_torchvision_layout_with_test_annos_mat(real_root, tmp_path):
    base = tmp_path / "stanford_cars"
    _tiny_devkit(real_root, base)
    photos = _test_photos(real_root, base, 2)
    rows = [(3, 4, 50, 60, 2, photos[0]), (7, 8, 90, 99, 3, photos[1])]
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _annotations(rows)})
    assert detect_layout(tmp_path) == "devkit"
    test = load_dataset(tmp_path).split("test")
    assert [(s.path.name, s.label, s.bbox) for s in test] == [
        (photos[0], 1, (3, 4, 50, 60)),
        (photos[1], 2, (7, 8, 90, 99)),
    ]


def test_test_photos_without_labels_are_ignored(real_root, tmp_path):
    _tiny_devkit(real_root, tmp_path)
    _test_photos(real_root, tmp_path, 2)
    dataset = load_dataset(tmp_path)
    assert dataset.split("test") == []
    assert dataset.eval_split == "val"


def test_devkit_with_a_single_annotation(real_root, tmp_path):
    names = _tiny_devkit(real_root, tmp_path, n_classes=1, per_class=1)
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == names
    assert [(s.label, s.split) for s in dataset.samples] == [(0, "train")]


def test_devkit_annotations_of_missing_photos_are_dropped(real_root, tmp_path):
    _tiny_devkit(real_root, tmp_path)
    removed = sorted((tmp_path / "cars_train").iterdir())[0]
    removed.unlink()
    dataset = load_dataset(tmp_path)
    assert len(dataset.samples) == 8
    assert removed not in {s.path for s in dataset.samples}


def test_devkit_class_without_photos_is_an_error(real_root, tmp_path):
    names = _tiny_devkit(real_root, tmp_path, n_classes=2)
    scipy.io.savemat(
        tmp_path / "devkit" / "cars_meta.mat", {"class_names": np.array([*names, "X Y Z 2001"], dtype=object)}
    )
    with pytest.raises(CarcliError, match="1 of 3 classes have no images"):
        load_dataset(tmp_path)


def test_incomplete_devkit_is_an_error(tmp_path):
    _image(tmp_path / "cars_train" / "00001.jpg")
    with pytest.raises(CarcliError, match=r"incomplete Stanford Cars devkit.*cars_meta\.mat"):
        detect_layout(tmp_path)


# ---------------------------------------------------------------- class folders


def test_train_and_valid_folders(tmp_path):
    _folder_set(tmp_path, {"striped": 4, "dotted": 3, "only_train": 2}, "train")
    _folder_set(tmp_path, {"striped": 2, "dotted": 1}, "valid", ext=".JPG")
    (tmp_path / "train" / "striped" / "notes.txt").write_text("not an image")
    _image(tmp_path / "train" / "striped" / ".hidden.png")
    _image(tmp_path / "train" / ".cache" / "a.png")
    assert detect_layout(tmp_path) == "folders"
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "folders"
    assert dataset.class_names == ["dotted", "only_train", "striped"]
    assert _by_split(dataset) == {
        "train": Counter({"striped": 4, "dotted": 3, "only_train": 2}),
        "val": Counter({"striped": 2, "dotted": 1}),
    }
    assert dataset.eval_split == "val"
    assert all(s.path.parent.name == dataset.class_names[s.label] for s in dataset.samples)


def test_flat_class_folders_get_a_val_split(tmp_path):
    _folder_set(tmp_path, {"b": 10, "a": 5}, ext=".jpg")
    assert detect_layout(tmp_path) == "folders"
    dataset = load_dataset(tmp_path, val_fraction=0.2)
    assert dataset.class_names == ["a", "b"]
    assert _by_split(dataset) == {"train": Counter({"b": 8, "a": 4}), "val": Counter({"b": 2, "a": 1})}


def test_kaggle_nested_folders(tmp_path):
    inner = tmp_path / "car_data" / "car_data"
    _folder_set(inner, {"Audi S4 Sedan 2012": 2, "BMW X3 SUV 2012": 2}, "train", ext=".jpg")
    _folder_set(inner, {"Audi S4 Sedan 2012": 1, "BMW X3 SUV 2012": 1}, "test", ext=".jpg")
    (tmp_path / "anno_train.csv").write_text("00001.jpg,1,2,3,4,1\n")
    (tmp_path / "names.csv").write_text("Audi S4 Sedan 2012\n")
    assert detect_layout(tmp_path) == "folders"
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ["Audi S4 Sedan 2012", "BMW X3 SUV 2012"]
    assert dataset.eval_split == "test"
    assert len(dataset.split("test")) == 2
    assert all(inner in s.path.parents for s in dataset.samples)


def test_empty_class_folder_is_an_error(tmp_path):
    _folder_set(tmp_path, {"a": 2}, "train")
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(CarcliError, match=r"classes have no images.*'b'"):
        load_dataset(tmp_path)


def test_train_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(CarcliError, match="no images found"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- CSV manifests


def test_csv_manifest_with_splits(tmp_path):
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        _image(tmp_path / "img" / name)
    (tmp_path / "manifest.csv").write_text(
        "path,label,split\nimg/a.png,zebra,train\nimg/b.png,ant,train\nimg/c.png,zebra,valid\nimg/sub/d.png,ant,test\n"
    )
    assert detect_layout(tmp_path) == "csv"
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ["ant", "zebra"]
    assert [(s.path, s.label, s.split) for s in dataset.samples] == [
        (tmp_path / "img" / "a.png", 1, "train"),
        (tmp_path / "img" / "b.png", 0, "train"),
        (tmp_path / "img" / "c.png", 1, "val"),
        (tmp_path / "img" / "sub" / "d.png", 0, "test"),
    ]


def test_csv_file_as_root_without_split_column(tmp_path):
    for i in range(6):
        _image(tmp_path / "photos" / f"{i}.png")
    manifest = tmp_path / "photos" / "my_list.csv"
    manifest.write_text("path,label\n" + "".join(f"{i}.png,{'xy'[i % 2]}\n" for i in range(6)))
    assert detect_layout(manifest) == "csv"
    dataset = load_dataset(manifest, val_fraction=0.34)
    assert dataset.class_names == ["x", "y"]
    assert _by_split(dataset) == {"train": Counter({"x": 2, "y": 2}), "val": Counter({"x": 1, "y": 1})}


def test_labels_csv_name_is_found(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("path,label\na.png,one\nb.png,two\n")
    assert detect_layout(tmp_path) == "csv"


def test_csv_bad_split_value_is_an_error(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text("path,label,split\na.png,x,holdout\n")
    with pytest.raises(CarcliError, match=r"manifest\.csv:2: split must be train, val or test"):
        load_dataset(tmp_path)


def test_csv_missing_files_are_counted(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text("path,label\na.png,x\ngone1.png,x\ngone2.png,y\n")
    with pytest.raises(CarcliError, match=r"2 listed image files do not exist \(first: .*gone1.png\)"):
        load_dataset(tmp_path)


def test_csv_without_label_column_is_an_error(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(CarcliError, match="path and label"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- the split rule


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(10, 0.2, 2), (2, 0.2, 1), (1, 0.5, 0), (3, 0.9, 2), (5, 0.0, 0), (7, 0.5, 4)],
)
def test_val_count_per_class(tmp_path, n, fraction, n_val):
    _folder_set(tmp_path, {"c": n, "other": 1})
    dataset = load_dataset(tmp_path, val_fraction=fraction)
    assert sum(s.split == "val" for s in dataset.samples if dataset.class_names[s.label] == "c") == n_val
    assert sum(s.split == "train" for s in dataset.samples) >= 2


def test_split_is_deterministic_per_seed_and_covers_every_class(tmp_path):
    _folder_set(tmp_path, {f"class{k}": 20 + k for k in range(5)})

    def val_paths(seed: int) -> set[Path]:
        return {s.path for s in load_dataset(tmp_path, val_fraction=0.25, seed=seed).split("val")}

    assert val_paths(0) == val_paths(0)
    assert val_paths(0) != val_paths(1)
    dataset = load_dataset(tmp_path, val_fraction=0.25, seed=7)
    val = _by_split(dataset)["val"]
    assert val == Counter({f"class{k}": round((20 + k) * 0.25) for k in range(5)})
    assert len(dataset.samples) == sum(20 + k for k in range(5))


def test_zero_val_fraction_evaluates_on_train(tmp_path):
    _folder_set(tmp_path, {"a": 3, "b": 3})
    dataset = load_dataset(tmp_path, val_fraction=0.0)
    assert dataset.eval_split == "train"
    assert dataset.split("val") == []


# ---------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    with pytest.raises(CarcliError, match=r"data set not found: .*nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_empty_folder_names_the_three_layouts(tmp_path):
    with pytest.raises(CarcliError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "devkit" in message and "class folders" in message and "CSV manifest" in message
    with pytest.raises(CarcliError):
        load_dataset(tmp_path)


def test_non_csv_file_root_is_an_error(tmp_path):
    path = _image(tmp_path / "a.png")
    with pytest.raises(CarcliError, match="not a data set folder"):
        load_dataset(path)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan")])
def test_bad_val_fraction(tmp_path, fraction):
    _folder_set(tmp_path, {"a": 3})
    with pytest.raises(UsageError, match="val-fraction"):
        load_dataset(tmp_path, val_fraction=fraction)


def test_unknown_split_name():
    with pytest.raises(ValueError):
        DataSet(Path("."), "csv", ["a"], []).split("holdout")
