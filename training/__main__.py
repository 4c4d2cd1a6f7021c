"""`python -m training train|evaluate|bench train ...`: the same commands as `cxr-node train|evaluate|
bench train`, handy with `torchrun --nproc_per_node N -m training train ...` and where cxr-node is on
PYTHONPATH without being installed (no entry points: a lent GPU machine)."""

import click

from training.cli import bench_train, evaluate, train

bench = click.Group("bench", commands={"train": bench_train}, help="Benchmarks of the training code.")
cli = click.Group("training", commands={"train": train, "evaluate": evaluate, "bench": bench})

if __name__ == "__main__":
    cli()
