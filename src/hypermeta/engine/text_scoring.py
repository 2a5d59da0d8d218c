"""Scoring text with a character model: bits per character over B contiguous streams,
the blocks of a confidence interval, and the unigram bar a model must clear. Training
validates and evaluation scores with these, and `lm eval` too."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hypermeta.engine.device import autocast
from hypermeta.nn.lstm import CharLanguageModel

LN2 = math.log(2.0)


def streams(tokens: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """`tokens` cut into `batch_size` contiguous streams `[n, B]` (time-major), padded at
    the end, and the mask of real (unpadded) positions."""
    batch_size = max(1, min(batch_size, len(tokens) // 2))
    n = -(-len(tokens) // batch_size)
    padded = torch.zeros(n * batch_size, dtype=torch.long)
    padded[: len(tokens)] = tokens.long()
    real = torch.arange(n * batch_size) < len(tokens)
    return padded.view(batch_size, n).t(), real.view(batch_size, n).t()


@torch.no_grad()
def token_bits(
    model: CharLanguageModel, tokens: Tensor, batch_size: int, seq_length: int, amp: bool = False
) -> tuple[Tensor, Tensor]:
    """Bits of every predicted character `[n-1, B]` and which of them are real (not padding).

    Each stream's first character is context only, so len(tokens) - B are scored."""
    model.eval()
    device = next(model.parameters()).device
    data, real = streams(tokens, batch_size)
    data = data.to(device)
    bits = torch.zeros(data.shape[0] - 1, data.shape[1])
    state = model.initial_state(data.shape[1], device)
    for start in range(0, data.shape[0] - 1, seq_length):
        targets = data[start + 1 : start + 1 + seq_length]
        with autocast(device, amp):
            logits, state = model(data[start : start + len(targets)], state)
        nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        bits[start : start + len(targets)] = (nats / LN2).view_as(targets).cpu()
    return bits, real[1:]


def bits_per_char(bits: Tensor, real: Tensor) -> float:
    return (bits[real].sum() / real.sum().clamp_min(1)).item()


def block_means(bits: Tensor, real: Tensor, block_length: int) -> Tensor:
    """Mean bpc of each block of `block_length` consecutive characters of one stream."""
    n = -(-bits.shape[0] // block_length) * block_length
    pad = n - bits.shape[0]
    bits = F.pad(bits, (0, 0, 0, pad)).t().reshape(-1, block_length)
    real = F.pad(real, (0, 0, 0, pad)).t().reshape(-1, block_length).float()
    counts = real.sum(1)
    return (bits * real).sum(1)[counts > 0] / counts[counts > 0]


def unigram_bits(train: Tensor, test: Tensor, vocab_size: int) -> float:
    """bpc on `test` of the training text's character frequencies (add-one smoothed):
    the bar a model that learned anything must clear."""
    counts = torch.bincount(train.long(), minlength=vocab_size).double() + 1
    log_p = (counts / counts.sum()).log2()
    return -log_p[test.long()].mean().item()
