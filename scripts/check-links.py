#!/usr/bin/env python3
"""Checks that every relative link in README.md, docs/**/*.md and minio-dev/README.md resolves.

    python3 scripts/check-links.py

A link is [text](target): targets with a scheme (http:, mailto:) are skipped; a relative
target must name an existing file or directory, relative to the file that holds it, and its
#anchor, if any, must be a heading of the target (GitHub's slug rules). Exits 1 on a broken
link, printing each as file:line: target.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`[^`]*`")


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path):
    out, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def check(md):
    bad, fenced = [], False
    for n, line in enumerate(md.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(CODE.sub(lambda m: m.group(0).replace("](", "]_("), line)):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                bad.append(f"{md.relative_to(ROOT)}:{n}: {target}")
            elif anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{md.relative_to(ROOT)}:{n}: {target} (no such heading)")
    return bad


def main():
    files = [ROOT / "README.md", ROOT / "minio-dev/README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    bad = [b for f in files for b in check(f)]
    print("\n".join(bad) if bad else f"{len(files)} files, every relative link resolves")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
