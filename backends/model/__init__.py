"""A real model server: an ONNX model on ONNX Runtime behind aiohttp, with dynamic batching.

``python -m backends.model --port 8000`` serves the default model (``digits.onnx``, made by
``python -m backends.model.train`` from scikit-learn's bundled digits data). Modules:
``runtime`` (session, provider, warm-up), ``batcher`` (dynamic batching), ``inputs``
(request checks), ``metrics``, ``server`` (HTTP) and ``train`` (makes the model). At run
time it needs onnxruntime, numpy, aiohttp, uvloop, orjson and prometheus-client only.
"""
