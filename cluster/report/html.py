"""The report page: one self-contained HTML string (inline CSS, every image a ``data:`` URI).

Pure string building (stdlib ``html.escape``); the PNGs come in as bytes, already drawn.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape
from typing import Any, Mapping, Sequence

from cluster.report.transcripts import MIME, Transcript, TranscriptLine

CSS = """
body { font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; margin: 1.5em auto; max-width: 1320px;
       color: #1d2330; background: #fafbfc; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #dde3ea; padding-bottom: 0.2em; margin-top: 1.6em; }
.headline { font-size: 1.25em; background: #e8f3ea; border-left: 5px solid #2e8b57; padding: 0.6em 1em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px; }
.grid figure { margin: 0; background: white; border: 1px solid #dde3ea; border-radius: 6px; padding: 4px; }
.grid img { width: 100%; max-width: 640px; display: block; margin: auto; }
table { border-collapse: collapse; background: white; } td, th { border: 1px solid #dde3ea; padding: 0.25em 0.7em; }
th { background: #eef2f6; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f1f4f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; border-radius: 6px; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: 600; }
.episode { background: white; border: 1px solid #dde3ea; border-radius: 6px; margin: 0.5em 0; padding: 0.5em 0.8em; }
.line { font-family: "DejaVu Sans Mono", monospace; font-size: 0.85em; white-space: pre-wrap; margin: 0.15em 0; }
.line.result { color: #555; border-top: 1px dashed #dde3ea; padding-top: 0.2em; }
.turn { display: flex; gap: 0.6em; align-items: flex-start; } .turn .line { flex: 1; }
.turn-images img { height: 112px; image-rendering: pixelated; border: 1px solid #ccc; margin: 0.2em 0.4em 0.2em 0; }
"""


@dataclass(frozen=True)
class Figure:
    """A drawn panel: its title, the PNG file name beside the page, and the PNG bytes."""

    title: str
    filename: str
    png: bytes


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figures(figures: Sequence[Figure]) -> str:
    items = "".join(f'<figure><img alt="{escape(f.title)}" title="{escape(f.filename)}" '
                    f'src="{data_uri(f.png, "image/png")}"></figure>' for f in figures)
    return f'<div class="grid">{items}</div>'


def _num(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else escape(str(v))


def _eval_table(evals: Mapping[str, Mapping[str, float]]) -> str:
    names = sorted({n for m in evals.values() for n in m}, key=lambda n: (n not in ("success", "reward", "episodes"), n))
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join(f"<tr><th>{escape(lab)}</th>" + "".join(
        f'<td class="num">{_num(m[n]) if n in m else ""}</td>' for n in names) + "</tr>" for lab, m in evals.items())
    return f"<table><tr><th>evaluation</th>{head}</tr>{body}</table>"


def headline(evals: Mapping[str, Mapping[str, float]]) -> str:
    """"held-out success 0.435 -> 0.725 (+29.0 points)" from before_rl and after_rl, when both ran."""
    before, after = evals.get("before_rl", {}), evals.get("after_rl", {})
    if "success" not in before or "success" not in after:
        return ""
    gain = 100 * (after["success"] - before["success"])
    text = (f"held-out success {before['success']:.3f} &rarr; {after['success']:.3f} ({gain:+.1f} points); "
            f"reward {before.get('reward', 0.0):+.3f} &rarr; {after.get('reward', 0.0):+.3f}")
    return f'<p class="headline">{text}</p>'


def _line(line: TranscriptLine, image: Mapping[str, str]) -> str:
    cls = "line result" if line.text.startswith("[result]") else "line"
    imgs = "".join(f'<img alt="{escape(i.hash[:12])}" title="{escape(i.hash)}" src="{image[i.hash]}">' for i in line.images)
    text = f'<div class="{cls}">{escape(line.text)}</div>'
    return f'<div class="turn"><div class="turn-images">{imgs}</div>{text}</div>' if imgs else text


def _transcript(t: Transcript, image: Mapping[str, str], open_: bool) -> str:
    eps = "".join(f'<div class="episode">{"".join(_line(line, image) for line in ep)}</div>' for ep in t.episodes)
    return (f'<details{" open" if open_ else ""} class="transcript" id="t-{escape(t.name)}">'
            f"<summary>{escape(t.name)} ({len(t.episodes)} episodes)</summary>{eps}</details>")


def transcript_images(transcripts: Sequence[Transcript]) -> dict[str, str]:
    """Image hash -> its data: URI, read once per hash whatever the number of turns showing it."""
    out: dict[str, str] = {}
    for t in transcripts:
        for ep in t.episodes:
            for line in ep:
                for i in line.images:
                    if i.hash not in out:
                        out[i.hash] = data_uri(i.path.read_bytes(), MIME.get(i.path.suffix[1:], "application/octet-stream"))
    return out


@dataclass(frozen=True)
class PageData:
    """Everything the page shows, already read and drawn."""

    title: str
    generated: str
    """A line saying when and from what the page was made."""
    evals: Mapping[str, Mapping[str, float]]
    eval_figs: Sequence[Figure]
    step_figs: Sequence[Figure]
    sync_figs: Sequence[Figure]
    transcripts: Sequence[Transcript]
    recipe: Mapping[str, Any] | None
    summary: Mapping[str, Any] | None
    events: Sequence[tuple[float, str]]


def page(d: PageData) -> str:
    """The whole page. Transcripts of evaluations and of the last step are open, others folded."""
    title, evals, eval_figs, step_figs, sync_figs = d.title, d.evals, d.eval_figs, d.step_figs, d.sync_figs
    transcripts, recipe, summary, events, generated = d.transcripts, d.recipe, d.summary, d.events, d.generated
    image = transcript_images(transcripts)
    last_step = max((t.name for t in transcripts if t.name.startswith("step_")), default="")
    parts = [f"<h1>{escape(title)}</h1><p>{escape(generated)}</p>", headline(evals)]
    if evals:
        parts.append(f"<h2>Held-out evaluations</h2>{_eval_table(evals)}{_figures(eval_figs)}")
    if step_figs:
        parts.append(f"<h2>Training, per step</h2>{_figures(step_figs)}")
    if sync_figs:
        parts.append(f"<h2>Adapter syncs</h2>{_figures(sync_figs)}")
    if transcripts:
        body = "".join(_transcript(t, image, t.name.startswith("eval_") or t.name == last_step) for t in transcripts)
        parts.append(f"<h2>Transcripts</h2>{body}")
    if summary is not None:
        parts.append(f"<h2>Summary</h2><pre>{escape(json.dumps(summary, indent=2, default=str))}</pre>")
    if events:
        rows = "".join(f'<tr><td class="num">{t:.1f}</td><td>{escape(text)}</td></tr>' for t, text in events)
        parts.append(f"<h2>Events</h2><table><tr><th>s</th><th>event</th></tr>{rows}</table>")
    if recipe is not None:
        parts.append(f'<h2>Recipe (resolved)</h2><pre id="recipe">{escape(json.dumps(recipe, indent=2))}</pre>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
