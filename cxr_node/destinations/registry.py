"""Destination types by name. Adding a type: write its module, add its line here."""

from __future__ import annotations

import importlib

from cxr_node.config import ConfigError, NodeConfig
from cxr_node.destinations.base import ExportDestination, NodeContext

# type name -> "module:class"; imported only when configured (dicomweb pulls in requests).
TYPES: dict[str, str] = {
    "dicom": "cxr_node.destinations.dicom:DicomDestination",
    "dicomweb": "cxr_node.destinations.dicomweb:DicomWebDestination",
    "hl7": "cxr_node.destinations.hl7v2:Hl7Destination",
    "fhir": "cxr_node.destinations.fhir:FhirDestination",
}


def destination_class(type_name: str, key: str = "destinations.type") -> type[ExportDestination]:
    if type_name not in TYPES:
        raise ConfigError(f"{key}: {type_name!r} is not a destination type (known: {', '.join(TYPES)})")
    module, _, cls = TYPES[type_name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_destinations(cfg: NodeConfig, node: NodeContext | None = None) -> dict[str, ExportDestination]:
    """Every configured destination by name, checked; ConfigError names the offending key."""
    if node is None:
        from cxr_node.dicom.tls import client_context

        node = NodeContext(cfg.ae_title, cfg.send_timeout_s, client_context(cfg))
    built: dict[str, ExportDestination] = {}
    for spec in cfg.destination_specs:
        built[spec.name] = destination_class(spec.type, f"{spec.key}.type").from_spec(spec, node)
    return built
