"""Offline inputs for the real-model bench: real photos and faces that scikit-image bundles (no
download: ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``camera``, the LFW face subset...),
text rendered with Pillow's bundled font, and speech-like audio synthesised in numpy.

Every generator takes a seed, so calibration (seed 0) and held-out data (seed 1) never overlap
and every tool sees the same samples.
"""

from __future__ import annotations

import string
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field")
WORD_CHARACTERS = string.ascii_letters + string.digits


@cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def photo_crops(
    count: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    names: tuple[str, ...] = PHOTOS,
) -> list[Image.Image]:
    """Random crops (half to all of the shorter side, random flips) of bundled photos."""
    crops = []
    for _ in range(count):
        image = _photo(names[int(rng.integers(len(names)))])
        height, width = image.shape[:2]
        side = int(min(height, width) * rng.uniform(0.5, 1.0))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = image[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(Image.fromarray(np.ascontiguousarray(crop)).resize(size[::-1]))
    return crops


def to_chw(image: Image.Image) -> np.ndarray:
    """(3, H, W) float32 pixels in 0..255."""
    return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)


def imagenet(image: Image.Image) -> np.ndarray:
    """PaddleOCR's and PaddleClas's normalisation: ImageNet mean and std on 0..1 pixels."""
    return ((to_chw(image) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _words(rng: np.random.Generator, count: int) -> str:
    lengths = rng.integers(2, 9, size=count)
    letters = np.array(list(WORD_CHARACTERS))
    return " ".join("".join(rng.choice(letters, size=int(n))) for n in lengths)


def text_line(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One line of dark text on a light, slightly noisy background, as a recognizer sees it."""
    height, width = size
    paper = int(rng.integers(190, 256))
    image = Image.new("RGB", (width, height), (paper, paper, paper))
    font = ImageFont.load_default(size=int(height * rng.uniform(0.55, 0.75)))
    ink = int(rng.integers(0, 80))
    text = _words(rng, int(rng.integers(1, 4)))
    ImageDraw.Draw(image).text((int(rng.integers(2, 10)), height * 0.1), text, font=font, fill=ink)
    return _noisy(image, rng, 6.0)


def _noisy(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + rng.normal(0.0, sigma, size=pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def document_page(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A page: a title, paragraphs of text, sometimes a photo as a figure and a ruled table."""
    height, width = size
    page = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(page)
    margin, top = int(width * 0.08), int(height * 0.05)
    line = max(10, height // 45)
    title = ImageFont.load_default(size=int(line * 1.6))
    body = ImageFont.load_default(size=line)
    draw.text((margin, top), _words(rng, 3), font=title, fill=(10, 10, 10))
    top += int(line * 3)
    while top < height - 4 * line:
        block = rng.random()
        if block < 0.2 and top < height * 0.6:
            figure = photo_crops(1, (int(height * 0.25), int(width * 0.5)), rng)[0]
            page.paste(figure, (margin, top))
            top += figure.size[1] + line
        elif block < 0.35 and top < height * 0.7:
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
            cell_w = (width - 2 * margin) // cols
            for r in range(rows + 1):
                draw.line([(margin, top + r * line * 2), (width - margin, top + r * line * 2)], 0)
            for c in range(cols + 1):
                x = margin + c * cell_w
                draw.line([(x, top), (x, top + rows * line * 2)], fill=(0, 0, 0))
            for r in range(rows):
                for c in range(cols):
                    xy = (margin + c * cell_w + 4, top + r * line * 2 + line // 2)
                    draw.text(xy, _words(rng, 1), font=body, fill=(20, 20, 20))
            top += rows * line * 2 + line
        else:
            for _ in range(int(rng.integers(2, 6))):
                draw.text((margin, top), _words(rng, 8), font=body, fill=(15, 15, 15))
                top += int(line * 1.5)
            top += line
    return _noisy(page, rng, 4.0)


def captcha(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A click-captcha-like image: a photo background with a few large coloured characters."""
    image = photo_crops(1, size, rng)[0]
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        font = ImageFont.load_default(size=int(min(size) * rng.uniform(0.08, 0.16)))
        xy = (int(rng.integers(0, int(size[1] * 0.85))), int(rng.integers(0, int(size[0] * 0.85))))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.text(xy, str(rng.choice(list(WORD_CHARACTERS))), font=font, fill=colour)
    return image


@cache
def _prose() -> tuple[str, ...]:
    """Sentences of English prose: the docstrings of Python's own standard library."""
    import argparse
    import collections
    import csv
    import email
    import json
    import logging
    import pathlib
    import subprocess
    import threading
    import unittest

    modules = [argparse, collections, csv, email, json, logging, pathlib, subprocess]
    modules += [threading, unittest]
    found = []
    for module in modules:
        texts: list[object] = [module.__doc__]
        texts += [getattr(v, "__doc__", None) for v in vars(module).values() if callable(v)]
        for text in (t for t in texts if isinstance(t, str)):
            for sentence in " ".join(text.split()).split(". "):
                if 6 <= len(sentence.split()) <= 30 and sentence[:1].isupper():
                    found.append(sentence.rstrip(".") + ".")
    return tuple(sorted(set(found)))


def sentences(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct sentences drawn from the standard library's documentation."""
    prose = _prose()
    return [prose[int(i)] for i in rng.choice(len(prose), size=count, replace=False)]


@cache
def _faces() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.lfw_subset()[:100], dtype=np.float32)  # the face half


def face_crops(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3, 48, 48) MTCNN-normalised crops of real faces (LFW subset, jittered)."""
    faces = _faces()
    crops = []
    for _ in range(count):
        face = faces[int(rng.integers(len(faces)))] * 255.0
        image = Image.fromarray(face.astype(np.uint8)).convert("RGB")
        pad = int(rng.integers(0, 3))
        image = image.crop((pad, pad, 25 - int(rng.integers(0, 3)), 25 - pad)).resize((48, 48))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append((to_chw(image) - 127.5) / 128.0)
    return np.stack(crops).astype(np.float32)


def speech_like(seconds: float, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """Speech-like audio: voiced syllables (a wandering pitch, three formants) in words with
    pauses of background noise between them, at a random level and signal-to-noise ratio."""
    total = int(seconds * rate)
    time = np.arange(total) / rate
    voiced = np.zeros(total)
    position = int(rng.integers(0, rate // 4))
    while position < total:
        length = int(rate * rng.uniform(0.25, 0.9))
        stop = min(total, position + length)
        t = time[position:stop] - time[position]
        pitch = rng.uniform(90, 230) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
        wave = np.zeros_like(t)
        for harmonic in range(1, 30):
            frequency = harmonic * pitch.mean()
            gain = sum(np.exp(-(((frequency - f) / 120) ** 2)) for f in formants) + 0.05
            wave += gain * np.sin(harmonic * phase) / harmonic
        syllables = np.clip(np.sin(np.pi * rng.uniform(3, 6) * t) ** 2, 0, 1)
        voiced[position:stop] = wave * syllables
        position = stop + int(rate * rng.uniform(0.2, 0.8))
    voiced /= max(np.max(np.abs(voiced)), 1e-9)
    noise = rng.normal(0, 1, total) * 10 ** (-rng.uniform(10, 30) / 20)
    return ((voiced + noise) * rng.uniform(0.1, 0.6)).astype(np.float32)
