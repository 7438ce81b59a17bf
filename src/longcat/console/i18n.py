"""Languages: gettext catalogs (.po, edited by people) compiled in memory at start-up with Babel,
so there is no build step and no compiled file to forget.

The language comes from the `lc_lang` cookie (set by the switcher on every page), else from the
browser's Accept-Language, else English.
"""

from __future__ import annotations

import io
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

HERE = Path(__file__).parent / "translations"
LANGUAGES = {"en": "English", "zh_CN": "简体中文"}
DEFAULT = "en"
HTML_LANG = {"en": "en", "zh_CN": "zh-CN"}
COOKIE = "lc_lang"


def catalog_path(lang: str) -> Path:
    return HERE / lang / "LC_MESSAGES" / "messages.po"


def load(lang: str) -> Translations:
    with open(catalog_path(lang), "rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(buf)


def load_all() -> dict[str, Translations]:
    return {lang: load(lang) for lang in LANGUAGES}


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return cookie  # type: ignore[return-value]
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip().lower().replace("_", "-")))
    for _q, _i, tag in sorted(ranked):
        if tag.startswith("zh"):
            return "zh_CN"  # the one Chinese catalog: Simplified
        if tag.startswith("en") or tag == "*":
            return "en"
    return DEFAULT
