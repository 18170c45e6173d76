"""The README and docs/ pages: every command they show parses with the real command-line parser,
and every relative link (and its #anchor) resolves.

A command is a `python train.py ...`, `python benchmarks/<name>.py ...` or
`python -m experiments.downloads ...` line (any other `python X.py` is refused: no such command) in a fenced code block or an inline code span. Shell
variables in the recipes are replaced by values they take (SHELL_VALUES); the rest of the line after
`;`, `&`, `|` or a closing quote is the shell's, not the command's.
"""
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"python3? (-m [\w.]+|[\w./-]+\.py)(?![\w.])([^\n]*)")
NOT_PARSED = {"-m pytest", "-m venv", "-m pip"}  # other programs' command lines
SHELL_VALUES = {"$i": "3", "$SLURM_ARRAY_TASK_ID": "5", "$SLURM_ARRAY_TASK_COUNT": "32"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def code_of(markdown: str) -> list:
    """The text of every fenced code block and inline code span, backslash-continued lines joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return [text.replace("\\\n", " ") for text in blocks + spans]


def commands_of(markdown: str) -> list:
    """[(program, argv)] for every command in the page's code."""
    found = []
    for code in code_of(markdown):
        for program, rest in COMMAND.findall(code):
            rest = re.split(r"[;&|'\"]", rest)[0]
            for name, value in SHELL_VALUES.items():
                rest = rest.replace(name, value)
            found.append((program, shlex.split(rest, comments=True)))
    return found


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"{path.stem}_documented", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(program: str, argv: list, monkeypatch):
    """Parse argv as `program` does; SystemExit (with argparse's message) when it would refuse it."""
    if "$" in " ".join(argv):
        raise SystemExit(f"a shell variable without a value in SHELL_VALUES: {argv}")
    if program in NOT_PARSED:
        return None
    if program == "train.py":
        import train
        return train.parse_args(argv)
    if program == "-m experiments.downloads":
        from experiments import downloads
        asked = []
        monkeypatch.setattr(downloads, "download", lambda *a, **k: asked.append((a, k)))
        if downloads.main(argv) != 0 or not asked:
            raise SystemExit(f"the downloader refuses {argv}")
        return asked
    if not program.startswith("benchmarks/") or not (REPO / program).is_file():
        raise SystemExit(f"no such command here: python {program} (see the README's map of files)")
    return load_script(REPO / program).parser().parse_args(argv)


def check_commands(markdown: str, monkeypatch) -> list:
    """The commands of a page that do not parse, each with the parser's complaint."""
    bad = []
    for program, argv in commands_of(markdown):
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
                parse(program, argv, monkeypatch)
        except SystemExit as error:
            if error.code not in (0, None):  # -h exits 0
                complaint = said.getvalue().strip().splitlines()[-1:] if error.code == 2 else [str(error.code)]
                bad.append(f"python {program} {shlex.join(argv)}: {complaint[0]}")
    return bad


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(markdown: str) -> set:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def broken_links(markdown: str, folder: Path) -> list:
    """Relative links of a page (in `folder`) whose file, or whose #anchor in a page, is missing."""
    broken = []
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        path = (folder / file).resolve()
        if file and not path.exists():
            broken.append(target)
        elif fragment and (not file or path.suffix == ".md"):
            if fragment not in anchors_of(path.read_text() if file else markdown):
                broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_documented_command_parses(page, monkeypatch, capsys):
    assert check_commands(page.read_text(), monkeypatch) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page.read_text(), page.parent) == []


def test_the_pages_show_the_commands_that_matter():
    """The checks above see the README's commands: the main run, a download, a benchmark."""
    readme = commands_of((REPO / "README.md").read_text())
    assert ("train.py", ["--dataset", "caltech101", "--shots", "16", "--download"]) in readme
    everything = [c for page in PAGES for c in commands_of(page.read_text())]
    assert {program for program, _ in everything} >= {"train.py", "-m experiments.downloads",
                                                      "benchmarks/epoch.py", "benchmarks/text_side.py"}
    assert len(everything) >= 30


def test_every_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme or f"](docs/{page.name}#" in readme, page.name


def test_a_planted_bad_flag_or_command_is_caught(monkeypatch, capsys):
    planted = """
```bash
python train.py --dataset caltech101 --shots 16 --epoch 5      # --epochs misspelt
python train.py --dataset caltech101 --eval-only               # no --checkpoint
python benchmarks/epoch.py --model ViT-B-16 --clases 100
python -m experiments.downloads caltech101 --mirorr https://example.org
python datasets.py download caltech101                         # a script that is not there
```
and inline: `python train.py --text-noise everywhere`.
"""
    bad = check_commands(planted, monkeypatch)
    assert len(bad) == 6, bad
    assert "unrecognized arguments: --epoch 5" in bad[0] and "--eval-only needs --checkpoint" in bad[1]
    assert "unrecognized arguments: --clases" in bad[2] and "--mirorr" in bad[3]
    assert "no such command here: python datasets.py" in bad[4] and "invalid choice" in bad[5]
    good = "```bash\npython train.py --dataset caltech101 --shots 16 --epochs 5\n```\n"
    assert check_commands(good, monkeypatch) == []


def test_a_planted_broken_link_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "speed.md").write_text("# Speed\n\n## The data path: `--augment`\n")
    page = ("[ok](docs/speed.md) [ok](docs/speed.md#the-data-path---augment) [web](https://example.org/x) "
            "[gone](docs/sped.md) [no such part](docs/speed.md#the-data-pathway) [here](#nowhere)\n"
            "```\n[in code](not/a/link.md)\n```\n")
    assert broken_links(page, tmp_path) == ["docs/sped.md", "docs/speed.md#the-data-pathway", "#nowhere"]
