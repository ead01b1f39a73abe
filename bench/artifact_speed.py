"""Is the int8 model faster than the float one? Latency and fidelity of the artifacts side by side.

For each model: the float original, qaas's artifact in each kernel mode (``--target
onnxruntime-cpu:vnni``: s8 weights for ONNX Runtime's u8s8 kernels; ``:avx2``: the u8 container,
u8u8 kernels; ``:avx2-s7``: 7-bit GEMM weights, u8s8 kernels exact without VNNI), the
default mode with ``--objective latency`` (nodes measured faster float on this machine kept
float: ``qaas_engine/latency_objective.py``) and ONNX Runtime's ``quantize_static``
model (``bench/peers/onnxruntime_static.py``: QDQ, per-channel S8 weights, U8 activations).
Latency: ONNX Runtime CPU, one intra-op thread, one sample repeated to batch 1 and 32, the
models timed in turn round after round, medians.
Fidelity: output SQNR and argmax agreement against float on held-out inputs neither tool
calibrated on.

Models: the bundled T1 example (digits, its calibration and evaluation files) and, with
``--real``, PaddleOCR's networks from the rapidocr wheel (``bench/real_models.py``, synthetic
pages). The header prints the CPU's int8 dot-product flags: on a CPU without them the ``vnni``
artifact may saturate (that is what ``:avx2`` is for).

``--catalog NAMES`` (comma-separated, or ``all``) times the models of the real-model bench
(``bench/real_models/catalog.py``) instead: float, qaas's default ``onnxruntime-cpu`` artifact
(the case's own options) and ``quantize_static``'s, each scored by the case's task metric on
held-out samples, with qaas's simulation-vs-ORT SQNR from its report. Batch 32 is measured
where the case's batch axis is free. ``--modes avx2,avx2-s7`` adds qaas's artifact in those
forced modes, ``--ort-reduce-range`` quantize_static's 7-bit-weight variant (its remedy on
CPUs without VNNI), all in the same rounds. ``--baseline DIR`` (a folder an earlier ``--keep`` run
wrote, e.g. from main's checkout) times that run's qaas artifacts too, in the same rounds.

Run: ``python bench/artifact_speed.py [--real] [--catalog all] [--rounds 7] [--clock cpu]
[--modes avx2,avx2-s7] [--ort-reduce-range] [--keep DIR] [--baseline DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.real_models import document_images, fetch_rapidocr  # noqa: E402
from qaas_engine.targets import cpu_dot_product_flags  # noqa: E402

MODES = ("vnni", "avx2", "avx2-s7")
# (label, extra qaas options): the default-mode artifact with --objective latency, which keeps
# float the nodes it measured faster float on this machine
OBJECTIVES = (("qaas latency", ("--target", "onnxruntime-cpu", "--objective", "latency")),)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quantize(model: Path, calibration: Path, batch: int, out: Path) -> dict[str, Path]:
    """qaas in each kernel mode and ORT's quantize_static, each as its own process."""
    made = {}
    for mode in MODES:
        target = out / f"qaas-{mode}"
        command = [str(Path(sys.executable).parent / "qaas"), "quantize", str(model)]
        command += ["--calibration", str(calibration), "--batch-size", str(batch)]
        command += ["--target", f"onnxruntime-cpu:{mode}", "-o", str(target), "--quiet"]
        subprocess.run(command, check=True, capture_output=True)
        made[f"qaas {mode}"] = target / "model.quant.onnx"
    for label, options in OBJECTIVES:
        target = out / label.replace(" ", "-")
        command = [str(Path(sys.executable).parent / "qaas"), "quantize", str(model)]
        command += ["--calibration", str(calibration), "--batch-size", str(batch)]
        command += [*options, "-o", str(target), "--quiet"]
        subprocess.run(command, check=True, capture_output=True)
        made[label] = target / "model.quant.onnx"
    ort_model = out / "ort.onnx"
    command = [sys.executable, str(ROOT / "bench" / "peers" / "onnxruntime_static.py")]
    command += [str(model), str(calibration), str(ort_model), "--per-channel"]
    command += ["--batch-size", str(batch), "--without-torch"]
    subprocess.run(command, check=True, capture_output=True)
    made["ORT quantize_static"] = ort_model
    return made


# ``--clock cpu``: the CPU time of the calling thread, which runs ORT's one intra-op thread
# itself, so time spent descheduled on a loaded machine is not counted
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = ["wall"]


def _latency(sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int) -> dict:
    """Median ms per model; the models take turns each round so load falls on all alike.

    Each timed run follows an untimed run of the same model, as a deployment runs one model
    over and over: timed straight after another model, a model starts with that model's
    weights in the caches (on T1 the model timed after float measured 10% slower than the
    same file timed third)."""
    clock = CLOCKS[CLOCK[0]]
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            session.run(None, feed)
            start = clock()
            session.run(None, feed)
            times[name].append((clock() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _speed_cells(results: dict[int, dict[str, float]], label: str) -> list[str]:
    """``label``'s milliseconds and speed-up over float at batch 1 and 32, as table cells."""
    cells = []
    for size in (1, 32):
        if size in results:
            ms = results[size][label]
            cells.append(f"{ms:10.3f} {results[size]['float'] / ms:7.2f}x")
        else:
            cells.append(f"{'-':>10s} {'-':>8s}")
    return cells


def _fidelity(reference: np.ndarray, test: np.ndarray) -> str:
    ref, out = reference.astype(np.float64), test.astype(np.float64)
    noise = float(np.sum((ref - out) ** 2))
    sqnr = math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref**2)) / noise)
    agreement = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
    return f"{sqnr:6.2f} dB, argmax {agreement:.3f}"


def bench(name: str, model: Path, calibration: Path, held_out: np.ndarray, batch: int,
          input_name: str, rounds: int, tmp: Path,
          baseline: Path | None = None) -> None:  # fmt: skip
    paths = {"float": model, **_quantize(model, calibration, batch, tmp / name)}
    earlier = None if baseline is None else baseline / name / "qaas-vnni" / "model.quant.onnx"
    if earlier is not None and earlier.exists():
        paths["qaas vnni baseline"] = earlier
    sessions = {label: _session(path) for label, path in paths.items()}
    print(f"\n{name}")
    results = {}
    for size in (1, 32):
        feed = {input_name: np.repeat(held_out[:1], size, axis=0)}
        try:
            results[size] = _latency(sessions, feed, rounds)
        except Exception as error:  # a model with a fixed batch axis
            print(f"  batch {size}: not measured ({str(error).splitlines()[0][:120]})")
    reference = np.concatenate([sessions["float"].run(None, {input_name: x[None]})[0]
                                for x in held_out])  # fmt: skip
    print(f"  {'model':22s} {'batch 1 ms':>10s} {'vs float':>8s} {'batch 32 ms':>11s} "
          f"{'vs float':>8s}  fidelity vs float")  # fmt: skip
    for label, session in sessions.items():
        cells = _speed_cells(results, label)
        outputs = np.concatenate([session.run(None, {input_name: x[None]})[0] for x in held_out])
        fidelity = "reference" if label == "float" else _fidelity(reference, outputs)
        print(f"  {label:22s} {cells[0]} {cells[1]:>20s}  {fidelity}")


def _batched(feed: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """One sample's inputs repeated to ``size`` on the batch axis."""
    return {name: np.repeat(value, size, axis=0) for name, value in feed.items()}


def bench_case(
    case_name: str,
    samples: int,
    rounds: int,
    tmp: Path,
    baseline: Path | None = None,
    modes: tuple[str, ...] = (),
    reduce_range: bool = False,
) -> None:
    """float, qaas's default artifact and quantize_static's on one real-model bench case; and
    the qaas artifact an earlier ``--keep`` run left under ``baseline`` (same data: the cases'
    feeds are seeded), timed in the same rounds. ``modes``: qaas artifacts for these forced
    ``onnxruntime-cpu`` kernel modes too; ``reduce_range``: quantize_static's 7-bit-weight
    variant too."""
    from bench.real_models import tools
    from bench.real_models.bench import write_npz
    from bench.real_models.catalog import CASES, run_each

    (case,) = [c for c in CASES if c.name == case_name]
    folder = tmp / case.name
    folder.mkdir(parents=True, exist_ok=True)
    model = case.model()
    calibration = (case.calibration_feeds or case.feeds)(samples, 0)
    held_out = case.feeds(samples, 1)
    stacked = write_npz(folder / "calibration-stacked.npz", calibration, batched=False)
    batched = write_npz(folder / "calibration.npz", calibration, batched=case.batchable)
    evaluation = write_npz(folder / "evaluation.npz", held_out, batched=case.batchable)
    runs = [
        tools.run_qaas(model, batched, evaluation, folder, strict=False, options=case.qaas_options),
        tools.run_ort(model, stacked, folder),
    ]
    for mode in modes:
        options = (*case.qaas_options, "--target", f"onnxruntime-cpu:{mode}")
        runs.append(
            tools.run_qaas(
                model,
                batched,
                evaluation,
                folder,
                strict=False,
                options=options,
                tool=f"qaas {mode}",
            )
        )
    if reduce_range:
        runs.append(tools.run_ort(model, stacked, folder, reduce_range=True))
    print(f"\n{case.name} ({case.metric})")
    paths = {"float": model}
    reports = {}
    for run in runs:
        label = {"ORT": "ORT quantize_static", "ORT reduce_range": "ORT reduce_range"}.get(
            run.tool, run.tool
        )
        if run.report:
            reports[label] = run.report
        if run.model is None:
            print(f"  {label}: failed ({run.error})")
        else:
            paths[label] = run.model
    earlier = None if baseline is None else baseline / case.name / "qaas" / "model.quant.onnx"
    if earlier is not None and earlier.exists():
        paths["qaas baseline"] = earlier
    sessions = {}
    for label, path in paths.items():
        try:
            sessions[label] = _session(path)
        except Exception as error:  # a model the tool wrote that ORT will not load
            print(f"  {label}: ORT refuses it ({str(error).splitlines()[0][:160]})")
    results = {}
    for size in (1, 32) if case.batchable and case.run is None else (1,):
        try:
            results[size] = _latency(sessions, _batched(held_out[0], size), rounds)
        except Exception as error:  # a model with a fixed batch axis
            print(f"  batch {size}: not measured ({str(error).splitlines()[0][:120]})")
    runner = case.run or run_each
    reference = runner(sessions["float"], held_out)
    print(f"  {'model':22s} {'batch 1 ms':>10s} {'vs float':>8s} {'batch 32 ms':>11s} "
          f"{'vs float':>8s}  {'task':>6s}  sim vs ORT")  # fmt: skip
    for label, session in sessions.items():
        cells = _speed_cells(results, label)
        task = case.score(reference, runner(session, held_out))
        gap = ""
        if label in reports:
            db = tools.sim_vs_ort_db(reports[label])
            mode = reports[label].get("target", {}).get("kernel_mode", "?")
            gap = f"{'-' if db is None else f'{db:.1f} dB'} ({mode})"
        print(f"  {label:22s} {cells[0]} {cells[1]:>20s}  {task:6.3f}  {gap}")


@contextlib.contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    """``keep`` (made if missing) or a temporary folder removed after."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="PaddleOCR's networks too")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--catalog",
        default="",
        help="real-model bench cases instead of T1: comma-separated names, or 'all'",
    )
    parser.add_argument("--samples", type=int, default=32, help="--catalog: per data set")
    parser.add_argument(
        "--modes",
        default="",
        help="--catalog: qaas artifacts for these forced onnxruntime-cpu modes too, e.g. "
        "avx2,avx2-s7 (comma-separated)",
    )
    parser.add_argument(
        "--ort-reduce-range",
        action="store_true",
        help="--catalog: quantize_static with reduce_range (7-bit weights) too",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the artifacts under this folder and keep them (to profile them after)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a folder an earlier --keep run wrote; its qaas artifacts (T1: the vnni one) are "
        "timed beside this checkout's, in the same rounds (before/after a change)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="cpu: the ORT thread's CPU time (a loaded machine's waits left out)",
    )
    args = parser.parse_args(argv)
    CLOCK[0] = args.clock
    # the qaas processes run this checkout's code, not whatever the venv's editable install names
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    flags = cpu_dot_product_flags()
    print(f"ONNX Runtime {ort.__version__}, one thread, {args.clock} clock; CPU int8 dot product: "
          f"{', '.join(flags) or 'none (the vnni artifact may saturate here)'}; load "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")  # fmt: skip
    if args.catalog:
        from bench.real_models.catalog import CASES

        names = [c.name for c in CASES] if args.catalog == "all" else args.catalog.split(",")
        modes = tuple(mode for mode in args.modes.split(",") if mode)
        with _folder(args.keep) as folder:
            for name in names:
                bench_case(name, args.samples, args.rounds, folder, args.baseline, modes,
                           args.ort_reduce_range)  # fmt: skip
        return 0
    with _folder(args.keep) as tmp:
        examples = ROOT / "examples"
        with np.load(examples / "digits_evaluation.npz") as data:
            (input_name,) = [key for key in data.files if key != "labels"]
            held_out = data[input_name][:64]
        t1 = examples / "digits_mobilenetv2.onnx"
        calibration = examples / "digits_calibration.npz"
        bench("T1 digits_mobilenetv2", t1, calibration, held_out, 32, input_name, args.rounds,
              tmp, args.baseline)  # fmt: skip
        if args.real:
            for model in fetch_rapidocr():
                images = document_images(48, model.sample_shape, seed=0)
                input_name = _session(model.path).get_inputs()[0].name
                calibration = tmp / f"{model.name}.npz"
                np.savez(calibration, **{input_name: images[:32]})
                bench(model.name, model.path, calibration, images[32:], model.batch_size,
                      input_name, args.rounds, tmp)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
