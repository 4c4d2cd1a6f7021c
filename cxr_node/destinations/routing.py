"""Which result objects go to which destination: a destination's type says what kinds it takes
(the SR and SC, or a notice of the result), its `when` which classes, its `untrained` whether an
untrained model's results. The worker records exactly these export rows with the result, so
what the queue holds is what will be sent, and a Normal result never waits for an urgent-only one.

The short report of a not-analysable image ([results] not_analysable_report) has no class: it
goes only where the SR goes whatever the class (a destination without `when`), never to a
notice destination (HL7, FHIR), which announces classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cxr_node.config import NodeConfig
from cxr_node.queue.jobs import ExportItem
from cxr_node.queue.states import ExportKind

# the result writer's objects: kept on disk (`local` rows) when no one takes them
FILE_KINDS = (ExportKind.SC, ExportKind.SR)


@dataclass(frozen=True)
class Route:
    name: str
    kinds: tuple[ExportKind, ...] = FILE_KINDS
    when: frozenset[str] | None = None  # result classes that go there; None: every class
    untrained: bool = True  # results of an untrained model go there too

    def takes(self, kind: ExportKind, label: str, trained: bool) -> bool:
        return kind in self.kinds and (self.when is None or label in self.when) and (trained or self.untrained)

    def takes_no_result(self, trained: bool) -> bool:
        """Whether the report of a not-analysable image (an SR without a class) goes here."""
        return ExportKind.SR in self.kinds and self.when is None and (trained or self.untrained)


def routes(cfg: NodeConfig) -> tuple[Route, ...]:
    """One route per configured destination, from its type's kinds and its `when` / `untrained`."""
    from cxr_node.destinations.registry import destination_class

    found = []
    for spec in cfg.destination_specs:
        cls = destination_class(spec.type, f"{spec.key}.type")
        untrained = cls.untrained_by_default if spec.untrained is None else spec.untrained
        when = None if spec.when is None else frozenset(spec.when)
        found.append(Route(spec.name, cls.kinds, when, untrained))
    return tuple(found)


def plan(
    routes: Sequence[Route | str], label: str, trained: bool, objects: Mapping[ExportKind, ExportItem]
) -> list[ExportItem]:
    """The export items of one result, each naming the destinations it goes to.

    `objects` maps kind -> item (the SC, the SR, and the notice, which points at the SR). The
    result files with no destination stay on disk as `local` rows; a notice nobody takes is not
    recorded at all. A plain name is a destination of the result objects, every class.
    """
    known = [r if isinstance(r, Route) else Route(r) for r in routes]
    planned = []
    for kind, item in objects.items():
        names = tuple(r.name for r in known if r.takes(kind, label, trained))
        if names or kind in FILE_KINDS:
            planned.append(ExportItem(item.kind, item.path, item.sop_instance_uid, names))
    return planned


def plan_no_result(routes: Sequence[Route | str], trained: bool, report: ExportItem) -> list[ExportItem]:
    """The export item of a not-analysable image's report (kind SR): to the destinations that
    take it (Route.takes_no_result), else kept on disk (a `local` row)."""
    known = [r if isinstance(r, Route) else Route(r) for r in routes]
    names = tuple(r.name for r in known if r.takes_no_result(trained))
    return [ExportItem(report.kind, report.path, report.sop_instance_uid, names)]
