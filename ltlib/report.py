"""A static site of a profile's executed notebooks: ``python -m ltlib report --profile cpu-real``.

``site/<profile>/index.html`` holds the summary table of notebook 06 (each paper's claim, our number, the
paper's, comparability, verdict), links to one page per notebook and a list of every figure with its caption
and a link to its PDF; ``site/<profile>/<notebook>.html`` is the executed notebook, rendered by nbconvert
(JupyterLab template). The site works offline: LaTeX is turned into MathML (``latex2mathml``) when the page is
made, no script is loaded from the network, and the figures' PDF and PNG files are copied beside the pages.
"""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

from .io import atomic_write_text
from .paths import ROOT

INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?!\s)([^$\n]+?)(?<!\s)\$(?![\w$])")
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S | re.I)
FIGURE_PATH = re.compile(r"<code>figures/([\w.-]+)/([\w.-]+)/([\w.-]+)\.(pdf|png)</code>")


def _mathml(tex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # an expression latex2mathml cannot parse is shown as written
        return f"<code>{html.escape(tex)}</code>"


def math_to_mathml(markdown: str) -> str:
    """``$…$`` and ``$$…$$`` in Markdown as MathML, leaving code spans (``$LTLIB_DATA``) alone."""
    pieces, last = [], 0
    for match in INLINE_CODE.finditer(markdown):
        pieces.append(("text", markdown[last:match.start()]))
        pieces.append(("code", match.group(0)))
        last = match.end()
    pieces.append(("text", markdown[last:]))
    out = []
    for kind, text in pieces:
        if kind == "text":
            text = DISPLAY_MATH.sub(lambda m: _mathml(m.group(1), True), text)
            text = INLINE_MATH.sub(lambda m: _mathml(m.group(1), False), text)
        out.append(text)
    return "".join(out)


def _prepare(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:
                data["text/markdown"] = math_to_mathml("".join(data["text/markdown"]))


def render_notebook(path: Path, profile: str, out: Path, nav: str) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    _prepare(nb)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    body = SCRIPT.sub("", body)  # nothing from the network: the pages hold no interactive output
    body = FIGURE_PATH.sub(lambda m: f'<a href="figures/{m.group(2)}/{m.group(3)}.{m.group(4)}"><code>'
                           f'figures/{m.group(1)}/{m.group(2)}/{m.group(3)}.{m.group(4)}</code></a>', body)
    body = re.sub(r"(<body[^>]*>)", r"\1" + nav, body, count=1)
    target = out / f"{path.stem}.html"
    atomic_write_text(target, body)
    return target


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
nav.ltlib { font: 0.9rem system-ui, sans-serif; padding: 0.5rem 1rem; background: #f2f2f2; }
.verdict-holds { color: #0a6b2d; font-weight: 600; } .verdict-does-not-hold { color: #a11; font-weight: 600; }
"""


def _summary_table(profile: str) -> str:
    path = ROOT / "results" / profile / "06_summary.json"
    if not path.exists():
        return "<p>No summary yet: execute notebook 06 under this profile.</p>"
    claims = json.loads(path.read_text())["claims"]
    columns = ["paper", "claim", "data", "schedule", "seeds", "ours", "baseline", "paired diff", "paper's number",
               "paper's setting", "comparable?", "verdict"]
    rows = []
    for claim in claims:
        cells = []
        for column in columns:
            value = html.escape(str(claim.get(column, "")))
            css = f' class="verdict-{value.replace(" ", "-")}"' if column == "verdict" else ""
            cells.append(f"<td{css}>{value}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def build(profile: str, out: Path | None = None, executed: Path | None = None) -> Path:
    """Render ``executed/<profile>/*.ipynb`` into ``site/<profile>/`` (or ``out``); returns the index page."""
    executed = Path(executed or ROOT / "executed" / profile)
    notebooks = sorted(executed.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks in {executed}; run `make reproduce PROFILE={profile}` first")
    out = Path(out or ROOT / "site" / profile)
    out.mkdir(parents=True, exist_ok=True)
    figures = ROOT / "figures" / profile
    if figures.is_dir():
        for source in figures.glob("*/*"):
            if source.suffix in (".pdf", ".png"):
                target = out / "figures" / source.parent.name / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    links = " · ".join(f'<a href="{nb.stem}.html">{nb.stem}</a>' for nb in notebooks)
    nav = f'<nav class="ltlib"><a href="index.html">ltlib · {profile}</a> · {links}</nav>'
    for nb in notebooks:
        render_notebook(nb, profile, out, nav)
    figure_rows = []
    for sidecar in sorted(figures.glob("*/*.json")) if figures.is_dir() else []:
        meta = json.loads(sidecar.read_text())
        stem = f"figures/{sidecar.parent.name}/{sidecar.stem}"
        figure_rows.append(f"<tr><td>{html.escape(meta.get('caption', ''))}</td><td>{meta['notebook']}</td>"
                           f'<td><a href="{stem}.pdf">PDF</a> · <a href="{stem}.png">PNG</a></td>'
                           f"<td><code>{html.escape(', '.join(meta.get('run_keys') or [])[:60])}</code></td></tr>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ltlib · {profile}</title>"
            f"<style>{STYLE}</style></head><body>{nav}<h1>ltlib · profile {html.escape(profile)}</h1>"
            "<p>A reproducible companion to four papers on long-tailed image recognition. Every number below is read "
            "from the run store by the executed notebooks; the verdict rule is in <code>ltlib.analysis</code>.</p>"
            f"<h2>The papers' claims</h2>{_summary_table(profile)}"
            f"<h2>Notebooks</h2><ul>{''.join(f'<li><a href={chr(34)}{nb.stem}.html{chr(34)}>{nb.stem}</a></li>' for nb in notebooks)}</ul>"
            "<h2>Figures</h2><table><thead><tr><th>caption</th><th>notebook</th><th>files</th><th>run keys</th></tr>"
            f"</thead><tbody>{''.join(figure_rows)}</tbody></table></body></html>")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ltlib report", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--output", default=None, help="default: site/<profile>/")
    args = parser.parse_args(argv)
    index = build(args.profile, Path(args.output) if args.output else None)
    print("wrote", index)
    return 0
