"""The documentation stays inside the repository and its links resolve.

Checks README.md and every docs/**/*.md: each markdown link or image target (outside
fenced code blocks and inline code) must be a relative path to an existing file or
folder of the repository, and an ``#anchor`` into a markdown file must name one of its
headings (GitHub's slugs). Nothing may link outside the repository: no URL with a
scheme, no absolute path, no path that climbs out of the repository root. Also: the
README stays short, and no page mentions the internal spec or the shared folder.

Standard library only; no network.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 15_000
FORBIDDEN_MENTIONS = ("SPEC.md", "shared/")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold nested brackets (one level).
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
)
# [label]: target (reference definitions).
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    """One link target found in a markdown file."""

    file: Path
    line: int
    target: str

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: ({self.target})"


def doc_files() -> list[Path]:
    """README.md and every markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with inline code removed, numbered from 1."""
    lines = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            continue
        if fence is not None:
            if (
                match
                and match.group(1).startswith(fence)
                and not line.strip()[len(match.group(1)) :]
            ):
                fence = None
            continue
        lines.append((number, _INLINE_CODE.sub("", line)))
    return lines


def find_links(path: Path) -> list[Link]:
    """Every link and image target of a markdown file (not in code)."""
    links = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        targets = [m.group(1) for m in _INLINE_LINK.finditer(line)]
        definition = _REFERENCE_DEF.match(line)
        if definition:
            targets.append(definition.group(1))
        for target in targets:
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            links.append(Link(path, number, target.strip()))
    return links


def slugify(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower-cased, punctuation removed
    (except hyphens and underscores), spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    kept = []
    for char in text:
        if char in (" ", "-", "_") or unicodedata.category(char)[0] in ("L", "N", "M"):
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = slugify(match.group(2))
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        result.add(slug)
    return result


def check_link(link: Link, root: Path = ROOT) -> str | None:
    """Why a link is not acceptable, or ``None`` when it is."""
    target = link.target
    if not target:
        return "empty link target"
    if _SCHEME.match(target) or target.startswith("//"):
        return "links outside the repository (URL with a scheme)"
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if path_part.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:[\\/]", path_part):
        return "absolute path"
    resolved = (link.file.parent / path_part).resolve() if path_part else link.file.resolve()
    try:
        resolved.relative_to(root.resolve())
    except ValueError:
        return "resolves outside the repository"
    if not resolved.exists():
        return f"{resolved.relative_to(root.resolve())} does not exist"
    if anchor and resolved.suffix == ".md":
        if anchor not in anchors(resolved):
            return f"no heading with anchor #{anchor} in {resolved.relative_to(root.resolve())}"
    return None


def all_links() -> list[Link]:
    return [link for path in doc_files() for link in find_links(path)]


def test_docs_exist():
    files = doc_files()
    assert (ROOT / "README.md").is_file()
    assert len(files) > 1, "no markdown file under docs/"


def test_every_link_stays_in_the_repository_and_resolves():
    links = all_links()
    assert len(links) > 0, "no link found at all: the link extraction is broken"
    problems = [f"{link.where()} {why}" for link in links if (why := check_link(link))]
    assert not problems, "broken or outgoing links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {
        (readme.parent / unquote(link.target.partition("#")[0])).resolve()
        for link in find_links(readme)
        if not _SCHEME.match(link.target) and link.target.partition("#")[0]
    }
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "docs").rglob("*.md"))
        if path.resolve() not in linked
    ]
    assert not missing, f"docs pages missing from the README's index: {missing}"


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size < README_MAX_BYTES, f"README.md is {size} bytes, must stay under {README_MAX_BYTES}"


def test_no_page_mentions_the_internal_spec_or_the_shared_folder():
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {word!r}"
        for path in doc_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for word in FORBIDDEN_MENTIONS
        if word in line
    ]
    assert not hits, "mentions of files outside the repository:\n" + "\n".join(hits)


# ------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("1. What it is", "1-what-it-is"),
        ("2.1 Record shape", "21-record-shape"),
        ("3. Destination config (the activation)", "3-destination-config-the-activation"),
        ("`absent_profile_ttl`", "absent_profile_ttl"),
        (
            "Streaming on the 2.50 job server: what was found",
            "streaming-on-the-250-job-server-what-was-found",
        ),
        (
            "Sink: `WriteToKinesisStream` against a tuned raw boto3 writer",
            "sink-writetokinesisstream-against-a-tuned-raw-boto3-writer",
        ),
    ],
)
def test_slugify_follows_github(heading, slug):
    assert slugify(heading) == slug


def test_checker_rejects_what_it_must(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    page = root / "docs" / "page.md"
    page.write_text(
        "# Title\n\n## A section\n\n"
        "[ok](page.md#a-section) [ok2](#title) ![img](../docs/page.md)\n"
        "[web](https://example.com) [file](file:///etc/passwd) [abs](/etc/passwd)\n"
        "[up](../../outside.md) [gone](missing.md) [anchor](page.md#nope)\n"
        "```\n[in code](https://example.com)\n```\n"
        "`[inline code](https://example.com)`\n",
        encoding="utf-8",
    )
    (tmp_path / "outside.md").write_text("# Outside\n", encoding="utf-8")
    links = find_links(page)
    verdicts = {link.target: check_link(link, root) for link in links}
    assert set(verdicts) == {
        "page.md#a-section",
        "#title",
        "../docs/page.md",
        "https://example.com",
        "file:///etc/passwd",
        "/etc/passwd",
        "../../outside.md",
        "missing.md",
        "page.md#nope",
    }
    ok = {"page.md#a-section", "#title", "../docs/page.md"}
    for target, why in verdicts.items():
        assert (why is None) == (target in ok), (target, why)
    assert "outside the repository" in verdicts["../../outside.md"]


def test_every_contract_section_cited_in_the_code_exists():
    root = Path(__file__).resolve().parents[1]
    contract = (root / "docs" / "contract.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", contract, flags=re.M))
    cited = {
        (str(path.relative_to(root)), number)
        for folder in ("pipeline", "transforms", "tools", "bench", "tests")
        for path in (root / folder).rglob("*.py")
        for number in re.findall(
            r"docs/contract\.md §(\d+(?:\.\d+)?)", path.read_text(encoding="utf-8")
        )
    }
    assert len(cited) > 20
    assert sorted((path, n) for path, n in cited if n not in sections) == []
