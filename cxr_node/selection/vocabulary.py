"""The words and codes that name a body part or a view, as data: the built-in table
(vocabulary.toml beside this module, copied to configs/vocabulary.toml) plus a site's own.

Text is compared after `normalise`: accents dropped, case folded, every run of separators
(space, _ - / , . ^ ...) one space, abbreviations of single letters joined ("p.a.", "P-A" -> "PA"). Where known
phrases overlap the longest wins, so "TORAX OSEO" (ribs) is not read as "TORAX" (chest) and
"DECUBITO LATERAL" is not a lateral view.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cxr_node.errors import ConfigError

KINDS = ("body_part", "view")
IGNORE = "ignore"  # a meaning for words that look like a body part or view but say none ("DE PIE": standing)
BUILTIN = "built-in"  # the name of the shipped table in errors and `rules show`

_DOTTED = re.compile(r"(?<=\b[A-Z])[.-](?=[A-Z]\b)")
_SEPARATORS = re.compile(r"[^A-Z0-9]+")
_MEANING = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def normalise(text: str) -> str:
    """ "Tórax_AP" -> "TORAX AP"; "Thorax p.a." -> "THORAX PA"; "RX-TÓRAX  PORTÁTIL" -> "RX TORAX PORTATIL"."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).upper()
    plain = _DOTTED.sub("", plain)
    return " ".join(_SEPARATORS.sub(" ", plain).split())


def normalise_code(code: str) -> str:
    """ "sct:816094009" / "SNM3:T-D3000" -> "SCT:816094009" / "SRT:T-D3000" (SNM3 and 99SDM are older names of SRT)."""
    scheme, _, value = code.partition(":")
    scheme = scheme.strip().upper()
    scheme = {"SNM3": "SRT", "99SDM": "SRT", "SNOMED": "SCT"}.get(scheme, scheme)
    return f"{scheme}:{value.strip().upper()}"


@dataclass(frozen=True)
class Entry:
    kind: str
    meaning: str
    source: str
    table: str  # which table it came from ("built-in" or a path)


@dataclass(frozen=True)
class Match:
    meaning: str
    phrase: str  # the normalised word or phrase that matched, or "SCHEME:VALUE"
    entry: Entry


@dataclass(frozen=True)
class Vocabulary:
    """kind -> normalised phrase -> Entry, and kind -> normalised code -> Entry."""

    words: Mapping[str, Mapping[str, Entry]] = field(default_factory=dict)
    codes: Mapping[str, Mapping[str, Entry]] = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    # kind -> words in its longest phrase; derived once, so reading an image does not rescan the table
    longest: Mapping[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        lengths = {k: max((p.count(" ") + 1 for p in t), default=1) for k, t in self.words.items()}
        object.__setattr__(self, "longest", lengths)

    def read(self, kind: str, text: str) -> list[Match]:
        """Every word or phrase of `text` this vocabulary knows for `kind`, in text order. Where
        phrases overlap the longest wins ("RX TORAX OSEO": TORAX OSEO, ribs, over RX TORAX, chest)."""
        table = self.words.get(kind, {})
        tokens = normalise(text).split()
        longest = self.longest.get(kind, 1)
        candidates = [
            (n, i, " ".join(tokens[i : i + n]))
            for n in range(min(longest, len(tokens)), 0, -1)
            for i in range(len(tokens) - n + 1)
            if " ".join(tokens[i : i + n]) in table
        ]
        taken: set[int] = set()
        chosen: list[tuple[int, str]] = []
        for n, i, phrase in candidates:  # longest first, then leftmost
            span = set(range(i, i + n))
            if not span & taken:
                taken |= span
                chosen.append((i, phrase))
        return [Match(table[p].meaning, p, table[p]) for _, p in sorted(chosen)]

    def code(self, kind: str, scheme: str, value: str) -> Match | None:
        key = normalise_code(f"{scheme}:{value}")
        entry = self.codes.get(kind, {}).get(key)
        return Match(entry.meaning, key, entry) if entry is not None else None

    def size(self) -> int:
        return sum(len(t) for t in self.words.values()) + sum(len(t) for t in self.codes.values())

    def extended(self, entries: Iterable[Any], table: str, key: str) -> Vocabulary:
        """This vocabulary with `entries` (TOML tables) added; their words replace the same words here."""
        words = {k: dict(v) for k, v in self.words.items()}
        codes = {k: dict(v) for k, v in self.codes.items()}
        own_words: dict[tuple[str, str], str] = {}
        for i, raw in enumerate(entries):
            ekey = f"{key}[{i}]"
            entry, phrases, entry_codes = _parse_entry(ekey, raw, table)
            for phrase in phrases:
                # Within one table a word means one thing; across tables the later table wins.
                earlier = own_words.get((entry.kind, phrase))
                if earlier is not None and earlier != entry.meaning:
                    raise ConfigError(
                        f"{ekey}.words: {phrase!r} already means {earlier!r} for {entry.kind} in this table"
                    )
                if earlier is not None:
                    continue  # the same word in two languages' entries: the first entry names its source
                own_words[(entry.kind, phrase)] = entry.meaning
                words.setdefault(entry.kind, {})[phrase] = entry
            for code in entry_codes:
                codes.setdefault(entry.kind, {})[code] = entry
        return Vocabulary(words, codes, (*self.tables, table))


def _parse_entry(key: str, raw: Any, table: str) -> tuple[Entry, list[str], list[str]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a table with kind, meaning, words and/or codes, source")
    unknown = set(raw) - {"kind", "meaning", "words", "codes", "source", "language"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (kind, meaning, words, codes, source, language)")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{key}.kind: {kind!r} must be one of {', '.join(KINDS)}")
    meaning = raw.get("meaning")
    if not isinstance(meaning, str) or not _MEANING.match(meaning) or meaning in ("conflict", "unrecognised"):
        raise ConfigError(f"{key}.meaning: {meaning!r} must be a lower-case name such as chest or lateral")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{key}.source: say where the entry comes from (a standard, a vendor, a site)")
    words, codes = raw.get("words", []), raw.get("codes", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ConfigError(f"{key}.words: must be a list of strings")
    if not isinstance(codes, list) or not all(isinstance(c, str) and ":" in c for c in codes):
        raise ConfigError(f'{key}.codes: must be a list of "SCHEME:VALUE" strings such as "SCT:816094009"')
    if not words and not codes:
        raise ConfigError(f"{key}: needs words or codes")
    phrases = []
    for j, word in enumerate(words):
        phrase = normalise(word)
        if not phrase:
            raise ConfigError(f"{key}.words[{j}]: {word!r} has no letters or digits")
        phrases.append(phrase)
    return Entry(kind, meaning, source.strip(), table), phrases, [normalise_code(c) for c in codes]


def read_table(path: Path, key: str, base: Vocabulary) -> Vocabulary:
    """`base` extended with the [[entry]] tables of the TOML file at `path`; errors name `key` and the file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read vocabulary table {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not valid TOML: {exc}") from exc
    return _from_document(data, str(path), f"{key} ({path})", base)


def _from_document(data: dict, table: str, key: str, base: Vocabulary) -> Vocabulary:
    unknown = set(data) - {"entry"}
    if unknown:
        raise ConfigError(f"{key}: unknown key {sorted(unknown)[0]!r} (a table holds [[entry]] tables)")
    entries = data.get("entry", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{key}.entry: must be an array of tables ([[entry]])")
    return base.extended(entries, table, f"{key} entry")


def builtin_text() -> str:
    return resources.files("cxr_node.selection").joinpath("vocabulary.toml").read_text(encoding="utf-8")


def builtin() -> Vocabulary:
    """The shipped table. Read on each call (no module-level state); callers keep the result."""
    return _from_document(tomllib.loads(builtin_text()), BUILTIN, BUILTIN, Vocabulary())


__all__ = ["BUILTIN", "KINDS", "Entry", "Match", "Vocabulary", "builtin", "normalise", "read_table"]
