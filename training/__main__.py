"""`python -m training train|evaluate ...`: the same commands as `cxr-node train|evaluate`,
handy with `torchrun --nproc_per_node N -m training train ...`."""

import click

from training.cli import evaluate, train

cli = click.Group("training", commands={"train": train, "evaluate": evaluate})

if __name__ == "__main__":
    cli()
