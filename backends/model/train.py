"""Make the default model: ``python -m backends.model.train`` writes ``digits.onnx`` and
``digits_test.npz`` beside this file.

Why this model: the model server needs a real model that nothing has to download, at build
time or at run time. scikit-learn ships the digits data set (1,797 8x8 images of handwritten
digits, 64 pixel values 0-16 each, 10 classes) inside the package, so a classifier can be
trained from it anywhere, reproducibly: a fixed, stratified, seeded split; a standard
scaler and a small multi-layer perceptron, both seeded. skl2onnx turns the pipeline into
one ONNX graph (the scaling included, so clients send raw pixel values), with a plain
``[N, 10]`` probability tensor instead of skl2onnx's default list of dicts (``zipmap``),
which is what a batched server wants to slice.

The held-out quarter of the data is written too (``X`` as uint8, ``y``), so that tests and
benchmarks measure accuracy on images the model never saw. Both files are committed; this
script is how they were made. Training needs scikit-learn and skl2onnx, which the server
itself does not import.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
MODEL_PATH = HERE / "digits.onnx"
TEST_PATH = HERE / "digits_test.npz"
FEATURES = 64
SEED = 0
INPUT_NAME = "input"


def train(seed: int = SEED) -> tuple[Any, np.ndarray, np.ndarray, float]:
    """Fit the pipeline on 75 % of the digits; return it, the held-out split and its accuracy."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed)
    model = make_pipeline(StandardScaler(), mlp)
    model.fit(x_train.astype(np.float32), y_train)
    accuracy = float(model.score(x_test.astype(np.float32), y_test))
    return model, x_test, y_test, accuracy


def to_onnx_model(model: Any, accuracy: float) -> Any:
    """Convert with a float32 ``[None, 64]`` input and a tensor (not zipmap) probability
    output; record where the model came from in its metadata, which the server reports."""
    proto = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, FEATURES]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    meta = {
        "name": "digits-mlp",
        "source": "sklearn.datasets.load_digits, train split 75 %, seed 0",
        "held_out_accuracy": f"{accuracy:.4f}",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "backends.model.train"
    return proto


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m backends.model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", type=Path, default=MODEL_PATH, help="where to write the .onnx")
    p.add_argument("--test-split", type=Path, default=TEST_PATH, help="where to write the .npz")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    model, x_test, y_test, accuracy = train(args.seed)
    proto = to_onnx_model(model, accuracy)
    args.model.write_bytes(proto.SerializeToString())
    np.savez_compressed(args.test_split, X=x_test.astype(np.uint8), y=y_test.astype(np.uint8))
    print(
        f"held-out accuracy {accuracy:.4f} on {len(y_test)} images; wrote {args.model} "
        f"({args.model.stat().st_size} bytes) and {args.test_split}"
    )


if __name__ == "__main__":
    main()
