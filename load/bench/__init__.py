"""The benchmark suite: the gateway against HAProxy and nginx (``python -m load.bench``).

``scenarios`` (what each run does) · ``contestants`` (who runs it, configured alike) ·
``backends`` (the sim replicas and the actions on them) · ``runner`` (one scenario, every
contestant) · ``report`` and ``plots`` (tables, verdicts, RESULTS.md sections, figures) ·
``install`` (HAProxy and nginx when missing) · ``matrix`` (the workload matrix: cells,
targets, its table).
"""
