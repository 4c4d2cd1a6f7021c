"""`[selection]` of the node config -> Selection. Every error names the key.

default      action when no rule matches ("analyse")
defaults     run the built-in rules after the site's (true)
unknown_age  "analyse" (the result then says the age was not stated) or "skip"
vocabulary   word tables (files) added to the built-in one, in order
words        [[selection.words]]: entries written inline, added last
rules        [[selection.rules]]: the site's rules, run first
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr_node.errors import ConfigError
from cxr_node.selection.defaults import builtin_rules
from cxr_node.selection.rules import ACTIONS, Selection, layer_rules
from cxr_node.selection.vocabulary import builtin, read_table

KEYS = ("default", "defaults", "unknown_age", "vocabulary", "words", "rules")


def parse_selection(table: Any, key: str = "selection") -> Selection:
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: must be a table ({', '.join(KEYS)})")
    unknown = set(table) - set(KEYS)
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key ({', '.join(KEYS)})")
    default = table.get("default", "analyse")
    if default not in ACTIONS:
        raise ConfigError(f"{key}.default: {default!r} must be one of {', '.join(ACTIONS)}")
    use_builtin = table.get("defaults", True)
    if not isinstance(use_builtin, bool):
        raise ConfigError(f"{key}.defaults: must be true or false")
    unknown_age = table.get("unknown_age", "analyse")
    if unknown_age not in ACTIONS:
        raise ConfigError(f"{key}.unknown_age: {unknown_age!r} must be one of {', '.join(ACTIONS)}")
    if unknown_age == "skip" and not use_builtin:
        raise ConfigError(
            f"{key}.unknown_age: 'skip' is carried out by the built-in rule age-not-stated, which "
            f"defaults = false switches off; write a rule with when = {{ age = {{ absent = true }} }} instead"
        )

    vocabulary = builtin()
    paths = table.get("vocabulary", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f'{key}.vocabulary: must be a list of file paths, e.g. ["/etc/cxr-node/words.toml"]')
    for i, path in enumerate(paths):
        vocabulary = read_table(Path(path), f"{key}.vocabulary[{i}]", vocabulary)
    if "words" in table:
        words = table["words"]
        if not isinstance(words, list):
            raise ConfigError(f"{key}.words: must be an array of tables ([[{key}.words]])")
        vocabulary = vocabulary.extended(words, f"[{key}.words]", f"{key}.words")

    rules = layer_rules(f"{key}.rules", table.get("rules", []), builtin_rules(unknown_age), use_builtin)
    return Selection(rules, default, vocabulary, unknown_age, use_builtin)


__all__ = ["KEYS", "parse_selection"]
