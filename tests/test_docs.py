"""The docs cannot drift: the settings table is the generated one, the README stays short and its
set-up commands are CI's, and every relative link (and its #anchor) leads somewhere."""

import re
from pathlib import Path

import pytest

from service import settings_doc
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SERVING = ROOT / "docs" / "SERVING.md"
CI = ROOT / ".ci" / "run"
MAX_README_LINES = 150
SERVE_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m service"
LINKED_DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """Markdown without its fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """The #anchors GitHub gives the headings of a Markdown file."""
    anchors, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _settings_block() -> str:
    text = SERVING.read_text(encoding="utf-8")
    assert text.count(settings_doc.START) == 1 and text.count(settings_doc.END) == 1
    return text.split(settings_doc.START, 1)[1].split(settings_doc.END, 1)[0]


def _code_lines(text: str) -> list[str]:
    """The lines inside the fenced code blocks of a Markdown text."""
    return [line for block in FENCE.finditer(text) for line in block.group(0).splitlines()[1:-1]]


def test_settings_table_in_serving_md_is_the_generated_one() -> None:
    # If this fails: python -m service.settings_doc
    assert _settings_block() == "\n" + settings_doc.settings_table()


def test_every_setting_appears_once_with_its_flag() -> None:
    rows = [line for line in _settings_block().splitlines() if line.startswith("| `CTM_")]
    assert len(rows) == len(Settings.model_fields)
    flags = settings_doc.flags()
    assert {"checkpoint_dir", "default_model", "host", "port", "workers", "device", "log_level"} <= set(flags)
    for name in Settings.model_fields:
        (row,) = [row for row in rows if row.startswith(f"| `CTM_{name.upper()}` |")]
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert len(cells) == 5, row
        assert cells[1] == (f"`{flags[name]}`" if name in flags else "—")
        assert cells[2] and cells[3] and len(cells[4]) > 10, row
    checkpoint_dir = next(row for row in rows if "CTM_CHECKPOINT_DIR" in row)
    assert "./checkpoints, else the shipped models" in checkpoint_dir


def test_settings_doc_check_and_rewrite(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"before\n{settings_doc.START}\nold table\n{settings_doc.END}\nafter\n", encoding="utf-8")
    assert settings_doc.main(["--check", "--path", str(page)]) == 1
    assert settings_doc.main(["--path", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert settings_doc.settings_table() in text
    assert settings_doc.main(["--check", "--path", str(page)]) == 0


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_setup_commands_are_cis() -> None:
    # .ci/run runs the README's test command verbatim: the same bytes in both files.
    ci = [line for line in CI.read_text(encoding="utf-8").splitlines() if line.startswith("python3 -m venv")]
    assert len(ci) == 1, ci
    readme = README.read_text(encoding="utf-8")
    code = _code_lines(readme)
    assert ci[0] in code
    assert SERVE_COMMAND in code
    # The serve command sets up the environment the same way.
    assert SERVE_COMMAND.split(" && pip")[0] == ci[0].split(" && pip")[0]


def test_readme_overwrites_no_shipped_checkpoint() -> None:
    for line in README.read_text(encoding="utf-8").splitlines():
        if "ctm_core.train" in line:
            assert "--overwrite" not in line and "--out checkpoints" not in line, line


@pytest.mark.parametrize("page", LINKED_DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, broken
