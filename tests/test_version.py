"""The version moves with the schema: CHANGELOG's newest release names the version and the
schema head it ships, so a migration added without a version bump fails here."""

from __future__ import annotations

import re
from pathlib import Path

from cxr_node import __version__
from cxr_node.queue.schema import head_revision

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
RELEASE = re.compile(r"^## (\d+\.\d+\.\d+) - \d{4}-\d{2}-\d{2} \(schema (\d{4})\)$", re.MULTILINE)


def test_newest_release_is_this_version_with_the_schema_head() -> None:
    releases = RELEASE.findall(CHANGELOG.read_text(encoding="utf-8"))
    assert releases, "CHANGELOG.md has no '## X.Y.Z - YYYY-MM-DD (schema NNNN)' entry"
    version, schema = releases[0]
    assert version == __version__, f"CHANGELOG's newest release is {version}, cxr_node.__version__ is {__version__}"
    assert schema == head_revision(), (
        f"schema head is {head_revision()} but release {version} ships {schema}: "
        "bump the version and add a CHANGELOG entry with the migration"
    )
