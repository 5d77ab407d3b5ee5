"""The code shown in the docs and the README is correct Python, and the scripts run.

The serial snippets are doctests, executed by ``sphinx-build -b doctest`` (the nox
``docs`` session). The snippets that start processes are plain code blocks; here
every one of them must at least compile, and the tutorial's complete scripts run
as subprocesses, bounded in time, in their own process group.

The HTML build runs here too, nitpicky and with warnings as errors, and every
link between the built pages must lead to a page and an anchor that exist. It
needs Sphinx and the furo theme (the ``docs`` extra): without them it skips,
unless ``EZPOOL_DOCS_REQUIRED`` is set, as the nox ``docs`` session (which CI
runs) sets it, where a missing theme is a failure.
"""

from __future__ import annotations

import ast
import contextlib
import html.parser
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.test_examples import free_port, needs_distributed, no_servers_left

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def code_blocks(path: Path, language: str) -> list[str]:
    """The bodies of ``.. code-block:: LANGUAGE`` directives in an .rst file."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.strip() != f".. code-block:: {language}":
            continue
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and not following.startswith((" ", "\t")):
                break
            body.append(following)
        text = textwrap.dedent("\n".join(body)).strip("\n")
        blocks.append(re.sub(r"^:\w+:.*\n", "", text))  # drop directive options
    return blocks


def run_script(source: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    script = tmp_path / "snippet.py"
    script.write_text(source, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="error,ignore::DeprecationWarning")
    env.pop("EZPOOL_HMAC_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = "", f"timed out after {timeout} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return subprocess.CompletedProcess(script, proc.returncode, out, err)


@pytest.mark.parametrize("page", [*sorted(p.name for p in DOCS.glob("*.rst")), "../README.rst"])
def test_python_blocks_compile(page: str) -> None:
    path = DOCS / page
    for block in code_blocks(path, "python"):
        ast.parse(block, filename=str(path))


def test_shell_commands_are_not_python_blocks() -> None:
    # The tutorial of old showed shell commands as ``code-block:: python``; keep them apart.
    for path in DOCS.glob("*.rst"):
        for block in code_blocks(path, "python"):
            assert not block.lstrip().startswith(("$", "python ", "pip ")), (path.name, block)


def test_tutorial_parallel_example_runs(tmp_path: Path) -> None:
    first = code_blocks(DOCS / "tutorial.rst", "python")[0]
    assert "pool.pmap(fib, range(30), ncpu=2)" in first
    done = run_script(first, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == "514229"
    assert float(lines[1]) > 0


def test_readme_example_runs(tmp_path: Path) -> None:
    (block,) = code_blocks(ROOT / "README.rst", "python")
    done = run_script(block, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("514229 ")
    assert done.stdout.rstrip().endswith("{}")


def test_readme_opens_with_the_two_commands() -> None:
    bash = code_blocks(ROOT / "README.rst", "bash")
    assert bash[:2] == [
        "python -m pip install . && "
        "python examples/fib.py --mode parallel --tasks 25 26 27 28 29 30 --ncpu 2",
        "python -m pip install nox && python -m nox",
    ]
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    first_block = text.index(".. code-block::")
    assert text.index(".. code-block:: bash") == first_block


def test_readme_says_what_ezpool_is_and_how_to_install_it_before_any_command() -> None:
    # PyPI shows the README: its opening is for people who have no checkout.
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    opening = text[: text.index(".. code-block::")]
    assert opening.split("\n\n")[1].startswith("EzPool runs one function over many tasks")
    assert "``python -m pip install ezpool``" in opening
    assert opening.rstrip().endswith("run these two commands first:")


def test_recipe_for_worker_output_runs_and_shows_what_it_says(tmp_path: Path) -> None:
    source = next(block for block in code_blocks(DOCS / "recipes.rst", "python") if "capture_output" in block)
    (shown,) = [block for block in code_blocks(DOCS / "recipes.rst", "text") if "[pid " in block]
    done = run_script(source, tmp_path)
    assert done.returncode == 0, done.stderr
    expected = [re.sub(r"pid \d+", "pid N", line) for line in shown.splitlines()]
    got = [re.sub(r"pid \d+", "pid N", line) for line in (done.stdout + done.stderr).splitlines()]
    assert sorted(got) == sorted(expected)

@needs_distributed
def test_tutorial_distributed_example_runs_with_nothing_started(tmp_path: Path) -> None:
    second = code_blocks(DOCS / "tutorial.rst", "python")[1]
    assert "pool.dmap(FibWorker, range(30), workers=workers, spawn=True)" in second
    ports = [free_port(), free_port()]
    source = second.replace("21000", str(ports[0])).replace("21001", str(ports[1]))
    source += "\n    print(results[29], len(results), len(results.errors))\n"
    with no_servers_left(*ports):
        done = run_script(source, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["514229", "30", "0"]


def test_api_reference_covers_every_public_name() -> None:
    import ezpool

    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    directive = r"^\.\. (?:autoclass|autoexception|autofunction|py:data|py:function):: ezpool\.(\w+)"
    documented = set(re.findall(directive, api, re.MULTILINE))
    assert set(ezpool.__all__) <= documented, sorted(set(ezpool.__all__) - documented)


#: Each script of docs/interop.rst (found by a line of it) and a line it must print.
INTEROP = {
    "as_completed(futures)": "fib(25) = 75025",
    "run_in_executor": "[6765, 10946, 17711, 28657, 46368]",
    "delayed(sqrt)": "[0.0, 1.0, 1.4142135623730951, 1.7320508075688772, 2.0,",
    "as parallel:": "9801 970299",
    "GridSearchCV(SVC()": "{'C': 10, 'gamma': 0.001}",
}


@pytest.mark.parametrize("marker", list(INTEROP))
def test_interop_scripts_run(marker: str, tmp_path: Path) -> None:
    (source,) = [block for block in code_blocks(DOCS / "interop.rst", "python") if marker in block]
    ports = [free_port(), free_port()]
    source = source.replace("21000", str(ports[0])).replace("21001", str(ports[1]))
    with no_servers_left(*ports):
        done = run_script(source, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert INTEROP[marker] in done.stdout, done.stdout


def test_every_interop_script_is_run() -> None:
    blocks = code_blocks(DOCS / "interop.rst", "python")
    assert all(sum(marker in block for marker in INTEROP) == 1 for block in blocks)
    assert len(blocks) == len(INTEROP)


#: Columns of a code block that furo shows without scrolling, at desktop widths.
CODE_COLUMNS = 88


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_code_blocks_fit_the_page(page: str) -> None:
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    languages = set(re.findall(r"^\s*\.\. code-block:: (\w+)", text, re.MULTILINE))
    too_wide = [
        line
        for language in languages
        for block in code_blocks(path, language)
        for line in block.splitlines()
        if len(line) > CODE_COLUMNS
    ]
    assert not too_wide, f"lines over {CODE_COLUMNS} columns are cut off in the rendered page: {too_wide}"


def _docs_tools_or_skip() -> None:
    """Skip (or, where the docs are required, fail) without Sphinx and the furo theme."""
    missing = [name for name in ("sphinx", "furo") if importlib.util.find_spec(name) is None]
    if not missing:
        return
    message = (
        f"{' and '.join(missing)} not installed: python -m pip install -e \".[docs]\" "
        "(the nox docs session installs the docs extra and runs this test)"
    )
    if os.environ.get("EZPOOL_DOCS_REQUIRED"):
        pytest.fail(message)
    pytest.skip(message)


class _Anchors(html.parser.HTMLParser):
    """The ids a page defines and the links it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if name in ("href", "src") and value and tag in ("a", "img", "link", "script"):
                self.links.append(value)


def _broken_links(site: Path) -> list[str]:
    pages = {}
    for page in site.rglob("*.html"):
        parser = _Anchors()
        parser.feed(page.read_text(encoding="utf-8"))
        pages[page.resolve()] = parser
    broken = []
    for page, parser in pages.items():
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                continue  # external: not checked offline
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(site.resolve())}: {link} (no such file)")
            elif parts.fragment and target in pages and unquote(parts.fragment) not in pages[target].ids:
                broken.append(f"{page.relative_to(site.resolve())}: {link} (no such anchor)")
    return broken


#: The built site's folder, and how its build went.
Built = tuple[Path, "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def html_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The HTML docs, built once for this module (nitpicky, warnings as errors): the
    site's folder and how the build went."""
    _docs_tools_or_skip()
    folder = tmp_path_factory.mktemp("docs")
    site = folder / "html"
    command = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(folder / "doctrees"), str(DOCS), str(site)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return site, built


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_html_builds_without_warnings_or_broken_links(html_build: Built) -> None:
    site, built = html_build
    assert built.returncode == 0, built.stderr
    pages = {page.stem for page in DOCS.glob("*.rst")}
    assert pages <= {page.stem for page in site.glob("*.html")}
    assert "furo" in (site / "index.html").read_text(encoding="utf-8")
    broken = _broken_links(site)
    assert not broken, "\n".join(broken)


#: What a page looks like in the browser at 1280 px, as lists of offenders:
#: ``wrapped``, code literals in table cells that break over lines (``paralle|l``);
#: ``scrolled``, code blocks wider than their box (a sideways scroll), by their
#: longest line; ``wide``, tables wider than the page's column; ``images``, images
#: shown smaller than they are, with no link to their full size; and ``shown``,
#: every image as [file, natural width, shown width, link].
LAYOUT = """(() => {
  const shown = (el) => el.getClientRects().length > 0;
  const longest = (text) => text.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), "");
  const out = {wrapped: [], scrolled: [], wide: [], images: [], shown: []};
  for (const code of document.querySelectorAll("td code, th code")) {
    if (shown(code) && code.getClientRects().length > 1) out.wrapped.push(code.textContent);
  }
  for (const pre of document.querySelectorAll("pre")) {
    if (shown(pre) && pre.scrollWidth > pre.clientWidth + 1) out.scrolled.push(longest(pre.textContent));
  }
  for (const table of document.querySelectorAll("article table.docutils")) {
    const box = table.closest(".table-wrapper") || table.parentElement;
    if (shown(table) && box.scrollWidth > box.clientWidth + 1) {
      out.wide.push(`${table.textContent.trim().replace(/\\s+/g, " ").slice(0, 60)} `
                    + `(${box.scrollWidth} px in ${box.clientWidth} px)`);
    }
  }
  for (const img of document.querySelectorAll("article img")) {
    const file = img.getAttribute("src").split("/").pop();
    const link = img.closest("a");
    const href = link ? link.getAttribute("href") : null;
    out.shown.push([file, img.naturalWidth, img.clientWidth, href]);
    const linked = href !== null && href.split("/").pop() === file;
    if (img.clientWidth < 0.9 * img.naturalWidth && !linked) {
      out.images.push(`${file}: ${img.naturalWidth} px wide, shown at ${img.clientWidth} px, no link to it`);
    }
  }
  return out;
})()"""


def _chromium_or_skip() -> None:
    """Skip (or, where the docs are required, fail) without a Chromium to look with."""
    from tests.browser import COMMANDS, find_chromium

    if find_chromium() is not None:
        return
    message = (f"no Chromium on the PATH (looked for {', '.join(COMMANDS)}): apt-get install chromium "
               "(.ci/run installs it)")
    if os.environ.get("EZPOOL_DOCS_REQUIRED"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_page_fits_a_1280_px_browser(html_build: Built) -> None:
    # Looked at in a real (headless) Chromium, one for every page: code literals in
    # tables stay whole, no code block or table needs a sideways scroll, and an image
    # shown smaller than it is links to its full size.
    _chromium_or_skip()
    from tests.browser import Browser

    site, built = html_build
    assert built.returncode == 0, built.stderr
    offenders = []
    images = {}
    with Browser(width=1280, height=900, timeout=60) as browser:
        for page in sorted(site.glob("*.html")):
            browser.open(page.as_uri())
            found = browser.evaluate(LAYOUT)
            images[page.stem] = found.pop("shown")
            offenders += [f"{page.name}: {kind}: {what}" for kind, whats in found.items() for what in whats]
    assert not offenders, "at 1280 px:\n" + "\n".join(offenders)

    # One figure per comparison drawn, each near its full size and linked to it.
    from bench.report import _curves, figure_path

    run = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    expected = {figure_path(Path("results.png"), name).name for name in _curves(run["comparisons"])}
    figures = {file: (natural, width, href) for file, natural, width, href in images["benchmarks"]}
    assert set(figures) == expected
    for file, (natural, width, href) in figures.items():
        assert width >= 0.8 * natural and href and href.endswith(file), (file, natural, width, href)


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_api_page_describes_each_option_once_and_each_method_names_its_own(html_build: Built) -> None:
    from ezpool.options import OPTIONS, ParallelOptions

    site, built = html_build
    assert built.returncode == 0, built.stderr
    page = (site / "api.html").read_text(encoding="utf-8")
    # One row per option, made from ezpool.options (docs/options_table.py).
    assert set(re.findall(r"<tr[^>]* id=\"option-(\w+)\"", page)) == set(OPTIONS)
    # A method names its options, each a link to its row, instead of describing them all again.
    assert page.count(OPTIONS["heartbeat"].meaning.split(";")[0]) == 1
    assert "(<em>Unpack[" not in page  # no "options (Unpack[ParallelOptions])" parameter
    pmap = page[page.index('id="ezpool.Pool.pmap"') : page.index('id="ezpool.Pool.dmap"')]
    named = re.findall(r'href="#option-(\w+)"', pmap)
    assert named == list(ParallelOptions.__annotations__)
    assert "the number of worker processes of the parallel mode" in pmap  # its parameter ncpu, described
