"""Benchmarks: commands whose figures are written down in docs/benchmarks.md, never timed assertions.

Nothing in the runtime imports this package; `cxr-node bench` (cxr_node/commands/bench.py) does.

    inference.py   `bench inference`: one function per phase, run_inference_bench() strings them together
    probe.py       the worker-like memory probe, run in a fresh process (`python -m cxr_node.benchmarks.probe`)
    goals.py       the acceptance goals, as data, and how a result is checked against them
    report.py      the text report
    sending.py     what `bench ingest` and `bench latency` share: ports, DCMTK programs, fresh-UID copies, timed dcmsend
"""
