"""Sampling text from a character model: the visualize stage's samples and `lm generate`."""

from __future__ import annotations

import torch

from hypermeta.data.text import Vocabulary, from_display, to_display
from hypermeta.errors import HypermetaError
from hypermeta.nn.lstm import CharLanguageModel


@torch.no_grad()
def generate(
    model: CharLanguageModel,
    vocab: Vocabulary,
    prime: str,
    length: int,
    temperature: float,
    seed: int,
) -> tuple[str, int]:
    """`prime` followed by `length` sampled characters (the same seed gives the same text),
    as displayable text (bytes that are not UTF-8 shown as U+FFFD), and how many
    characters of `prime` the model does not know (read as the unknown symbol)."""
    if temperature <= 0:
        raise HypermetaError(f"temperature must be positive (got {temperature}); try 0.5 or 1.0.")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    primed = from_display(prime)
    context = vocab.encode(primed or "\n")
    state = model.initial_state(1, device)
    logits, state = model(context.tokens.long().view(-1, 1).to(device), state)
    sampled = []
    for _ in range(length):
        probabilities = torch.softmax(logits[-1, 0].float().cpu() / temperature, 0)
        probabilities[0] = 0.0  # never emit the unknown symbol
        token = torch.multinomial(probabilities, 1, generator=generator)
        sampled.append(token.item())
        logits, state = model(token.view(1, 1).to(device), state)
    return to_display(primed + vocab.decode(sampled)), context.unknown
