"""Keep the catalogs in step with the sources: `python -m longcat.console.messages`.

Extracts every message id from the console's templates (`_()`, `gettext`, `ngettext`) and from
the Python modules that mark them (`N_`, `gettext`), adds new ids to each .po file, marks ids no
longer used as obsolete, and lists the ones still lacking a translation. The test suite runs
`extract()` too and fails on any id without a Chinese translation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from longcat.console import i18n

ROOT = Path(__file__).resolve().parents[1]  # src/longcat
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
METHODS = [("console/templates/**.html", "jinja2"), ("console/**.py", "python"), ("gateway/**.py", "python")]
OPTIONS = {"console/templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "true", "lstrip_blocks": "true"}}


def extract() -> Catalog:
    catalog = Catalog(project="longcat-console", charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
        ROOT, METHODS, options_map=OPTIONS, keywords=KEYWORDS, strip_comment_tags=True
    ):
        if filename.startswith("console/static") or (filename.endswith(".py") and "messages.py" in filename):
            continue
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def update() -> int:
    template = extract()
    missing = 0
    for lang in i18n.LANGUAGES:
        path = i18n.catalog_path(lang)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "rb") as f:
                catalog = read_po(f, locale=lang)
        else:
            catalog = Catalog(locale=lang, project="longcat-console", charset="utf-8")
        catalog.update(template, update_header_comment=False, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        with open(path, "wb") as f:
            write_po(f, catalog, width=120, omit_header=False, sort_output=False, ignore_obsolete=True)
        if lang != "en":
            todo = [m.id for m in catalog if m.id and not m.string]
            missing += len(todo)
            for mid in todo:
                print(f"{lang}: untranslated: {mid!r}")
    print(f"{len(template)} messages; {missing} untranslated")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(update())
