"""Every relative link in README.md and docs/*.md points at a file that exists (and at a heading in it).

The README is kept short by moving detail into docs/ pages and linking to them; a moved or renamed
section must not leave a dead link behind.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def _outside_code_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in _outside_code_fences(page.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def broken_links(page: Path) -> list[str]:
    """The relative links of a Markdown page whose file or heading does not exist, each with why."""
    broken = []
    for line in _outside_code_fences(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if target.startswith(EXTERNAL):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                shown = linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked
                broken.append(f"{target}: no file {shown}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: fix or remove these links: " + "; ".join(broken)


def test_the_check_catches_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# The main job (`rsd-main`, DL19)\n## Status: shipped, one bar short\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n"
        "[ok](other.md#the-main-job-rsd-main-dl19) [ok](other.md#status-shipped-one-bar-short) [ok](#here)\n"
        "[gone](missing.md) [wrong anchor](other.md#status) [web](https://example.org/x.md)\n"
        "```\n[in code](not-checked.md)\n```\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {(tmp_path / 'missing.md').resolve()}",
        "other.md#status: no heading with anchor #status in other.md",
    ]
