"""Citing and reading: a valid CITATION.cff, a bibliography of every method used, and the rendered report in a browser."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ltlib.paths import ROOT
from ltlib.summary import CLAIMS


def test_citation_file_is_valid_cff_1_2():
    import os

    tool = os.environ.get("LTLIB_CFFCONVERT") or shutil.which("cffconvert")
    if tool is None or not Path(tool).exists():
        pytest.skip("cffconvert is not installed (make test installs it into .venv/cff)")
    out = subprocess.run([tool, "--validate", "-i", str(ROOT / "CITATION.cff")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_the_bibliography_names_every_paper_baseline_and_data_set():
    keys = set(re.findall(r"@\w+\{(\w+),", (ROOT / "references.bib").read_text()))
    needed = {"sinha2020cdb", "zhang2022intrainter", "xu2022dlsa", "sinha2023difficultynet", "cao2019ldam",
              "cui2019classbalanced", "lin2017focal", "ren2020balancedsoftmax", "menon2021logitadjustment",
              "li2019ghm", "zhong2021mislas", "kang2020decoupling", "krizhevsky2009cifar", "lecun1998mnist"}
    assert needed <= keys, sorted(needed - keys)
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"):
        options.add_argument(flag)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.parametrize("profile", ["cpu-real"])
def test_the_rendered_report_loads_in_a_real_browser(profile, tmp_path):
    from ltlib.report import build

    executed = ROOT / "executed" / profile
    if not list(executed.glob("*.ipynb")):
        pytest.skip(f"no executed notebooks under {executed}")
    index = build(profile, out=tmp_path / "site")
    pages = sorted(index.parent.glob("*.html"))
    assert len(pages) == len(list(executed.glob("[0-9][0-9]_*.ipynb"))) + 1
    browser = _chrome()
    try:
        browser.set_window_size(1400, 1100)
        for page in pages:
            browser.get(page.as_uri())
            problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
            assert not problems, f"{page.name}: console {problems}"
            sizes = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
            assert all(width > 0 for width in sizes), f"{page.name}: an image did not load"
            if page.stem[:2].isdigit() and page.stem not in ("00_long_tailed_data", "06_summary"):
                assert sizes, f"{page.name}: no figure"
        browser.get(index.as_uri())
        rows = browser.execute_script("return document.querySelectorAll('#summary tbody tr').length")
        assert rows == len(CLAIMS), "the summary table should have one row per claim (one data set per profile)"
        links = browser.execute_script("return Array.from(document.querySelectorAll('a[href$=\".pdf\"]')).map(a => a.href)")
        assert links and all(Path(link.removeprefix("file://")).exists() for link in links)
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        browser.save_screenshot(str(artifacts / f"report-index-{profile}.png"))
    finally:
        browser.quit()
    print(f"screenshot: artifacts/report-index-{profile}.png")
