"""Transcript sources and per-language ASR text normalization for the synthetic corpus.

Languages: en, de, es, ru, hi, ta, gu. An accent code such as ``en-029`` or ``en-gb-scotland``
uses its base language's texts, normalization and labels (everything before the first ``-``).

Text sources:

- ``digits``: 1-4 digit words (0-9) of the language, e.g. ``"eins vier null"``; a tiny model
  learns them in minutes on CPU;
- ``cldr``: territory, language, script, currency, month, day and unit names from the CLDR data
  in Babel, recombined with CLDR's own list and unit patterns (``"3 kilometers"``,
  ``"Chile, Peru und Laos"``) into tens of thousands of distinct sentences;
- ``mixed``: both, interleaved half and half.

Every text is normalized with :func:`normalize` and uses only :func:`labels_for` characters.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from typing import Any

import numpy as np

from nemo_tl.errors import input_error

LANGUAGES = ("en", "de", "es", "ru", "hi", "ta", "gu")
TEXT_SOURCES = ("digits", "cldr", "mixed")

DIGIT_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "ru": ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"),
    "hi": ("शून्य", "एक", "दो", "तीन", "चार", "पाँच", "छह", "सात", "आठ", "नौ"),
    "ta": ("பூஜ்ஜியம்", "ஒன்று", "இரண்டு", "மூன்று", "நான்கு", "ஐந்து", "ஆறு", "ஏழு", "எட்டு", "ஒன்பது"),
    "gu": ("શૂન્ય", "એક", "બે", "ત્રણ", "ચાર", "પાંચ", "છ", "સાત", "આઠ", "નવ"),
}

_LATIN = "abcdefghijklmnopqrstuvwxyz"
_EXTRA_LETTERS = {"en": "'", "de": "äöüß", "es": "ñáéíóúü", "ru": "ё"}
# Code point ranges of the Indic scripts in modern use for the language (Vedic and other
# languages' marks left out); their letters and combining marks become the labels.
_INDIC_RANGES = {
    "hi": ((0x0901, 0x0939), (0x093C, 0x094D), (0x0950, 0x0950), (0x0960, 0x0963)),
    "ta": ((0x0B82, 0x0BD7),),
    "gu": ((0x0A81, 0x0AB9), (0x0ABC, 0x0ACD), (0x0AD0, 0x0AD0), (0x0AE0, 0x0AE3)),
}
_APOSTROPHES = "\u2019\u02bc\u2018`´"


def base_language(lang: str) -> str:
    """``"en-gb-scotland"`` -> ``"en"``; raises InputError for a language without texts."""
    base = lang.split("-")[0].lower()
    if base not in LANGUAGES:
        raise input_error(
            f"unknown language {lang!r}",
            where="synth_corpus --langs",
            fix=f"use one of {', '.join(LANGUAGES)} or an English accent such as en-us, en-gb-scotland, en-029",
        )
    return base


@cache
def labels_for(lang: str) -> list[str]:
    """Character vocabulary of ``lang``: space first, then its letters.

    en: ``[' ', 'a'..'z', "'"]``; de/es: a-z plus their letters; ru: а-я plus ё; hi/ta/gu:
    every letter and combining mark of the script
    in modern use for the language that is stable under NFC (digits and danda are not labels).
    """
    base = base_language(lang)
    if base in ("en", "de", "es"):
        letters = list(_LATIN) + list(_EXTRA_LETTERS.get(base, ""))
    elif base == "ru":
        letters = [chr(c) for c in range(ord("а"), ord("я") + 1)] + ["ё"]
    else:
        letters = []
        for lo, hi in _INDIC_RANGES[base]:
            for c in range(lo, hi + 1):
                ch = chr(c)
                if unicodedata.category(ch)[0] in "LM" and unicodedata.normalize("NFC", ch) == ch:
                    letters.append(ch)
    return [" ", *letters]


def expand_labels(value: Any, where: str = "model.labels") -> Any:
    """``value`` with a language code (``"de"``) replaced by that language's alphabet, :func:`labels_for`.

    A plain string is always read as a language code, never as a sequence of characters (``"de"``
    is German, not the labels ``['d', 'e']``); lists and other values are returned as they are.
    Raises InputError naming ``where`` for a code without an alphabet here.
    """
    if not isinstance(value, str):
        return value
    base = value.split("-")[0].lower()
    if base not in LANGUAGES:
        raise input_error(
            f"unknown language code {value!r} (a plain string is read as a language code)",
            where=where,
            fix=f"use one of {', '.join(LANGUAGES)}, or give the characters as a list, e.g. [' ', a, b, c]",
        )
    return list(labels_for(base))


@cache
def _label_set(base: str) -> frozenset[str]:
    return frozenset(labels_for(base))


def _fold(ch: str, allowed: frozenset[str]) -> str:
    """Map a letter outside the alphabet to its base letters (é -> e for en) where those are allowed."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)).lower()
    return stripped if stripped and all(c in allowed for c in stripped) else ch


def normalize(text: str, lang: str) -> str:
    """Normalize ``text`` for ASR in ``lang``.

    NFC, lowercase, digits spelled with the language's digit words, punctuation and symbols to
    spaces (en keeps the apostrophe), Latin letters outside the alphabet folded to their base
    letter where that is in it (``curaçao`` -> ``curacao`` in en), zero-width joiners dropped,
    spaces collapsed. Letters of other scripts are kept, so :func:`is_valid` can reject the text.
    """
    base = base_language(lang)
    allowed = _label_set(base)
    out = []
    for ch in unicodedata.normalize("NFC", text).lower():
        if ch in allowed:
            out.append(ch)
        elif ch in _APOSTROPHES and base == "en":
            out.append("'")
        elif ch.isdigit() and unicodedata.digit(ch, None) is not None:
            out.append(f" {DIGIT_WORDS[base][unicodedata.digit(ch)]} ")
        elif ch in "\u200c\u200d\u00ad":
            continue
        elif unicodedata.category(ch)[0] in "LM":
            out.append(_fold(ch, allowed))
        else:
            out.append(" ")
    words = "".join(out).split()
    if base == "en":  # an apostrophe only inside a word: "d'ivoire", not "'s" alone or "x'"
        words = [w.strip("'") for w in words]
    return " ".join(w for w in words if w)


def is_valid(text: str, lang: str) -> bool:
    """True when ``text`` is non-empty and uses only ``labels_for(lang)``."""
    allowed = _label_set(base_language(lang))
    return bool(text.strip()) and all(c in allowed for c in text)


def digit_texts(lang: str) -> list[str]:
    """All 11,110 sequences of 1-4 digit words of ``lang``, shortest first."""
    words = DIGIT_WORDS[base_language(lang)]
    texts: list[str] = []
    seqs: list[tuple[int, ...]] = [()]
    for _ in range(4):
        seqs = [s + (d,) for s in seqs for d in range(10)]
        texts.extend(" ".join(words[d] for d in s) for s in seqs)
    return texts


def _cldr_names(lang: str) -> dict[str, list[str]]:
    from nemo_tl.utils.extras import require

    loc = require("babel", "synth").Locale.parse(lang)
    names = {
        "territory": [v for k, v in loc.territories.items() if k.isalpha()],
        "language": list(loc.languages.values()),
        "script": list(loc.scripts.values()),
        "currency": list(loc.currencies.values()),
        "month": list(loc.months["format"]["wide"].values()),
        "day": list(loc.days["format"]["wide"].values()),
    }
    return {k: sorted(set(v)) for k, v in names.items()}


def cldr_texts(lang: str, count: int, seed: int = 0) -> list[str]:
    """Up to ``count`` distinct normalized sentences recombined from CLDR (Babel) data of ``lang``.

    Kinds, drawn at random: one name; a CLDR list of 2-3 names of one kind (``"a, b and c"``);
    a number 0-9 with a unit name in CLDR's plural pattern (``"3 kilometers"``); two such
    measures as a list; a name followed by a measure. Deterministic for ``seed``.
    """
    base = base_language(lang)
    names = _cldr_names(base)  # raises ImportError naming nemo_tl[synth] without Babel
    kinds = sorted(names)
    from babel import Locale
    from babel.lists import format_list
    from babel.units import format_unit

    units = sorted(Locale.parse(base).unit_display_names.keys())
    rng = np.random.default_rng([seed, 7])

    def pick(kind: str) -> str:
        pool = names[kind]
        return pool[rng.integers(len(pool))]

    def measure() -> str:
        unit = units[rng.integers(len(units))]
        try:
            return format_unit(int(rng.integers(10)), unit, length="long", locale=base)
        except Exception:  # a unit without a long pattern in this locale
            return ""

    seen: set[str] = set()
    texts: list[str] = []
    attempts = 0
    while len(texts) < count and attempts < 20 * count:
        attempts += 1
        form = rng.integers(5)
        if form == 0:
            raw = pick(kinds[rng.integers(len(kinds))])
        elif form == 1:
            kind = kinds[rng.integers(len(kinds))]
            raw = format_list([pick(kind) for _ in range(int(rng.integers(2, 4)))], locale=base)
        elif form == 2:
            raw = measure()
        elif form == 3:
            raw = format_list([measure(), measure()], locale=base)
        else:
            raw = f"{pick(kinds[rng.integers(len(kinds))])} {measure()}"
        text = normalize(raw, base)
        if text not in seen and is_valid(text, base) and len(text.split()) <= 12:
            seen.add(text)
            texts.append(text)
    return texts


def text_pool(lang: str, source: str, seed: int = 0, count: int = 20000) -> list[str]:
    """Distinct normalized texts of ``lang`` from ``source`` in a seeded random order.

    ``digits``: all 1-4 word sequences, ordered so that each position draws a length 1-4
    uniformly (while that length lasts); ``cldr``: :func:`cldr_texts`; ``mixed``: the two
    interleaved. Every text uses only ``labels_for(lang)``.
    """
    if source not in TEXT_SOURCES:
        raise input_error(
            f"unknown text source {source!r}",
            where="synth_corpus --texts",
            fix=f"use one of {', '.join(TEXT_SOURCES)}",
        )
    base = base_language(lang)
    rng = np.random.default_rng([seed, 11])
    if source == "cldr":
        texts = cldr_texts(base, count, seed)
    else:
        by_len: list[list[str]] = [[], [], [], []]
        for t in digit_texts(base):
            by_len[t.count(" ")].append(t)
        for group in by_len:
            rng.shuffle(group)
        texts = []
        while any(by_len) and len(texts) < count:
            left = [g for g in by_len if g]
            texts.append(left[rng.integers(len(left))].pop())
        if source == "mixed":
            cldr = cldr_texts(base, count, seed)
            texts = list(dict.fromkeys(t for pair in zip(texts, cldr) for t in pair))[:count]
    for t in texts:
        assert is_valid(t, base), f"{base}: text {t!r} uses characters outside labels_for({base!r})"
    return texts
