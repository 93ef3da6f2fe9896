"""The ONNX Runtime session: which execution provider, loading, warm-up, one batched run.

Provider choice. ``auto`` asks for ``CUDAExecutionProvider`` when the installed onnxruntime
offers it (the onnxruntime-gpu package does; the plain one never does) and CPU otherwise.
Offering is not the same as working: the GPU package lists CUDA on a machine without a GPU
or without the CUDA libraries, and ONNX Runtime then falls back to CPU with a warning. So
the provider *in use* is read back from the session after it is made, and that is what is
logged and reported, never the one asked for. With the pip-installed CUDA and cuDNN
libraries (``onnxruntime-gpu[cuda,cudnn]``, as in the GPU image) they are not on the
loader's path; ``onnxruntime.preload_dlls()`` loads them from site-packages first.

Threads. The default digits model is tiny: a batch is microseconds of arithmetic and
thread start-up and spinning would cost more than it saves while stealing CPU from the
event loop, so one intra-op thread is the default (``--intra-op-threads`` changes it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Recent onnxruntime releases upload usage telemetry from Linux too, unless this is set
# before the library loads; a model server has no business calling out. Set it to 0 to allow.
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")
import onnxruntime as ort

log = logging.getLogger("backends.model")

DEFAULT_MODEL = Path(__file__).resolve().parent / "digits.onnx"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "cpu", "cuda")

Outputs = tuple[np.ndarray, np.ndarray]  # labels [N] int64, probabilities [N, classes] float32


def wanted_providers(choice: str, available: list[str] | None = None) -> list[str]:
    """The provider list to ask ONNX Runtime for, best first; CPU is always the fallback.
    ``cuda`` asks for CUDA even when it is not offered, so that the failure is visible."""
    if choice not in PROVIDER_CHOICES:
        raise ValueError(f"provider must be one of {PROVIDER_CHOICES}, got {choice!r}")
    offered = ort.get_available_providers() if available is None else available
    if choice == "cuda" or (choice == "auto" and CUDA in offered):
        return [CUDA, CPU]
    return [CPU]


@dataclass
class Model:
    """A loaded model: its session, the provider actually in use, and its shapes."""

    session: ort.InferenceSession
    path: Path
    provider: str
    input_name: str
    features: int
    classes: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.path.stem)

    def run(self, batch: np.ndarray) -> Outputs:
        """One ``session.run`` on a float32 ``[N, features]`` batch. Blocking: the server
        calls it from its single inference thread, never on the event loop."""
        labels, probabilities = self.session.run(None, {self.input_name: batch})
        return np.asarray(labels, dtype=np.int64), np.asarray(probabilities, dtype=np.float32)

    def warm_up(self, max_batch: int) -> float:
        """Run a one-row and a ``max_batch``-row batch, so that the first real requests pay
        for neither lazy initialisation nor (on a GPU) memory allocation; returns seconds."""
        started = time.perf_counter()
        for rows in sorted({1, max(1, max_batch)}):
            self.run(np.zeros((rows, self.features), dtype=np.float32))
        return time.perf_counter() - started


def load(path: Path = DEFAULT_MODEL, provider: str = "auto", intra_op_threads: int = 1) -> Model:
    """Make the session (blocking: seconds on a GPU) and check the model fits the server:
    one float input ``[N, features]``, outputs labels ``[N]`` and probabilities ``[N, C]``."""
    providers = wanted_providers(provider)
    if CUDA in providers and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):  # only helps with pip-installed CUDA libraries
            ort.preload_dlls()
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    in_use = session.get_providers()[0]
    if in_use != providers[0]:
        log.warning("asked for %s, but ONNX Runtime uses %s", providers[0], in_use)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or not isinstance(inputs[0].shape[1], int):
        raise ValueError(f"{path}: expected one input of shape [N, features]")
    if len(outputs) != 2 or len(outputs[1].shape) != 2:
        raise ValueError(f"{path}: expected outputs labels [N] and probabilities [N, classes]")
    classes = outputs[1].shape[1]
    return Model(
        session=session,
        path=path,
        provider=in_use,
        input_name=inputs[0].name,
        features=inputs[0].shape[1],
        classes=classes if isinstance(classes, int) else -1,
        metadata=dict(session.get_modelmeta().custom_metadata_map),
    )
