"""Rendering a report: Markdown with the plots beside it, and one self-contained HTML page."""

from __future__ import annotations

import base64
import html

from .rows import Collection


def render_markdown(title, tables, plots, collection: Collection) -> str:
    """Leaderboard first, then the plots (saved beside report.md), then the detail tables."""
    lines = [f"# {title}", ""]
    for index, (heading, note, header, cells) in enumerate(tables):
        lines += [f"## {heading}", ""] + ([note, ""] if note else [])
        lines += [_md_row(header), _md_row(["---"] * len(header))] + [_md_row(c) for c in cells] + [""]
        if index == 0 and plots:
            lines += ["## Plots", ""] + [f"![{name}]({file})\n" for name, file, _ in plots]
    lines += ["## Skipped", ""]
    lines += [f"- `{s.path}`: {s.reason}" for s in collection.skipped] or ["Nothing was skipped."]
    return "\n".join(lines) + "\n"


LEGEND = ("MC-KL / token and quality: `baking_mckl` (KL from the prompted base; quality = 1 − KL/KL(unprompted base), "
          "[95% paired-bootstrap CI over the held-out answers]). Persona adherence and drift (adherence at turns "
          "≤ 5 minus turns ≥ 25): `baking_persona_drift`, drift with a 95% CI over conversations when lm_eval ran "
          "with --log_samples. Forgetting acc: mean accuracy of the `baking_forgetting` BIG-bench group; 'forgetting "
          "vs base' is the paired change over all its docs, shown as a drop only when its 95% CI excludes zero, "
          "with the verdict against the allowed drop. ± is lm_eval's stderr.")


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    return "\n".join(_md_row(line) for line in [header, ["---"] * len(header)] + cells)


def render_html(title, tables, plots, collection: Collection) -> str:
    """One self-contained page: inline CSS, plots as base64 data URIs, nothing fetched from anywhere."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    for index, (heading, note, header, cells) in enumerate(tables):
        table = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
        table += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in line) + "</tr>" for line in cells]
        table.append("</tbody></table>")
        note_html = f"<p class='note'>{esc(note.replace('`', ''))}</p>" if note else ""
        if heading == "All metrics":  # long: folded so the page opens on the leaderboard and plots
            parts.append(f"<details><summary><h2>{esc(heading)} ({len(cells)} rows)</h2></summary>"
                         f"{note_html}{''.join(table)}</details>")
        else:
            parts.append(f"<h2>{esc(heading)}</h2>{note_html}{''.join(table)}")
        if index == 0 and plots:
            parts.append("<h2>Plots</h2>")
            for name, file, png in plots:
                data = base64.b64encode(png).decode("ascii")
                parts.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{esc(name)}</figcaption></figure>")
    parts.append("<h2>Skipped</h2>")
    if collection.skipped:
        parts.append("<ul>" + "".join(f"<li><code>{esc(s.path)}</code>: {esc(s.reason)}</li>"
                                      for s in collection.skipped) + "</ul>")
    else:
        parts.append("<p>Nothing was skipped.</p>")
    parts.append("</body></html>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} tr:nth-child(even) td{background:#fafafa}
figure{display:inline-block;margin:0 1em 1em 0} img{max-width:100%;border:1px solid #ddd}
.note{font-size:13px;color:#555;max-width:60em} code{font-size:13px}
summary h2{display:inline}
"""


