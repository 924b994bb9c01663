"""Look inside a generator: attention maps (as in the SAGAN paper's Figures 1 and 5), class grids and
latent interpolations.

Attention figures: for each query point (pixel coordinates in the output image), and for each
attention layer of G, the generated image with the query marked and that query's attention row
overlaid as a heat map. The row is a distribution over the layer's keys: pixels of the h x w feature
map (`paper` variant), or 2x2-max-pooled cells of it (`official` variant, h/2 x w/2 keys). It is
reshaped to the key grid and upsampled to the image size by nearest neighbour, so every key covers
the block of image pixels it was computed from. Each panel is scaled to its own maximum. With a span
mask, the excluded keys have weight 0 and the excluded square is outlined. One figure per sample:
rows are query points, columns are the image and then one panel per layer, in network order.

Sample grids (`write_sample_grid`): the fixed noise of `fixed_noise`, eight samples per row, one row per
class when conditional (at most 16 classes spread evenly), written durably (never a half-written PNG).

Class grids: one row per class, the same z in each column, so that a column shows what the label
changes. Interpolations: spherical (slerp) between the z of two fixed seeds, label fixed per row; the
end points are exactly the two seeds' samples.

The paper shows figures like these for its ImageNet model; it does not say how its heat maps were
scaled or resampled. The choices above (per-panel max scaling, nearest upsampling) are ours.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.utils.data import Dataset

from checkpoints import CheckpointError
from durable import why_not_written, write_durably
from metrics import to_uint8
from sagan_models import ModelConfig, SelfAttention, draw_latents, eval_mode, sample, truncate_latents

if TYPE_CHECKING:
    from drs import RejectionSampler

PANEL = 128  # figure panels are drawn at this size (pixels) whatever the image size
# Anchor colours of the heat map (black -> purple -> orange -> yellow), interpolated linearly.
HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def parse_points(spec: str | None, imsize: int) -> list[tuple[int, int]]:
    """'x,y;x,y' in output-image pixels, or None for five points spread over the image."""
    if not spec:
        q, m = imsize // 4, imsize // 2
        return [(m, m), (q, q), (imsize - 1 - q, q), (q, imsize - 1 - q), (imsize - 1 - q, imsize - 1 - q)]
    points = []
    for part in spec.split(";"):
        try:
            x, y = (int(v) for v in part.split(","))
        except ValueError:
            raise ValueError(f"--attn_points expects 'x,y;x,y' with integer pixel coordinates, got {spec!r}")
        if not (0 <= x < imsize and 0 <= y < imsize):
            raise ValueError(f"attention point ({x},{y}) is outside the {imsize}x{imsize} image")
        points.append((x, y))
    return points


def class_rows(num_classes: int, limit: int = 16) -> list[int]:
    """The classes shown as grid rows: all of them, or `limit` spread evenly over them."""
    return torch.linspace(0, num_classes - 1, min(num_classes, limit)).round().long().tolist()


def fixed_noise(cfg: ModelConfig, seed: int, device: torch.device, truncation: float = 0.0) -> tuple[Tensor, Tensor | None]:
    """(z, y) of the sample grids: 8 columns, one row per class in `class_rows` when conditional, else 8 rows;
    z truncated to [-truncation, truncation] when it is > 0 (`truncate_latents`)."""
    rows = class_rows(cfg.num_classes) if cfg.num_classes else None
    z = draw_latents(8 * (len(rows) if rows else 8), cfg.z_dim, torch.Generator().manual_seed(seed), truncation)
    return z.to(device), torch.tensor(rows).repeat_interleave(8).to(device) if rows else None


@torch.no_grad()
def write_sample_grid(G: nn.Module, z: Tensor, y: Tensor | None, path: Path) -> Tensor:
    """G's samples (drawn in eval mode, then back to G's previous mode) as a PNG grid of 8 columns; returns the grid."""
    from torchvision.utils import make_grid, save_image

    grid = make_grid(sample(G, z, y).float().cpu() * 0.5 + 0.5, nrow=8, padding=2).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_durably(path, lambda f: save_image(grid, f, format="png"))
    except OSError as e:
        raise CheckpointError(f"could not write the sample grid {path}: {why_not_written(e, path.parent)}; "
                              f"free space and resume with --pretrained_model latest") from e
    return grid


def attention_snapshot(G: nn.Module, z: Tensor, y: Tensor | None, n: int, points: str | None, folder: Path, stem: str,
                       writer: object | None = None, step: int = 0) -> list[Path]:
    """Attention figures for `n` of the grid's samples (the first of every row of 8, so one per class when
    conditional) into folder/<stem>_attn<k>.png, and TensorBoard; nothing when G has no attention."""
    if not n or not attention_layers(G):
        return []
    idx = (torch.arange(n) * 8) % len(z)
    figs = attention_figures(G, z[idx], y[idx] if y is not None else None, parse_points(points, G.cfg.imsize))
    paths = save_figures(figs, folder, stem)
    if writer:
        for k, fig in enumerate(figs):
            writer.add_image(f"attention/{k}", np.asarray(fig), step, dataformats="HWC")
    return paths


def attention_layers(G: nn.Module) -> list[SelfAttention]:
    return [m for m in G.modules() if isinstance(m, SelfAttention)]


def query_index(point: tuple[int, int], h: int, w: int, imsize: int) -> int:
    """Flat index (row-major, as in the attention matrix) of the feature-map query under an image pixel."""
    x, y = point
    return (y * h // imsize) * w + (x * w // imsize)


def query_heatmap(attn: Tensor, layer: SelfAttention, point: tuple[int, int], imsize: int) -> Tensor:
    """One query's attention row, (N, M) -> (imsize, imsize), on the key grid upsampled by nearest neighbour."""
    n = attn.shape[0]
    h = w = math.isqrt(n)
    kh, kw = (h // 2, w // 2) if layer.pooled else (h, w)
    row = attn[query_index(point, h, w, imsize)].reshape(kh, kw)  # (kh, kw)
    return row.repeat_interleave(imsize // kh, 0).repeat_interleave(imsize // kw, 1)  # (imsize, imsize)


def excluded_box(layer: SelfAttention, point: tuple[int, int], n: int, imsize: int) -> tuple[int, int, int, int] | None:
    """The span mask's excluded square for a query, in image pixels (x0, y0, x1, y1), or None without a span."""
    if not layer.span:
        return None
    h = w = math.isqrt(n)
    x, y = point
    qi, qj = y * h // imsize, x * w // imsize
    cell = imsize // h
    i0, i1 = max(qi - layer.span, 0), min(qi + layer.span, h - 1)
    j0, j1 = max(qj - layer.span, 0), min(qj + layer.span, w - 1)
    return j0 * cell, i0 * cell, (j1 + 1) * cell - 1, (i1 + 1) * cell - 1


def _to_rgb(img: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, the values a saved PNG holds."""
    return to_uint8(img).permute(1, 2, 0).cpu().numpy()


def colourise(heat: Tensor) -> np.ndarray:
    """(H, W) weights -> (H, W, 3) uint8 heat colours, scaled to the panel's maximum."""
    v = heat.float().cpu().numpy()
    v = v / v.max() if v.max() > 0 else v
    pos = v * (len(HEAT) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(HEAT) - 2)
    frac = (pos - lo)[..., None]
    return (HEAT[lo] * (1 - frac) + HEAT[lo + 1] * frac).round().astype(np.uint8)


def _panel(rgb: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)


def _mark(draw: ImageDraw.ImageDraw, point: tuple[int, int], scale: int) -> None:
    cx, cy = (point[0] + 0.5) * scale, (point[1] + 0.5) * scale
    r = max(3, scale)
    draw.line([(cx - r, cy), (cx + r, cy)], fill=(0, 255, 0), width=2)
    draw.line([(cx, cy - r), (cx, cy + r)], fill=(0, 255, 0), width=2)


@torch.no_grad()
def attention_figures(G: nn.Module, z: Tensor, y: Tensor | None, points: list[tuple[int, int]]) -> list[Image.Image]:
    """One figure per sample of (z, y); G runs in eval mode and gets its previous mode back."""
    layers = attention_layers(G)
    if not layers:
        raise ValueError("this generator has no attention layers (--g_attn none); there is nothing to draw")
    with eval_mode(G):
        imgs, maps = G(z, y, return_attn=True)  # maps: per layer (B, N, M)
    imsize = imgs.shape[-1]
    scale = max(1, PANEL // imsize)
    side = imsize * scale
    figures = []
    for b in range(imgs.shape[0]):
        rgb = _to_rgb(imgs[b])
        fig = Image.new("RGB", ((1 + len(layers)) * (side + 2), len(points) * (side + 2)), (255, 255, 255))
        for r, pt in enumerate(points):
            base = _panel(rgb, scale)
            _mark(ImageDraw.Draw(base), pt, scale)
            fig.paste(base, (0, r * (side + 2)))
            for c, (layer, a) in enumerate(zip(layers, maps), start=1):
                heat = colourise(query_heatmap(a[b], layer, pt, imsize))
                blend = (0.45 * rgb + 0.55 * heat).round().astype(np.uint8)
                panel = _panel(blend, scale)
                draw = ImageDraw.Draw(panel)
                box = excluded_box(layer, pt, a.shape[1], imsize)
                if box is not None:
                    draw.rectangle([v * scale for v in box[:2]] + [(v + 1) * scale - 1 for v in box[2:]],
                                   outline=(0, 200, 255), width=1)
                _mark(draw, pt, scale)
                fig.paste(panel, (c * (side + 2), r * (side + 2)))
        figures.append(fig)
    return figures


@torch.no_grad()
def class_grid(G: nn.Module, classes: list[int], columns: int = 8, seed: int = 0, truncation: float = 0.0,
               drs: RejectionSampler | None = None) -> Tensor:
    """(len(classes) * columns, 3, H, W): row r is class classes[r], column c uses the same z in every row;
    with `drs` (drs.RejectionSampler), each cell is a kept sample of its row's class, from its own z."""
    cfg = G.cfg
    if not cfg.num_classes:
        raise ValueError("class grids need a class-conditional model (--num_classes > 0)")
    bad = [c for c in classes if not 0 <= c < cfg.num_classes]
    if bad:
        raise ValueError(f"--classes {bad} outside 0..{cfg.num_classes - 1}")
    device = next(G.parameters()).device
    ys = torch.tensor(classes, device=device).repeat_interleave(columns)  # (R * C,)
    if drs is not None:
        return drs.images(ys.cpu()).to(device)
    z = draw_latents(columns, cfg.z_dim, torch.Generator().manual_seed(seed), truncation).to(device)
    zs = z.repeat(len(classes), 1)  # (R * C, z_dim)
    return sample(G, zs, ys)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows a and b (D,) at fractions t (T,) -> (T, D); exact at t = 0 and 1."""
    omega = torch.arccos((a / a.norm() * b / b.norm()).sum().clamp(-1, 1))
    so = torch.sin(omega)
    if so.abs() < 1e-6:
        return a[None] * (1 - t[:, None]) + b[None] * t[:, None]
    return (torch.sin((1 - t) * omega) / so)[:, None] * a[None] + (torch.sin(t * omega) / so)[:, None] * b[None]


def seed_latent(seed: int, z_dim: int) -> Tensor:
    return torch.randn(z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def interpolation_grid(G: nn.Module, pairs: list[tuple[int, int]], steps: int = 8, classes: list[int] | None = None,
                       truncation: float = 0.0) -> Tensor:
    """(len(pairs) * steps, 3, H, W): row r goes from seed pairs[r][0]'s z to pairs[r][1]'s z by slerp (with
    `truncation` > 0, every point of the path then mapped into [-truncation, truncation] by `truncate_latents`)."""
    cfg = G.cfg
    device = next(G.parameters()).device
    t = torch.linspace(0, 1, steps)
    zs = torch.cat([slerp(seed_latent(a, cfg.z_dim), seed_latent(b, cfg.z_dim), t) for a, b in pairs])
    zs = truncate_latents(zs, truncation).to(device)
    ys = None
    if cfg.num_classes:
        labels = classes or list(range(cfg.num_classes))
        ys = torch.tensor([labels[r % len(labels)] for r in range(len(pairs))], device=device).repeat_interleave(steps)
    return sample(G, zs, ys)


def save_figures(figures: list[Image.Image], folder: Path, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, fig in enumerate(figures):
        p = folder / f"{prefix}_attn{k}.png"
        fig.save(p)
        paths.append(p)
    return paths


# Distinct colours for line plots (Tableau 10).
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at `size` px where FreeType is available; its fixed bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def line_plot(series: dict[str, tuple[list[float], list[float], list[float], list[float]]], title: str, ylabel: str,
              size: tuple[int, int] = (900, 560), colours: dict[str, tuple[int, int, int]] | None = None,
              y_range: tuple[float, float] | None = None) -> Image.Image:
    """A matplotlib line plot as a PIL image: `series` maps a name to (x, mean, low, high); each is drawn as its
    mean line with markers over a translucent low-high band, with the legend outside the axes on the right.
    `colours` fixes a colour per name (so that one variant keeps its colour across panels; PALETTE in order
    otherwise), `y_range` the values the y axis covers (the data's span otherwise, so that panels can share
    one axis), with 5% room either side. `size` is in pixels (100 dpi)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib.figure import Figure

    colours = colours or {}
    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax = fig.add_axes((0.08, 0.12, 0.62, 0.76))
    for k, (name, (x, mean, low, high)) in enumerate(series.items()):
        colour = tuple(c / 255 for c in colours.get(name, PALETTE[k % len(PALETTE)]))
        if len(x) > 1:
            ax.fill_between(x, low, high, color=colour, alpha=0.16, linewidth=0)
        ax.plot(x, mean, color=colour, linewidth=2, marker="o", markersize=4, label=name)
    ys = [v for s in series.values() for part in s[1:] for v in part]
    y0, y1 = y_range or (min(ys), max(ys))
    pad = 0.05 * (y1 - y0 if y1 > y0 else 1)
    ax.set_ylim(y0 - pad, y1 + pad)
    ax.set_xticks(sorted({v for s in series.values() for v in s[0]}))
    ax.grid(axis="y", color="0.88")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _titled_canvas(width: int, height: int, title: str) -> tuple[Image.Image, int]:
    """A white RGB canvas of `height` px plus a 36 px strip holding `title` when given; (canvas, strip height)."""
    head = 36 if title else 0
    out = Image.new("RGB", (width, head + height), (255, 255, 255))
    if title:
        ImageDraw.Draw(out).text((10, 10), title, fill=(0, 0, 0), font=_font(16))
    return out, head


def tile(cells: list[tuple[str, Image.Image]], columns: int, title: str = "") -> Image.Image:
    """Images in rows of `columns` on white, each under its one-line label (no label strip when every label
    is empty), under a one-line `title` when given."""
    strip = 22 if any(label for label, _ in cells) else 0
    cw, ch = max(i.width for _, i in cells), strip + max(i.height for _, i in cells)
    out, head = _titled_canvas(cw * min(columns, len(cells)), ch * -(-len(cells) // columns), title)
    draw, font = ImageDraw.Draw(out), _font(13)
    for k, (label, img) in enumerate(cells):
        x, y = cw * (k % columns), head + ch * (k // columns)
        draw.text((x + 4, y + 4), label, fill=(0, 0, 0), font=font)
        out.paste(img.convert("RGB"), (x, y + strip))
    return out


def stack(images: list[Image.Image], title: str = "") -> Image.Image:
    """Images one above the other on white, left-aligned, under a one-line `title` when given."""
    out, y = _titled_canvas(max(i.width for i in images), sum(i.height for i in images), title)
    for i in images:
        out.paste(i, (0, y))
        y += i.height
    return out


def versus_real(G: nn.Module, dataset: Dataset, classes: list[int], columns: int = 8, seed: int = 0, scale: int = 2,
                truncation: float = 0.0, fake: Tensor | None = None) -> Image.Image:
    """One line per class: its name, `columns` samples of G (eval mode, z from `seed`; or the rows of `fake`,
    a `class_grid`), a gap, and up to `columns` real training images of the class (chosen with `seed`), each
    image enlarged `scale` times."""
    labels = torch.as_tensor(dataset.labels) if hasattr(dataset, "labels") else torch.tensor([dataset[i][1] for i in range(len(dataset))])
    names = getattr(dataset, "class_names", None) or [str(c) for c in range(G.cfg.num_classes)]
    fake = (class_grid(G, classes, columns, seed, truncation) if fake is None else fake).float().cpu()  # (R * C, 3, S, S)
    g = torch.Generator().manual_seed(seed)
    s = fake.shape[-1] * scale
    label_w, gap, head = 110, s // 2, 24
    out, _ = _titled_canvas(label_w + 2 * columns * s + gap, head + len(classes) * s, "")
    draw, font = ImageDraw.Draw(out), _font(13)
    draw.text((label_w + 4, 4), "generated", fill=(0, 0, 0), font=font)
    draw.text((label_w + columns * s + gap + 4, 4), "real", fill=(0, 0, 0), font=font)
    for r, c in enumerate(classes):
        y = head + r * s
        draw.text((4, y + s // 2 - 8), str(names[c]), fill=(0, 0, 0), font=font)
        idx = torch.nonzero(labels == c).flatten()
        picks = idx[torch.randperm(len(idx), generator=g)[:columns]]
        for k in range(columns):
            out.paste(_panel(_to_rgb(fake[r * columns + k]), scale), (label_w + k * s, y))
        for k, i in enumerate(picks.tolist()):
            out.paste(_panel(_to_rgb(dataset[i][0]), scale), (label_w + columns * s + gap + k * s, y))
    return out
