"""The references' checkpoint files, read through explicit key tables into this code's models
(convert.py writes the result in our format; checkpoints.py knows only our format).

Imported formats (facts established by running each reference's own checkpoint code; tiny files of
each are in `tests/data/peer_checkpoints/`):
- StudioGAN (POSTECH-CVLab/PyTorch-StudioGAN @947b35e, `src/models/resnet.py`, `src/worker.py`
  `WORKER.save`): separate files `model=G-…`, `model=D-…`, `model=G_ema-…`, each `{state_dict, …}`.
  torch's hook-based spectral norm (`weight_orig`, `weight_u`, `weight_v`). Conditional-BN tables are
  a bias-free SN-Linear (C, K) on a one-hot label (`bn1.gain`, `bn1.bias`; files from 2022-01-25 on)
  or an SN-Embedding (K, C) (`bn1.embed0`, `bn1.embed1`; earlier files). Ours are Embeddings (K, C):
  the Linear is transposed and its u and v trade places. Attention gamma is `sigma`, shape (1,).
- MMGeneration 0.x published files `{meta, state_dict}` and mmagic 1.x / mmengine training files
  `{meta, state_dict, message_hub, optimizer}` (`SNGANGenerator`, `ProjDiscriminator`), keys prefixed
  `generator.`, `discriminator.`, `generator_ema.` (0.x) or `generator_ema.module.` (1.x, plus the
  update count `generator_ema.steps`, which is not a weight). D's `from_rgb` is our `blocks.0` and its
  `conv_blocks.i` our `blocks.(i+1)`. Their own runs were trained on BGR images: for our RGB models
  G's output channels and D's input channels are reversed (weights, biases, and the SN vectors on
  those axes), except for the `convert-studio-rgb` files (StudioGAN's weights, already RGB).
- heykeetae/Self-Attention-GAN (@8714a54): bare state dicts `{step}_G.pth`, `{step}_D.pth`
  (`module.`-prefixed after `--parallel`). Its SN keeps `weight_bar` (the raw weight) and u, v, and
  reshapes ConvTranspose weights as (in, out*k*k); only l1-l4 are normalised. These load into the
  DCGAN model with `sn_layers="port"` and `convt_sn_dim=0` (the `sagan_celeb_64` family of presets),
  whose u and v have the same meaning, so they copy unchanged.

Loading these files never runs code: `torch.load(weights_only=True)` with inert stand-ins
registered for the few non-tensor globals these files pickle (numpy scalars, arrays and dtypes in
StudioGAN's D file; mmengine's `HistoryBuffer` and `getattr` in mmagic 1.x files). A stand-in keeps
nothing of what it stands for. A file that needs any other global is refused with one line; there
is no fallback to `weights_only=False`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

import spectral
from checkpoints import CHECKPOINT_FORMAT, CheckpointError, torch_load
from sagan_models import DBlock, ModelConfig, SelfAttention

FORMATS = ("studiogan", "mmgen", "heykeetae")


# Safe loading with inert stand-ins


class Inert:
    """Stands in for a non-tensor object in a reference's file (numpy scalar, array or dtype, mmengine
    HistoryBuffer): accepts any construction arguments and any pickled state, and keeps none of it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "<inert stand-in>"


def _stand_in(full_name: str, make_class: bool = False) -> Any:
    """A stand-in spelled `full_name` (its __module__ and __name__): torch before 2.6 matches allow-listed
    globals by those names only (no (object, name) pairs). A class keeps pickled state away (Inert); a
    function returns an Inert for any call."""
    module, _, name = full_name.rpartition(".")
    if make_class:
        return type(name, (Inert,), {"__module__": module})

    def call(*args: Any, **kwargs: Any) -> Inert:
        return Inert()

    call.__module__, call.__name__, call.__qualname__ = module, name, name
    return call


# Global names (as the pickles spell them) -> stand-in. Nothing else outside torch's defaults loads.
STAND_INS = [
    _stand_in("numpy.core.multiarray.scalar"),  # StudioGAN D file: best_fid, a numpy.float64
    _stand_in("numpy._core.multiarray.scalar"),
    _stand_in("numpy.core.multiarray._reconstruct"),  # mmagic 1.x: HistoryBuffer's numpy arrays
    _stand_in("numpy._core.multiarray._reconstruct"),
    _stand_in("numpy.ndarray", make_class=True),
    _stand_in("numpy.dtype", make_class=True),
    _stand_in("numpy.dtypes.Float64DType", make_class=True),
    _stand_in("numpy.dtypes.Float32DType", make_class=True),
    _stand_in("numpy.dtypes.Int64DType", make_class=True),
    _stand_in("mmengine.logging.history_buffer.HistoryBuffer", make_class=True),  # mmagic 1.x message_hub log scalars
    _stand_in("__builtin__.getattr"),  # HistoryBuffer's pickled statistics methods
    _stand_in("builtins.getattr"),
    codecs.encode,  # bytes in mmagic 1.x's meta, pickled as _codecs.encode (allowed by default from torch 2.5)
    Inert,  # what the functions return: torch before 2.6 sets pickled state only on allow-listed types
]


def load_foreign(path: Path) -> Any:
    """A reference's checkpoint file, loaded with weights_only=True and the stand-ins above."""
    return torch_load(path, STAND_INS)


# ----------------------------------------------------------------------------------------------
# Key tables


@dataclass(frozen=True)
class Entry:
    """One tensor: source key -> our key, through a named value transform."""

    src: str
    dst: str
    how: str = "copy"  # copy | transpose (Linear (C, K) -> Embedding (K, C)) | scalar ((1,) -> ())


BUFFER_SUFFIXES = ("weight_u", "weight_v", "running_mean", "running_var", "num_batches_tracked")


def _is_param_key(key: str) -> bool:
    """Whether a reference's state-dict key is a trained parameter (the rest are buffers)."""
    return not key.endswith(BUFFER_SUFFIXES)


def _sub(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _layer(model: nn.Module, src: str, dst: str, sn_style: str) -> list[Entry]:
    """A conv/linear/embedding layer: weight (raw weight and u, v when ours is spectrally normalised), bias.

    sn_style: 'torch' (weight_orig, weight_u, weight_v) or 'port' (heykeetae: weight_bar, weight_u, weight_v)."""
    layer = _sub(model, dst)
    out = []
    if spectral.is_normalised(layer):
        raw = "weight_orig" if sn_style == "torch" else "weight_bar"
        out += [Entry(f"{src}.{raw}", f"{dst}.parametrizations.weight.original"),
                Entry(f"{src}.weight_u", f"{dst}.parametrizations.weight.0._u"),
                Entry(f"{src}.weight_v", f"{dst}.parametrizations.weight.0._v")]
    else:
        out.append(Entry(f"{src}.weight", f"{dst}.weight"))
    if getattr(layer, "bias", None) is not None and not isinstance(layer, nn.Embedding):
        out.append(Entry(f"{src}.bias", f"{dst}.bias"))
    return out


def _linear_as_embedding(model: nn.Module, src: str, dst: str) -> list[Entry]:
    """StudioGAN's one-hot SN-Linear (C, K) into our Embedding (K, C): transposed, u and v swapped."""
    if not spectral.is_normalised(_sub(model, dst)):
        return [Entry(f"{src}.weight", f"{dst}.weight", "transpose")]
    return [Entry(f"{src}.weight_orig", f"{dst}.parametrizations.weight.original", "transpose"),
            Entry(f"{src}.weight_u", f"{dst}.parametrizations.weight.0._v"),
            Entry(f"{src}.weight_v", f"{dst}.parametrizations.weight.0._u")]


def _bn(src: str, dst: str, affine: bool) -> list[Entry]:
    names = (("weight", "bias") if affine else ()) + ("running_mean", "running_var", "num_batches_tracked")
    return [Entry(f"{src}.{n}", f"{dst}.{n}") for n in names]


def _attention(model: nn.Module, src: str, dst: str, names: tuple[str, ...], gamma: tuple[str, str], sn_style: str) -> list[Entry]:
    """SelfAttention: `names` are the reference's query, key, value[, out] layers; gamma (name, how)."""
    out = [Entry(f"{src}.{gamma[0]}", f"{dst}.gamma", gamma[1])]
    for theirs, ours in zip(names, ("query", "key", "value", "out")):
        out += _layer(model, f"{src}.{theirs}", f"{dst}.{ours}", sn_style)
    return out


def _cbn(model: nn.Module, src: str, dst: str, tables: tuple[str, str], bn_name: str, linear: bool) -> list[Entry]:
    """Our CondBatchNorm2d at `dst` from a reference's: BN statistics under `src.bn_name`, gain and bias tables."""
    cbn = _sub(model, dst)
    if not cbn.num_classes:
        raise CheckpointError("unconditional ResNet checkpoints of StudioGAN and MMGeneration are not supported "
                              "(every published SAGAN file is class-conditional); pass the dataset's --num_classes")
    out = _bn(f"{src}.{bn_name}", f"{dst}.bn", affine=False)
    for theirs, ours in zip(tables, ("gain", "bias")):
        if linear:
            out += _linear_as_embedding(model, f"{src}.{theirs}", f"{dst}.{ours}")
        else:
            out += _layer(model, f"{src}.{theirs}", f"{dst}.{ours}", "torch")
    return out


def _check_arch(cfg: ModelConfig, fmt: str) -> None:
    want = "dcgan" if fmt == "heykeetae" else "resnet"
    if cfg.arch != want:
        raise CheckpointError(f"{fmt} checkpoints hold the {want} layout, but the flags build --arch {cfg.arch}; "
                              f"use the matching --preset (see docs/checkpoints.md)")


@dataclass(frozen=True)
class ResNetNames:
    """How a reference names the parts of the ResNet G and D (one record per reference, below)."""

    g_head: str
    g_block: str  # prefix of our G block i, e.g. "blocks.{i}.0"
    d_block: Callable[[int], str]  # prefix of our D block i
    convs: tuple[str, str, str]  # the block's conv1, conv2, shortcut
    bns: tuple[str, str]  # the G block's two conditional BNs
    bn_stats: str  # the BN statistics inside a conditional BN
    tables: tuple[str, str]  # the conditional BN's gain and bias tables
    linear_tables: bool  # tables are one-hot Linears (C, K) rather than Embeddings (K, C)
    attention: tuple[str, str, str, str]  # query, key, value, out
    gamma: tuple[str, str]  # (name, transform)
    g_bn_out: str
    g_conv_out: str
    d_head: str
    d_embed: str


def _studiogan_names(old_cbn: bool) -> ResNetNames:
    return ResNetNames(
        g_head="linear0", g_block="blocks.{i}.0", d_block=lambda i: f"blocks.{i}.0", convs=("conv2d1", "conv2d2", "conv2d0"),
        bns=("bn1", "bn2"), bn_stats="bn", tables=("embed0", "embed1") if old_cbn else ("gain", "bias"), linear_tables=not old_cbn,
        attention=("conv1x1_theta", "conv1x1_phi", "conv1x1_g", "conv1x1_attn"), gamma=("sigma", "scalar"),
        g_bn_out="bn4", g_conv_out="conv2d5", d_head="linear1", d_embed="embedding")


MMGEN_NAMES = ResNetNames(
    g_head="noise2feat", g_block="conv_blocks.{i}", d_block=lambda i: "from_rgb" if i == 0 else f"conv_blocks.{i - 1}",
    convs=("conv_1.conv", "conv_2.conv", "shortcut.conv"), bns=("norm_1", "norm_2"), bn_stats="norm",
    tables=("weight_embedding", "bias_embedding"), linear_tables=False, attention=("theta.conv", "phi.conv", "g.conv", "o.conv"),
    gamma=("gamma", "copy"), g_bn_out="to_rgb.bn", g_conv_out="to_rgb.conv", d_head="decision", d_embed="proj_y")


def resnet_table(G: nn.Module, D: nn.Module, n: ResNetNames) -> tuple[list[Entry], list[Entry]]:
    """A reference's ResNet G and D keys -> ours, walking our blocks in order."""
    tables: list[list[Entry]] = []
    for model, prefix in ((G, lambda i: n.g_block.format(i=i)), (D, n.d_block)):
        out = _layer(G, n.g_head, "head", "torch") if model is G else []
        for i, block in enumerate(model.blocks):
            s, d = prefix(i), f"blocks.{i}"
            if isinstance(block, SelfAttention):
                out += _attention(model, s, d, n.attention, n.gamma, "torch")
                continue
            if model is G:
                for theirs, ours in zip(n.bns, ("bn1", "bn2")):
                    out += _cbn(G, f"{s}.{theirs}", f"{d}.{ours}", n.tables, n.bn_stats, n.linear_tables)
            for theirs, ours in zip(n.convs, ("conv1", "conv2", "shortcut")):
                if getattr(block, ours) is not None:  # D's identity shortcuts have no layer
                    out += _layer(model, f"{s}.{theirs}", f"{d}.{ours}", "torch")
        if model is G:
            out += _bn(n.g_bn_out, "bn_out", affine=True) + _layer(G, n.g_conv_out, "conv_out", "torch")
        else:
            out += _layer(D, n.d_head, "head", "torch")
            if D.cfg.num_classes:
                out += _layer(D, n.d_embed, "embed", "torch")
        tables.append(out)
    return tables[0], tables[1]


def heykeetae_table(G: nn.Module, D: nn.Module) -> tuple[list[Entry], list[Entry]]:
    """heykeetae sagan_models.py keys -> ours: l1.. in layer order, attn1.., last.0."""
    attn = ("query_conv", "key_conv", "value_conv")
    tables = []
    for model, out_name in ((G, "conv_out"), (D, "head")):
        entries: list[Entry] = []
        n_conv = n_attn = 0
        for i, block in enumerate(model.blocks):
            if isinstance(block, SelfAttention):
                n_attn += 1
                entries += _attention(model, f"attn{n_attn}", f"blocks.{i}", attn, ("gamma", "scalar"), "port")
            else:
                n_conv += 1
                entries += _layer(model, f"l{n_conv}.0.module", f"blocks.{i}.conv", "port")
                if model is G:
                    if block.bn.num_classes:
                        raise CheckpointError("heykeetae's models are unconditional; convert with --num_classes 0")
                    entries += _bn(f"l{n_conv}.1", f"blocks.{i}.bn.bn", affine=True)
        entries += _layer(model, "last.0", out_name, "port")
        tables.append(entries)
    return tables[0], tables[1]


# ----------------------------------------------------------------------------------------------
# Applying a table


def _transform(t: Tensor, how: str) -> Tensor:
    if how == "transpose":
        return t.t()
    if how == "scalar":
        return t.reshape(())
    return t


@dataclass
class Mapped:
    """The result of applying a table: our state dict, and the source key behind each of our keys."""

    state: dict[str, Tensor]
    origin: dict[str, Entry]


def apply_table(table: list[Entry], source: dict[str, Tensor], target: dict[str, Tensor], what: str,
                ignore: tuple[str, ...] = ()) -> Mapped:
    """Build a state dict with exactly `target`'s keys and shapes from `source` through `table`.

    Raises CheckpointError listing (in one line) the missing source keys, the source keys no entry
    uses (beyond `ignore`), our keys written twice or never, and mis-shaped tensors."""
    missing, misshaped, twice = [], [], []
    state: dict[str, Tensor] = {}
    origin: dict[str, Entry] = {}
    for e in table:
        if e.src not in source:
            missing.append(e.src)
            continue
        if e.dst in state:
            twice.append(e.dst)
            continue
        value = _transform(source[e.src], e.how)
        want = target.get(e.dst)
        if want is None or value.shape != want.shape:
            misshaped.append(f"{e.src} {tuple(source[e.src].shape)} -> {e.dst} "
                             f"{tuple(want.shape) if want is not None else '(no such key)'}")
            continue
        state[e.dst] = value.to(want.dtype).clone()
        origin[e.dst] = e
    used = {e.src for e in table}
    unexpected = [k for k in source if k not in used and k not in ignore]
    unwritten = [k for k in target if k not in state and k not in {e.dst for e in table}]
    problems = []
    for label, keys in (("missing in the file", missing), ("not used by the key table", unexpected),
                        ("mis-shaped", misshaped), ("written twice", twice), ("of ours never written", unwritten)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", … ({len(keys)} in all)" if len(keys) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model the flags build ({'; '.join(problems)}); "
                              f"pass the flags of the run that wrote it (see docs/checkpoints.md)")
    return Mapped(state, origin)


def reverse_channels(state: dict[str, Tensor], rgb_out: str | None, rgb_in: tuple[str, ...]) -> dict[str, Tensor]:
    """BGR <-> RGB: reverse the output channels of the layer at `rgb_out` (weight rows, bias, u) and the
    input channels of the layers in `rgb_in` (weight columns, and v, laid out (in, kh, kw))."""
    out = dict(state)

    def key(layer: str, name: str) -> str:
        sn = f"{layer}.parametrizations.weight.original"
        if name == "weight":
            return sn if sn in out else f"{layer}.weight"
        return {"u": f"{layer}.parametrizations.weight.0._u", "v": f"{layer}.parametrizations.weight.0._v"}.get(name, f"{layer}.{name}")

    if rgb_out is not None:
        for name in ("weight", "bias", "u"):
            k = key(rgb_out, name)
            if k in out:
                out[k] = out[k].flip(0)
    for layer in rgb_in:
        k = key(layer, "weight")
        out[k] = out[k].flip(1)
        kv = key(layer, "v")
        if kv in out:
            v = out[kv]
            out[kv] = v.view(3, -1).flip(0).reshape(v.shape)
    return out


def map_optimizer(opt_state: dict, table: list[Entry], source: dict[str, Tensor], model: nn.Module,
                  template: dict, flip: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None) -> dict | None:
    """A reference's Adam state over its parameters (in state-dict order) as our Adam's state over
    `model.parameters()`, with the same value transforms as the weights. None unless the mapping is
    exact: every parameter of ours gets the state of exactly one parameter of theirs."""
    if not isinstance(opt_state, dict) or not isinstance(opt_state.get("state"), dict):
        return None
    their_params = [k for k in source if _is_param_key(k)]
    if len(their_params) != len(opt_state["state"]):
        return None
    by_src = {e.src: e for e in table}
    ours = [name for name, _ in model.named_parameters()]
    index = {name: i for i, name in enumerate(ours)}
    moments: dict[str, dict[str, Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
    steps: dict[str, Tensor] = {}
    for i, key in enumerate(their_params):
        entry = by_src.get(key)
        s = opt_state["state"].get(i)
        if entry is None or entry.dst not in index or not isinstance(s, dict) or not {"exp_avg", "exp_avg_sq", "step"} <= set(s):
            return None
        for m in moments:
            moments[m][entry.dst] = _transform(s[m], entry.how)
        steps[entry.dst] = torch.tensor(float(s["step"]), dtype=torch.float32)  # torch 1.x stored an int
    if set(steps) != set(ours):
        return None
    if flip is not None:
        moments = {m: flip(v) for m, v in moments.items()}
    shapes = dict(model.named_parameters())
    state = {}
    for name in ours:
        if moments["exp_avg"][name].shape != shapes[name].shape:
            return None
        state[index[name]] = {"step": steps[name], "exp_avg": moments["exp_avg"][name].clone(),
                              "exp_avg_sq": moments["exp_avg_sq"][name].clone()}
    return {"state": state, "param_groups": template["param_groups"]}


# ----------------------------------------------------------------------------------------------
# Reading the references' files


@dataclass
class Foreign:
    """A reference's checkpoint, split into its parts (state dicts keyed as the reference names them)."""

    format: str
    G: dict[str, Tensor]
    D: dict[str, Tensor]
    G_ema: dict[str, Tensor] | None
    opt_g: dict | None
    opt_d: dict | None
    iteration: int | None  # the reference's own count (MMGeneration: D steps; StudioGAN, heykeetae: G steps)
    files: dict[str, Path]  # role -> file
    bgr: bool = False  # G outputs / D expects BGR
    old_cbn: bool = False  # StudioGAN: Embedding CBN tables (files before 2022-01-25)
    ema_decay: float | None = None  # in our convention (fraction of the average kept per update)
    ema_start_iter: int | None = None
    config: str = ""  # MMGeneration/mmagic: the config text stored in the file's meta
    notes: tuple[str, ...] = ()


def _tensors(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, Tensor) for v in d.values())


def _strip_module(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """DataParallel's `module.` prefix, when every key carries it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect_format(obj: Any, path: Path) -> str:
    """The format of a loaded file, from its structure; CheckpointError when none fits."""
    if _tensors(obj):
        keys = _strip_module(obj)
        if any(k.startswith("l1.0.module.") for k in keys):
            return "heykeetae"
    if isinstance(obj, dict) and _tensors(obj.get("state_dict")):
        keys = obj["state_dict"]
        if any(k.startswith(("generator.", "discriminator.")) for k in keys):
            return "mmgen"
        if any(k.startswith(("linear0.", "linear1.")) for k in keys):
            return "studiogan"
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is already a checkpoint of this code; load it with --pretrained_model")
    raise CheckpointError(f"cannot tell the format of {path} (not a StudioGAN, MMGeneration/mmagic or heykeetae "
                          f"checkpoint by its structure); pass --from studiogan|mmgen|heykeetae")


STUDIOGAN_NAME = re.compile(r"model=(G|D|G_ema)-(best|current)-weights-step=(\d+)\.pth$")
HEYKEETAE_NAME = re.compile(r"(\d+)_(G|D)\.pth$")


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its StudioGAN/heykeetae files (best ones first, newest step) or its one .pth file."""
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        studio = [(m, q) for q in sorted(p.iterdir()) if (m := STUDIOGAN_NAME.search(q.name))]
        if studio:
            kind = "best" if any(m.group(2) == "best" for m, _ in studio) else "current"
            step = max(int(m.group(3)) for m, _ in studio if m.group(2) == kind)
            out += [q for m, q in studio if m.group(2) == kind and int(m.group(3)) == step]
            continue
        hk = [(m, q) for q in sorted(p.iterdir()) if (m := HEYKEETAE_NAME.search(q.name))]
        if hk:
            step = max(int(m.group(1)) for m, _ in hk)
            out += [q for m, q in hk if int(m.group(1)) == step]
            continue
        single = sorted(p.glob("*.pth"))
        if len(single) == 1:  # download.sh's data/checkpoints/mmgen_<name>/ holds one published file
            out += single
            continue
        raise CheckpointError(f"{p} is a folder without StudioGAN (model=G-…pth) or heykeetae ({{step}}_G.pth) files or a "
                              f"single .pth file; name the files")
    return out


def read_foreign(paths: list[Path], fmt: str | None = None) -> Foreign:
    """Load a reference's checkpoint files (auto-detecting the format unless `fmt` is given)."""
    files = _expand(paths)
    if not files:
        raise CheckpointError("no source files given")
    return parse_foreign({p: load_foreign(p) for p in files}, fmt)


def parse_foreign(loaded: dict[Path, Any], fmt: str | None = None) -> Foreign:
    """Split loaded files (path -> object) into a Foreign checkpoint; every file must be of one format."""
    found = {p: detect_format(obj, p) for p, obj in loaded.items()}
    formats = set(found.values())
    if len(formats) > 1:
        raise CheckpointError("the source files are of different formats: "
                              + ", ".join(f"{p.name} ({f})" for p, f in found.items()))
    detected = formats.pop()
    if fmt is not None and fmt != detected:
        raise CheckpointError(f"--from {fmt}, but {next(iter(loaded))} is a {detected} checkpoint by its structure")
    return {"studiogan": _read_studiogan, "mmgen": _read_mmgen, "heykeetae": _read_heykeetae}[detected](loaded)


def _roles(loaded: dict[Path, Any], role_of: Callable[[Path, Any], str]) -> dict[str, tuple[Path, Any]]:
    roles: dict[str, tuple[Path, Any]] = {}
    for p, obj in loaded.items():
        r = role_of(p, obj)
        if r in roles:
            raise CheckpointError(f"two {r} files given: {roles[r][0]} and {p}; give one of each")
        roles[r] = (p, obj)
    return roles


def _read_studiogan(loaded: dict[Path, Any]) -> Foreign:
    def role(p: Path, obj: dict) -> str:
        m = STUDIOGAN_NAME.search(p.name)
        if m:
            return m.group(1)
        keys = obj["state_dict"]
        if "linear1.bias" in keys or any(k.startswith("linear1.") for k in keys):
            return "D"
        return "G" if "optimizer" in obj else "G_ema"  # only G files carry an optimizer

    roles = _roles(loaded, role)
    for need in ("G", "D"):
        if need not in roles:
            raise CheckpointError(f"StudioGAN checkpoints come as separate G, D (and G_ema) files; the {need} file "
                                  f"(model={need}-best-weights-step=N.pth) is missing")
    d_obj = roles["D"][1]
    g_sd = roles["G"][1]["state_dict"]
    step = d_obj.get("step")
    if not isinstance(step, int):
        step = roles["G"][1].get("step") if isinstance(roles["G"][1].get("step"), int) else None
    return Foreign(
        format="studiogan", G=dict(g_sd), D=dict(d_obj["state_dict"]),
        G_ema=dict(roles["G_ema"][1]["state_dict"]) if "G_ema" in roles else None,
        opt_g=roles["G"][1].get("optimizer"), opt_d=d_obj.get("optimizer"), iteration=step,
        files={r: p for r, (p, _) in roles.items()}, old_cbn=any(".embed0." in k for k in g_sd),
    )


def _config_text(meta: Any) -> str:
    if not isinstance(meta, dict):
        return ""
    text = meta.get("cfg", meta.get("config", ""))
    return text if isinstance(text, str) else ""


def source_is_bgr(config: str, name: str) -> bool:
    """Whether an MMGeneration/mmagic file's G outputs (and D reads) BGR: its config text decides when it
    names `rgb_to_bgr` (True: a StudioGAN-converted, RGB model); else the file name ('convert-studio-rgb'
    files are RGB); else BGR, as MMGeneration's own runs were trained."""
    said = re.search(r"rgb_to_bgr\s*=\s*(True|False)", config or "")
    if said:
        return said.group(1) == "False"
    return "convert-studio-rgb" not in name


def _read_mmgen(loaded: dict[Path, Any]) -> Foreign:
    if len(loaded) != 1:
        raise CheckpointError("an MMGeneration/mmagic checkpoint is one file holding G, D (and the EMA G); give just that file")
    (path, obj), = loaded.items()
    sd = obj["state_dict"]
    v1 = "message_hub" in obj or any(k.startswith("generator_ema.module.") for k in sd)
    ema_prefix = "generator_ema.module." if v1 else "generator_ema."
    parts: dict[str, dict[str, Tensor]] = {"generator.": {}, "discriminator.": {}, ema_prefix: {}}
    unknown = []
    for k, v in sd.items():
        if k == "generator_ema.steps":  # mmagic 1.x: the number of EMA updates, not a weight
            continue
        prefix = next((p for p in parts if k.startswith(p)), None)
        if prefix is None:
            unknown.append(k)
        else:
            parts[prefix][k[len(prefix):]] = v
    if unknown:
        raise CheckpointError(f"{path}: keys outside generator./discriminator./{ema_prefix}: {', '.join(unknown[:6])}")
    meta = obj.get("meta", {})
    text = _config_text(meta)
    bgr = source_is_bgr(text, path.name)
    opt = obj.get("optimizer") if isinstance(obj.get("optimizer"), dict) else {}
    ema_decay = start = None
    notes = []
    if parts[ema_prefix]:
        m = re.search(r"momentum\s*=\s*([0-9.eE+-]+)", text)
        s = re.search(r"start_iter\s*=\s*(\d+)", text)
        if m:
            momentum = float(m.group(1))
            # 0.x: ema = orig + (ema - orig) * momentum; mmagic 1.x: avg = (1 - momentum) * avg + momentum * src
            ema_decay = 1.0 - momentum if v1 else momentum
            notes.append(f"EMA decay {ema_decay:g} from the file's config (momentum {momentum:g}, "
                         f"{'mmagic 1.x: momentum is the weight of the new value' if v1 else 'MMGeneration 0.x'})")
        start = int(s.group(1)) if s else None
    iteration = meta.get("iter") if isinstance(meta, dict) and isinstance(meta.get("iter"), int) else None
    return Foreign(
        format="mmgen", G=parts["generator."], D=parts["discriminator."], G_ema=parts[ema_prefix] or None,
        opt_g=opt.get("generator"), opt_d=opt.get("discriminator"), iteration=iteration, files={"G+D": path},
        bgr=bool(bgr), ema_decay=ema_decay, ema_start_iter=start, config=text,
        notes=tuple(notes),
    )


def _read_heykeetae(loaded: dict[Path, Any]) -> Foreign:
    def role(p: Path, obj: dict) -> str:
        return "G" if any(k.endswith(".1.running_mean") for k in _strip_module(obj)) else "D"  # only G has BN

    roles = _roles(loaded, role)
    for need in ("G", "D"):
        if need not in roles:
            raise CheckpointError(f"heykeetae checkpoints come as {{step}}_G.pth and {{step}}_D.pth; the {need} file is missing")
    m = HEYKEETAE_NAME.search(roles["G"][0].name)
    return Foreign(
        format="heykeetae", G=_strip_module(roles["G"][1]), D=_strip_module(roles["D"][1]), G_ema=None, opt_g=None,
        opt_d=None, iteration=int(m.group(1)) if m else None, files={r: p for r, (p, _) in roles.items()},
    )


def tables_for(src: Foreign, G: nn.Module, D: nn.Module) -> tuple[list[Entry], list[Entry]]:
    _check_arch(G.cfg, src.format)
    if src.format == "studiogan":
        return resnet_table(G, D, _studiogan_names(src.old_cbn))
    if src.format == "mmgen":
        return resnet_table(G, D, MMGEN_NAMES)
    return heykeetae_table(G, D)


def _first_block_layers(D: nn.Module) -> tuple[str, ...]:
    """D's layers that read the image: the first block's conv1 and (for ResNet) its shortcut."""
    first = D.blocks[0]
    if isinstance(first, DBlock):
        return ("blocks.0.conv1", "blocks.0.shortcut")
    return ("blocks.0.conv",)


def rgb_flips(G: nn.Module, D: nn.Module) -> tuple[Callable, Callable]:
    """The BGR -> RGB functions for G's and D's state dicts."""
    d_in = _first_block_layers(D)
    return (lambda sd: reverse_channels(sd, "conv_out", ()), lambda sd: reverse_channels(sd, None, d_in))

