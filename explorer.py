"""The attention explorer: one self-contained HTML file in which pointing at any pixel of a sample shows where
every attention layer of G, and of D on the same sample, looks from there (the SAGAN paper's Figures 1 and 5,
for any query point instead of a few fixed ones).

`main.py --train false --version NAME --attn_html true` writes `attn/NAME/<step>_explorer.html`. The file
needs no server and no network: no external scripts, styles or fonts; it works from `file://`.

What it embeds, per sample (`--attn_samples` per class, for each class of `--classes`, default up to 4
classes spread evenly, or K samples of an unconditional G): the image as a PNG, and for each attention layer
its full attention matrix (queries x keys; keys pooled 2x2 as the official variant pools them) with each
query's row scaled to its own maximum and rounded to uint8 (`row_uint8`), compressed with zlib (deflate)
and base64-encoded; the browser inflates it with its built-in DecompressionStream. Each layer also
carries its gamma, its grids and its span, and the span mask's excluded square is drawn for the query.

In the page, each layer's heat map is a canvas of the key grid whose red channel is the row's uint8 value
(green and blue colour it), opaque, scaled over the image with `image-rendering: pixelated` and CSS
opacity; so `getImageData` on it returns the embedded row exactly (tests/test_explorer.py compares it with
the model's attention row in a real browser).
"""

from __future__ import annotations

import base64
import io
import json
import math
import zlib

import torch
from PIL import Image
from torch import Tensor, nn

from metrics import to_uint8
from sagan_models import SelfAttention, eval_mode


def row_uint8(attn: Tensor) -> Tensor:
    """(..., N, M) attention -> uint8 of the same shape, each query row scaled to its own maximum (a row of zeros stays 0)."""
    peak = attn.amax(dim=-1, keepdim=True)  # per query row
    return (attn / torch.where(peak > 0, peak, torch.ones_like(peak)) * 255).round().clamp(0, 255).to(torch.uint8)


def _png(img: Tensor) -> str:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img).permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _layers(model: nn.Module) -> list[tuple[str, SelfAttention]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SelfAttention)]


@torch.no_grad()
def explorer_data(G: nn.Module, D: nn.Module, z: Tensor, y: Tensor | None, class_names: list[str] | None = None) -> dict:
    """Everything the page shows, as plain data: samples, and per layer of G and D its grids, gamma, span and
    the compressed uint8 rows of every sample."""
    with eval_mode(G), eval_mode(D):
        imgs, g_maps = G(z, y, return_attn=True)  # (B, 3, S, S), [(B, N, M)]
        _, d_maps = D(imgs, y, return_attn=True)
    imsize = imgs.shape[-1]
    layers = []
    for net, model, maps in (("G", G, g_maps), ("D", D, d_maps)):
        for (name, layer), attn in zip(_layers(model), maps):
            n, m = attn.shape[1:]
            h, kh = math.isqrt(n), math.isqrt(m)
            rows = row_uint8(attn.float().cpu())  # (B, N, M)
            layers.append({"net": net, "name": name, "gamma": float(layer.gamma), "h": h, "kh": kh, "span": layer.span,
                           "pooled": bool(layer.pooled),
                           "rows": [base64.b64encode(zlib.compress(r.numpy().tobytes(), 9)).decode() for r in rows]})
    labels = y.tolist() if y is not None else [None] * len(z)
    names = class_names or []
    return {"imsize": imsize, "labels": labels, "classes": sorted({c for c in labels if c is not None}),
            "class_names": {str(c): names[c] if c < len(names) else f"class {c}" for c in labels if c is not None},
            "images": [_png(img) for img in imgs], "layers": layers}


def explorer_html(data: dict, title: str) -> str:
    """The self-contained page for `explorer_data`."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return PAGE.replace("__TITLE__", title.replace("<", "&lt;")).replace("__DATA__", payload)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 14px/1.4 sans-serif; margin: 16px; color: #222; }
#thumbs img { width: 64px; height: 64px; image-rendering: pixelated; margin: 2px; border: 2px solid #ccc; cursor: pointer; }
#thumbs img.on { border-color: #d33; }
.panel { display: inline-block; margin: 6px; vertical-align: top; text-align: center; }
.stack { position: relative; width: 256px; height: 256px; }
.stack img, .stack canvas { position: absolute; left: 0; top: 0; width: 256px; height: 256px; image-rendering: pixelated; }
canvas.heat { opacity: 0.75; }
#main { cursor: crosshair; }
#panels { display: inline-block; vertical-align: top; }
</style></head><body>
<h2>__TITLE__</h2>
<p>Point at any pixel of the sample on the left: every attention layer shows where that query looks
(brighter = more weight, each map scaled to its own maximum; a blue square marks the keys a span mask excludes).</p>
<div id="picker"></div><div id="thumbs"></div>
<div class="panel"><div class="stack"><img id="main-img" alt="sample"><canvas id="main" width="256" height="256"></canvas></div>
<div id="query">query: -</div></div>
<div id="panels"></div>
<script>
const DATA = __DATA__;
const S = DATA.imsize, VIEW = 256;
let current = 0, rows = {};
async function inflate(b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
function el(tag, attrs, parent) { const e = document.createElement(tag); Object.assign(e, attrs || {}); if (parent) parent.appendChild(e); return e; }
function buildPanels() {
  const box = document.getElementById("panels");
  DATA.layers.forEach((L, k) => {
    const p = el("div", {className: "panel"}, box);
    const st = el("div", {className: "stack"}, p);
    el("img", {className: "bg"}, st);
    const heat = el("canvas", {className: "heat", width: L.kh, height: L.kh, id: "heat" + k}, st);
    el("canvas", {className: "mark", width: VIEW, height: VIEW}, st);
    el("div", {textContent: L.net + " " + L.name + " (" + L.h + "x" + L.h + " queries, " + L.kh + "x" + L.kh +
      " keys), gamma " + L.gamma.toFixed(4) + (L.span ? ", span " + L.span : "")}, p);
  });
}
async function select(i) {
  current = i;
  document.querySelectorAll("#thumbs img").forEach(t => t.classList.toggle("on", +t.dataset.i === i));
  document.getElementById("main-img").src = DATA.images[i];
  document.querySelectorAll("#panels img.bg").forEach(b => b.src = DATA.images[i]);
  await Promise.all(DATA.layers.map(async (L, k) => { rows[k] = await inflate(L.rows[i]); }));
  document.body.dataset.ready = String(i);
}
function show(x, y) {
  const qx = Math.min(S - 1, Math.max(0, Math.floor(x))), qy = Math.min(S - 1, Math.max(0, Math.floor(y)));
  document.getElementById("query").textContent = "query: (" + qx + ", " + qy + ")";
  const m = document.getElementById("main").getContext("2d");
  m.clearRect(0, 0, VIEW, VIEW); m.strokeStyle = "#0f0"; m.lineWidth = 2;
  const cx = (qx + 0.5) * VIEW / S, cy = (qy + 0.5) * VIEW / S;
  m.beginPath(); m.moveTo(cx - 8, cy); m.lineTo(cx + 8, cy); m.moveTo(cx, cy - 8); m.lineTo(cx, cy + 8); m.stroke();
  const panels = document.querySelectorAll("#panels .panel");
  DATA.layers.forEach((L, k) => {
    if (!rows[k]) return;
    const qi = Math.floor(qy * L.h / S), qj = Math.floor(qx * L.h / S), M = L.kh * L.kh;
    const row = rows[k].subarray((qi * L.h + qj) * M, (qi * L.h + qj + 1) * M);
    const ctx = document.getElementById("heat" + k).getContext("2d");
    const img = ctx.createImageData(L.kh, L.kh);
    for (let t = 0; t < M; t++) {
      const v = row[t];
      img.data[4 * t] = v; img.data[4 * t + 1] = Math.round(v * v / 255); img.data[4 * t + 2] = Math.round(80 * (1 - v / 255)); img.data[4 * t + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const mk = panels[k].querySelector("canvas.mark").getContext("2d");
    mk.clearRect(0, 0, VIEW, VIEW); mk.strokeStyle = "#0f0"; mk.lineWidth = 2;
    mk.beginPath(); mk.moveTo(cx - 6, cy); mk.lineTo(cx + 6, cy); mk.moveTo(cx, cy - 6); mk.lineTo(cx, cy + 6); mk.stroke();
    if (L.span) {
      const cell = VIEW / L.h, i0 = Math.max(qi - L.span, 0), i1 = Math.min(qi + L.span, L.h - 1);
      const j0 = Math.max(qj - L.span, 0), j1 = Math.min(qj + L.span, L.h - 1);
      mk.strokeStyle = "#39f"; mk.strokeRect(j0 * cell, i0 * cell, (j1 - j0 + 1) * cell, (i1 - i0 + 1) * cell);
    }
  });
  document.body.dataset.query = qx + "," + qy;
}
function thumbs(cls) {
  const box = document.getElementById("thumbs"); box.innerHTML = "";
  DATA.images.forEach((src, i) => {
    if (cls !== null && DATA.labels[i] !== cls) return;
    const t = el("img", {src: src, title: "sample " + i}, box); t.dataset.i = i; t.onclick = () => select(i);
  });
  const first = box.querySelector("img"); if (first) return select(+first.dataset.i);
}
const main = document.getElementById("main");
main.addEventListener("mousemove", e => { const r = main.getBoundingClientRect(); show((e.clientX - r.left) * S / r.width, (e.clientY - r.top) * S / r.height); });
buildPanels();
if (DATA.classes.length) {
  const sel = el("select", {id: "class"}, document.getElementById("picker"));
  DATA.classes.forEach(c => el("option", {value: c, textContent: DATA.class_names[c]}, sel));
  sel.onchange = () => thumbs(+sel.value);
  thumbs(DATA.classes[0]);
} else { thumbs(null); }
</script></body></html>
"""
