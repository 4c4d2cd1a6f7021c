"""`cxr-node` command line. Thin: parse, build config, call one function.

Commands that live outside the runtime package (train, evaluate from `training`)
register through the `cxr_node.commands` entry-point group, so the runtime never
imports the training code.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

from cxr_node import __version__


class _Group(click.Group):
    """Adds entry-point commands lazily: a broken plug-in breaks only its own command.

    An entry point named `group.sub` (e.g. `bench.train`) becomes sub-command `sub` of the
    built-in group `group`, loaded only when that group is used."""

    def _plugins(self):
        return {ep.name: ep for ep in entry_points(group="cxr_node.commands") if "." not in ep.name}

    def _sub_plugins(self, group: str):
        return {
            ep.name.split(".", 1)[1]: ep
            for ep in entry_points(group="cxr_node.commands")
            if ep.name.startswith(group + ".")
        }

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if isinstance(cmd, click.Group):
            for sub, ep in self._sub_plugins(name).items():
                if sub not in cmd.commands:
                    cmd.add_command(ep.load(), sub)
        if cmd is not None:
            return cmd
        ep = self._plugins().get(name)
        return ep.load() if ep is not None else None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cxr-node")
def main() -> None:
    """DICOM node: receives chest radiographs, classifies them (Normal / Pathological / COVID-19)
    with two DenseNet-161 models and sends an SR and a Grad-CAM Secondary Capture to the PACS."""


def _register() -> None:
    # Imported here so `cxr-node --help` stays fast and each command owns its imports.
    import importlib

    for name in ("serve", "demo", "infer", "bench", "db", "jobs", "exports", "echo", "send", "config_check", "rules"):
        main.add_command(importlib.import_module(f"cxr_node.commands.{name}").command)


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
