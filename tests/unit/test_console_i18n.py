"""The console's catalogs: every message in the sources has a Chinese translation with the same
placeholders, the catalogs compile, and the language is chosen as documented."""

from __future__ import annotations

import re

from babel.messages.pofile import read_po

from longcat.console import i18n
from longcat.console.messages import extract

PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def catalog(lang: str):
    with open(i18n.catalog_path(lang), "rb") as f:
        return read_po(f, locale=lang)


def test_every_message_has_a_chinese_translation():
    source = {m.id for m in extract() if m.id}
    assert len(source) > 250
    zh = {m.id: m for m in catalog("zh_CN") if m.id}
    missing = sorted(i for i in source if i not in zh or not zh[i].string or zh[i].fuzzy)
    assert missing == [], f"untranslated (run python -m longcat.console.messages): {missing}"


def test_translations_keep_their_placeholders():
    for m in catalog("zh_CN"):
        if m.id and m.string:
            assert sorted(PLACEHOLDER.findall(m.id)) == sorted(PLACEHOLDER.findall(m.string)), m.id


def test_chinese_is_chinese():
    cjk = re.compile(r"[\u4e00-\u9fff]")
    untouched = [m.id for m in catalog("zh_CN") if m.id and m.string and not cjk.search(m.string)]
    # Only names and symbols stay as they are.
    assert set(untouched) <= {"API Keys", "Open"} | {i for i in untouched if not re.search(r"[a-z]{3,}", i)}, untouched


def test_catalogs_compile_and_translate():
    tr = i18n.load_all()
    assert tr["zh_CN"].gettext("Sign in") == "登录"
    assert tr["en"].gettext("Sign in") == "Sign in"


def test_language_negotiation():
    assert i18n.negotiate(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh_CN"
    assert i18n.negotiate(None, "en-US,en;q=0.9,zh;q=0.8") == "en"
    assert i18n.negotiate(None, "fr-FR, zh-TW;q=0.5") == "zh_CN"
    assert i18n.negotiate(None, "de;q=x, ja") == "en"
    assert i18n.negotiate("zh_CN", "en") == "zh_CN"
    assert i18n.negotiate("bogus", None) == "en"
