"""The docs stay true: every command line they show parses with today's flags (nothing runs), every flag
they name exists, every file they link exists, every flag of main.py has a help string, the README stays
short, and its Python snippet runs."""

from __future__ import annotations

import re
import shlex
import tempfile
from pathlib import Path

import pytest

import ablation
import bench
import convert
import export
import image_stats
from parameter import PRESETS, build_parser, get_parameters

ROOT = Path(__file__).resolve().parent.parent
EXPORT_STAND_IN = Path(tempfile.mkdtemp(prefix="sagan-docs-")) / "exports" / "x"  # parse only: the file need not load
EXPORT_STAND_IN.mkdir(parents=True)
(EXPORT_STAND_IN / "model.safetensors").touch()
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
# Each script the docs run, with the parser that knows its flags; a new script is one entry here.
PARSERS = {"main.py": build_parser, "convert.py": convert.convert_parser, "ablation.py": ablation.build_parser,
           "bench.py": bench.build_parser, "export.py": export.build_parser, "image_stats.py": image_stats.build_parser}
SCRIPTS = tuple(PARSERS)
SCRIPT_NAMES = r"\b(" + "|".join(re.escape(s) for s in SCRIPTS) + r")\b|\bdownload\.sh\b"
# Flags of the other programs the docs show (torchrun, pip, pytest, SLURM, tensorboard, apt, time).
FOREIGN_FLAGS = {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend", "--rdzv_endpoint",
                 "--shutdown_timeout", "--logdir", "--signal", "--requeue", "--open-mode", "--reinstall", "--help"}
# Placeholders the docs write in command lines, and a value of the right kind for each.
PLACEHOLDERS = {"NAME": "demo", "STEP": "1", "N": "10", "K": "2", "P": "demo", "FLAGS": None, "...": None}


def doc_text(path: Path) -> str:
    return path.read_text()


def command_lines() -> list[tuple[str, int, str]]:
    """(doc, line number, command) for every shell line that runs one of our scripts or download.sh, from
    code blocks (joining `\\` continuations) and from inline code."""
    out = []
    for path in DOCS:
        lines = doc_text(path).splitlines()
        i, in_code = 0, False
        while i < len(lines):
            line, number = lines[i], i + 1
            if line.lstrip().startswith("```"):
                in_code = not in_code
                i += 1
                continue
            if in_code:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                candidates = [line]
            else:  # inline code that is a command line, not a mention of a file or a flag
                candidates = [c for c in re.findall(r"`([^`]+)`", line) if re.match(r"(python|bash|torchrun|srun|nohup) ", c)]
            for c in candidates:
                if re.search(SCRIPT_NAMES, c):
                    out.append((path.name, number, c))
            i += 1
    return out


def invocations(command: str) -> list[tuple[str, list[str]]]:
    """(script, argv) for each of our scripts a shell line runs (after `&&`, `;`, torchrun, srun, nohup ...)."""
    command = command.split(" #", 1)[0]
    found = []
    command = re.sub(r"<[^<>]*\s[^<>]*>", " ", command)  # a placeholder of several words, e.g. <any main.py flags>
    command = re.sub(r"\[[^\[\]]*\]", " ", command)  # optional parts, e.g. [--push_to_hub USER/REPO]
    for part in re.split(r"&&|;|\|\|", command):
        part = re.sub(r"\s\d?>>?\s*\S+|\s2>&1|\s&\s*$", " ", part)
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        for k, w in enumerate(words):
            name = Path(w).name
            if name in SCRIPTS or name == "download.sh":
                found.append((name, words[k + 1:]))
                break
    return found


def fill(argv: list[str]) -> list[str] | None:
    """The argv with placeholders replaced by real values; None when the line is a sketch (`...`)."""
    out = []
    for w in argv:
        if w == "..." or w.endswith("..."):
            return None
        w = re.sub(r"<[^>]+>", "x", w)
        w = re.sub(r"\$\{?\w+\}?", "1", w)
        if re.fullmatch(r"exports/\S+", w):  # an exported folder the docs name: one that exists, for the parser
            w = str(EXPORT_STAND_IN)
        if w in PLACEHOLDERS:
            if PLACEHOLDERS[w] is not None:
                out.append(PLACEHOLDERS[w])
            continue
        out.append(w)
    return out


def download_names() -> set[str]:
    script = (ROOT / "download.sh").read_text()
    block = script.split('case "$name" in', 1)[1]
    names = set()
    for pattern in re.findall(r"^    ([A-Za-z0-9_| *-]+)\)$", block, flags=re.M):
        names.update(p.strip() for p in pattern.split("|") if "*" not in p)
    for prefix, table in (("mmgen", "MMGEN_FILES"), ("studiogan", "STUDIOGAN_FILES")):
        rows = script.split(f'{table}="', 1)[1].split('"', 1)[0]
        names.update(f"{prefix}_{line.split()[0]}" for line in rows.strip().splitlines())
    return names


def parses(script: str, argv: list[str]) -> None:
    """Parse only: main.py's parser for main.py and for the flags the other scripts pass on to it."""
    if script == "main.py":
        get_parameters(argv)
    elif script == "convert.py":
        sources, _, rest = convert.split_argv(argv)
        assert sources, "convert.py needs a source first"
        get_parameters(rest)
    elif script in ("ablation.py", "bench.py"):  # their own flags, then main.py's
        get_parameters(PARSERS[script]().parse_known_args(argv)[1])
    elif script in PARSERS:
        PARSERS[script]().parse_args(argv)
    else:
        assert argv and argv[0] in download_names(), f"bash download.sh {argv[0] if argv else ''}: no such target"


COMMANDS = command_lines()


def test_the_docs_show_commands_of_every_script() -> None:
    scripts = {s for _, _, c in COMMANDS for s, _ in invocations(c)}
    assert scripts == {*SCRIPTS, "download.sh"}, scripts
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("doc,number,command", COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_every_command_line_in_the_docs_parses(doc: str, number: int, command: str) -> None:
    for script, argv in invocations(command):
        argv = fill(argv)
        if argv is None or (not argv and script != "main.py"):  # a sketch, or the script named in a sentence
            continue
        try:
            parses(script, argv)
        except SystemExit as e:
            if e.code == 0 and "--help" in argv:
                continue
            pytest.fail(f"{doc}:{number}: `{script} {' '.join(argv)}` does not parse (exit {e.code})")


def known_flags() -> set[str]:
    flags = set(FOREIGN_FLAGS)
    for make_parser in PARSERS.values():
        flags.update(s for a in make_parser()._actions for s in a.option_strings)
    return flags


def test_every_flag_the_docs_name_exists() -> None:
    known = known_flags()
    unknown = {}
    for path in DOCS:
        for number, line in enumerate(doc_text(path).splitlines(), 1):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", line):
                if flag not in known:
                    unknown.setdefault(flag, f"{path.name}:{number}")
    assert not unknown, f"flags the docs name that no parser has: {unknown}"


def test_every_linked_file_exists() -> None:
    missing = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc_text(path)):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            if not (path.parent / target.split("#", 1)[0]).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not missing, missing
    assert len(re.findall(r"\]\((?!https?://)", doc_text(ROOT / "README.md"))) >= 10


def test_every_flag_of_main_has_help_and_a_group() -> None:
    parser = build_parser()
    no_help = [a.option_strings for a in parser._actions if not a.help]
    assert not no_help, no_help
    grouped = {id(a) for g in parser._action_groups if g.title not in ("options", "optional arguments") for a in g._group_actions}
    ungrouped = [a.option_strings for a in parser._actions if id(a) not in grouped and a.dest not in ("help", "preset")]
    assert not ungrouped, ungrouped
    text = parser.format_help()
    assert re.search(r"\(default:\s+0\.0001\)", text) and "model:" in text and "evaluation (metrics.py):" in text


def test_readme_is_short_in_its_order_and_names_every_preset() -> None:
    text = doc_text(ROOT / "README.md")
    assert len(text) < 15_000
    heads = [h for h in re.findall(r"^## (.+)$", text, flags=re.M)]
    assert heads == ["Train on your own images", "Look inside", "Evaluate", "Published checkpoints", "Presets",
                     "The Fashion-MNIST result", "Differences from the references", "Files", "Citation"]
    assert text.splitlines()[10].startswith("pip install -r requirements.txt && python main.py")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.split("&& ", 1)[1] in text.splitlines()[11]
    presets = set(re.findall(r"`(\w+)`", text.split("## Presets", 1)[1].split("## ", 1)[0]))
    assert set(PRESETS) <= presets, set(PRESETS) - presets


def test_readme_python_snippet_runs_on_a_trained_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from main import main

    monkeypatch.chdir(tmp_path)
    flags = ("--dataset shapes --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 4 --num_workers 0 "
             "--total_step 2 --sample_step 2 --model_save_step 2 --log_step 1 --version shapes_demo --ema true --ema_start 1 "
             "--attn_samples 0 --use_tensorboard false --device cpu")
    assert main(shlex.split(flags)) == 0
    snippet = doc_text(ROOT / "README.md").split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    images, g = scope["images"], scope["g"]
    assert images.shape == (16, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert g.ema and g.step == 2 and not g.G.training
