"""The README's paper-to-code map cites file.py:line function; each citation must point at that def."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cited_line_is_the_def_of_that_function():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Paper-to-code map"):]
    section = section[:section.index("\n## ", 5)]
    cites = re.findall(r"`(\w+\.py):(\d+) (\w+)`", section)
    assert len(cites) >= 20, cites
    for path, line, name in cites:
        lines = open(os.path.join(ROOT, path)).read().splitlines()
        assert re.match(rf"\s*def {name}\(", lines[int(line) - 1]), \
            f"README cites {path}:{line} {name}, but that line is: {lines[int(line) - 1]!r}"


def test_exercise_sheets_name_existing_project_functions():
    import importlib
    import sys
    sys.path.insert(0, ROOT)
    for sheet in sorted(os.listdir(os.path.join(ROOT, "exercises"))):
        if sheet.startswith("ex") and sheet.endswith(".md"):
            head = open(os.path.join(ROOT, "exercises", sheet)).read().split("\n\n")[1]
            for mod, fn in re.findall(r"`(\w+)\.(\w+)`", head.split("·")[0]):
                assert callable(getattr(importlib.import_module(mod), fn, None)), (sheet, mod, fn)
