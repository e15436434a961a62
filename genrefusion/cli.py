"""``genrefusion <subcommand> [arguments]``: one command over the project's entry points in ``scripts/``.

Each subcommand runs its script as if it were started directly (``genrefusion run seed=7`` is
``python scripts/run.py seed=7``: the same Hydra overrides, run folder and exit status), so a script and its
subcommand cannot drift apart. The commands run from a checkout installed with ``pip install -e .`` (what
``make install`` does): the configs (``conf/``), the default data root (``../shared/datasets``) and the
outputs live beside it.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

#: The checkout this package was installed from (an editable install runs it in place).
ROOT = Path(__file__).resolve().parent.parent
#: subcommand → (script in scripts/, what it does).
COMMANDS = {
    "run": ("run.py", "train the branches and fuse them; a run folder with the comparison table (Hydra overrides)"),
    "score": ("score.py", "score a table of tracks with a trained run folder: one output row per input row"),
    "evaluate": ("evaluate_tracks.py", "a trained run folder on a labelled catalogue it never saw"),
    "explain": ("explain.py", "embeddings, a 2-D map, top losses and class-activation maps of a trained branch"),
    "compare": ("compare_runs.py", "paired comparison of two or more runs on their common test items"),
    "summarize-sweep": ("summarize_sweep.py", "one table of a Hydra sweep's runs, mean ± std over seeds"),
    "reproduce-covers": ("reproduce_covers.py", "the covers-only paper table (M1–M5 × 3/4/5 classes)"),
    "pack-covers": ("pack_covers.py", "the paper table's covers and splits in one folder, for a machine without the data"),
    "device-kit": ("device_kit.py", "one command's carry for a lent GPU machine: wheels, inputs and how it runs there"),
    "evaluate-covers": ("evaluate_covers.py", "a trained cover model on a covers table"),
    "score-audio": ("score_audio.py", "a folder of audio files with a trained audio model"),
    "build-musicoset": ("build_musicoset.py", "the MusicOSet album item table, labelled by the genre map"),
    "crawl": ("crawl.py", "fetch covers, previews and genre tags for a MusicOSet item table"),
    "audio-sklearn-grid": ("audio_sklearn_grid.py", "scikit-learn models chosen on validation, on the audio inputs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: genrefusion <command> [arguments]   (genrefusion <command> --help for its own)\n\n"
            "Music genre from album covers, audio, and both (late fusion).\n\ncommands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by ``argv[0]`` with the rest of ``argv``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, arguments = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    script = ROOT / "scripts" / COMMANDS[name][0]
    if not script.is_file():
        print(f"error: {script} not found: genrefusion's commands run from a checkout installed with "
              "`pip install -e .` (make install)", file=sys.stderr)
        return 2
    sys.argv = [str(script), *arguments]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)  # sys.exit("message"): said, as Python says it, with status 1
        return 1
    return 0
