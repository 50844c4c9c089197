"""The README's paper-to-code map cites file.py:line function; each citation must point at that def."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cited_function_exists():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Paper-to-code map"):]
    section = section[:section.index("\n## ", 5)]
    cites = re.findall(r"`(\w+\.py)::(\w+)`", section)
    assert len(cites) >= 20, cites
    for path, name in cites:
        source = open(os.path.join(ROOT, path)).read()
        assert re.search(rf"^\s*def {name}\(", source, re.M), \
            f"README cites {path}::{name}, which {path} does not define"


def test_no_file_outside_the_repository_is_cited():
    for folder, _, files in os.walk(ROOT):
        parts = os.path.relpath(folder, ROOT).split(os.sep)
        if any(part.startswith(".") or part in ("runs", "models") for part in parts):
            continue
        for f in files:
            if f.endswith((".md", ".py")) and f != os.path.basename(__file__):
                assert "../shared" not in open(os.path.join(folder, f)).read(), os.path.join(folder, f)


def test_exercise_sheets_name_existing_project_functions():
    import importlib
    import sys
    sys.path.insert(0, ROOT)
    for sheet in sorted(os.listdir(os.path.join(ROOT, "exercises"))):
        if sheet.startswith("ex") and sheet.endswith(".md"):
            head = open(os.path.join(ROOT, "exercises", sheet)).read().split("\n\n")[1]
            for mod, fn in re.findall(r"`(\w+)\.(\w+)`", head.split("·")[0]):
                assert callable(getattr(importlib.import_module(mod), fn, None)), (sheet, mod, fn)
