"""Decoding an image and what it may cost, in one place: the budget checked at receipt
(budget.py), decoder processes under a memory limit (pool.py), decoding at the resolution the
analysis needs (reduced.py, openjp2.py), the grey pipeline to a float image (pixels.py) and
whether that image holds anything to analyse (information.py). Serving and training share it."""
