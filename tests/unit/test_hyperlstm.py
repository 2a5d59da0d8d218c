"""HyperLSTM cell, LN-LSTM, and the character language-model engine."""

from __future__ import annotations

import math
import random

import pytest
import torch
from tolerance import assert_close_reordered
from torch import nn
from unit.helpers import same_trained_weights, untimed

from hypermeta.atomic import torch_save, write_json
from hypermeta.config import StrictModel
from hypermeta.data.text import UNKNOWN, Vocabulary
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.language_model import LanguageModelTrain, fit
from hypermeta.engine.text_generation import generate
from hypermeta.engine.text_scoring import bits_per_char, token_bits, unigram_bits
from hypermeta.errors import HypermetaError
from hypermeta.hyper.hyperlstm import HyperLSTM, HyperLSTMLayer
from hypermeta.methods import get_method
from hypermeta.nn.lstm import LNLSTM, CharLanguageModel
from hypermeta.plots.language_model import hyper_scales

torch.set_num_threads(1)
GPU = torch.cuda.is_available()


def torch_order(weight: torch.Tensor) -> torch.Tensor:
    """Our gate order (i, j, f, o) to torch's (i, f, g=j, o)."""
    i, j, f, o = weight.chunk(4, 0)
    return torch.cat([i, f, j, o])


def test_cell_with_scaling_frozen_at_one_equals_a_plain_lstm_cell():
    torch.manual_seed(0)
    inputs, hidden, batch = 5, 7, 3
    layer = HyperLSTMLayer(inputs, hidden, hyper_num_units=6, hyper_embedding_size=4)
    with torch.no_grad():
        layer.to_z.weight.zero_()  # z fixed at its bias: every scale 1, every shift 0
        layer.bias.normal_()
        layer.weight_h.normal_(std=0.3)
    reference = nn.LSTMCell(inputs, hidden)
    with torch.no_grad():
        reference.weight_ih.copy_(torch_order(layer.input.weight[: 4 * hidden]))
        reference.weight_hh.copy_(torch_order(layer.weight_h[: 4 * hidden]))
        forget_bias = torch.zeros(4 * hidden)
        forget_bias[2 * hidden : 3 * hidden] = 1.0  # the reference cell's forget bias of 1
        reference.bias_ih.copy_(torch_order(layer.bias + forget_bias))
        reference.bias_hh.zero_()
    x = torch.randn(6, batch, inputs)
    h, c = torch.randn(batch, hidden), torch.randn(batch, hidden)
    hyper_h, hyper_c = torch.randn(batch, 6), torch.randn(batch, 6)
    outputs, *_, scales = layer(x, h, c, hyper_h, hyper_c, keep_scales=True)
    assert scales.shape == (len(x), batch, 4 * hidden)
    assert torch.allclose(scales, torch.ones_like(scales), atol=1e-6)
    without_scales, *_, nothing = layer(x, h, c, hyper_h, hyper_c)
    assert nothing.numel() == 0 and torch.equal(without_scales, outputs)
    expected_h, expected_c = h, c
    for t in range(len(x)):
        expected_h, expected_c = reference(x[t], (expected_h, expected_c))
        assert_close_reordered(outputs[t], expected_h)


def test_scripted_and_eager_hyperlstm_agree():
    torch.manual_seed(1)
    eager = HyperLSTM(4, 8, num_layers=2, hyper_num_units=5, use_layer_norm=True)
    compiled = HyperLSTM(4, 8, num_layers=2, hyper_num_units=5, use_layer_norm=True, script=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(7, 2, 4)
    state = eager.initial_state(2, torch.device("cpu"))
    (y1, s1), (y2, s2) = eager(x, state), compiled(x, state)
    assert_close_reordered(y1, y2)
    for a, b in zip(s1, s2, strict=True):
        assert_close_reordered(a, b)


def test_gradients_reach_every_hyper_parameter():
    """At initialisation z is constant (W_z = 0, as in the paper), so only W_z and W_d
    get gradients; after one update the hyper LSTM's own weights must get them too."""
    torch.manual_seed(2)
    rnn = HyperLSTM(4, 8, hyper_num_units=5, hyper_embedding_size=3)
    x, state = torch.randn(6, 2, 4), rnn.initial_state(2, torch.device("cpu"))
    optimizer = torch.optim.SGD(rnn.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        rnn(x, state)[0].pow(2).sum().backward()
        optimizer.step()
    parameters = dict(rnn.layers[0].named_parameters())
    for name in ("hyper_weight_hh", "hyper_bias", "to_z.weight", "to_z.bias", "z_to_d"):
        grad = parameters[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def modulating_hyperlstm(recurrent_dropout: float) -> HyperLSTM:
    """A HyperLSTM whose hyper LSTM already changes the output: at initialisation z is
    constant (W_z = 0), so dropout inside the hyper LSTM would go unseen."""
    rnn = HyperLSTM(4, 8, hyper_num_units=5, recurrent_dropout=recurrent_dropout)
    with torch.no_grad():
        rnn.layers[0].to_z.weight.normal_()
        rnn.layers[0].z_to_d.normal_(std=0.3)
    return rnn


@pytest.mark.parametrize(
    "stack",
    [lambda dropout: LNLSTM(4, 8, recurrent_dropout=dropout), modulating_hyperlstm],
    ids=["ln-lstm", "hyperlstm"],
)
def test_recurrent_dropout_only_in_training(stack):
    torch.manual_seed(3)
    with_dropout = stack(0.5)
    without = stack(0.0)
    without.load_state_dict(with_dropout.state_dict())
    x = torch.randn(5, 3, 4)
    state = without.initial_state(3, torch.device("cpu"))
    with_dropout.eval()
    without.eval()
    assert torch.equal(with_dropout(x, state)[0], without(x, state)[0])
    with_dropout.train()
    assert not torch.allclose(with_dropout(x, state)[0], without(x, state)[0])
    assert not torch.allclose(with_dropout(x, state)[0], with_dropout(x, state)[0])


def char_model(method: str, vocab_size: int, **model) -> CharLanguageModel:
    spec = get_method(method)
    config: StrictModel = spec.model_config.model_validate(
        {"embedding_size": 16, "hidden_size": 32, **model}
    )
    return spec.build(config, {"vocab_size": vocab_size})


def test_uniform_model_scores_log2_of_the_vocabulary():
    vocab_size = 37
    model = char_model("hyperlstm", vocab_size, hyper_num_units=8)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    tokens = torch.randint(0, vocab_size, (503,))
    bits, real = token_bits(model, tokens, batch_size=4, seq_length=20)
    assert real.sum() == len(tokens) - 4  # every character but each stream's first
    assert bits_per_char(bits, real) == pytest.approx(math.log2(vocab_size), abs=1e-5)


def test_padding_is_neither_trained_nor_scored(tmp_path):
    """Padding (id 0) ends the last stream when B does not divide the text. A model that
    predicts id 0 almost surely pays ln(e^10 + 4) nats on each real character (ids 1-4)
    and almost nothing on padding, so counting padding would pull both bpc down."""
    vocab_size, batch_size = 5, 8
    model = char_model("lstm", vocab_size)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(torch.tensor([10.0, 0, 0, 0, 0]))
    text = torch.randint(1, vocab_size, (20 * batch_size + 5,))  # 3 padding positions
    cfg = LanguageModelTrain(epochs=1, batch_size=batch_size, seq_length=7, lr=1e-9)
    history, _ = fit(model, text, text, cfg, Checkpointer(tmp_path / "c.pt", "h"), "pad")
    real_bits = math.log2(math.exp(10.0) + vocab_size - 1)
    assert history[0]["train_bpc"] == pytest.approx(real_bits, abs=1e-4)
    assert history[0]["val_bpc"] == pytest.approx(real_bits, abs=1e-4)


def test_unknown_characters_are_counted_not_fatal():
    vocab = Vocabulary.from_text("abc ")
    encoded = vocab.encode("abcxyz☃ a")
    assert encoded.unknown == 4
    assert vocab.decode(encoded.tokens[:3]) == "abc"
    assert vocab.symbols[0] == UNKNOWN
    model = char_model("lnlstm", len(vocab))
    bits, real = token_bits(model, encoded.tokens, batch_size=2, seq_length=4)
    assert torch.isfinite(bits[real]).all()


def test_generation_with_a_fixed_seed_is_reproducible():
    vocab = Vocabulary.from_text("abcdefgh ")
    model = char_model("hyperlstm", len(vocab), hyper_num_units=8)
    first = generate(model, vocab, "ab", 40, 1.0, seed=5)
    assert first == generate(model, vocab, "ab", 40, 1.0, seed=5)
    assert first != generate(model, vocab, "ab", 40, 1.0, seed=6)
    assert first[0].startswith("ab") and len(first[0]) == 42 and first[1] == 0


def test_unknown_prime_characters_are_counted_and_reported(tmp_path, capsys):
    from hypermeta.cli import main
    from hypermeta.engine.language_model import save_model

    vocab = Vocabulary.from_text("abcdefgh ")
    model = char_model("lnlstm", len(vocab))
    text, unknown = generate(model, vocab, "aZbY", 5, 1.0, seed=0)
    assert text.startswith("aZbY") and unknown == 2
    section = {"method": "lnlstm", "model": {"embedding_size": 16, "hidden_size": 32}}
    save_model(tmp_path / "model.pt", section, vocab, model.state_dict(), [])
    argv = ["lm", "generate", "--load-model", str(tmp_path / "model.pt"), "--prime-text", "aZ"]
    assert main([*argv, "--gen-length", "5", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("aZ") and "--prime-text unknown to the model: 1 " in err


def saved_lnlstm(tmp_path, text: str = "abcdefgh \n"):
    """A small untrained LN-LSTM saved as `lm train` saves one: (its path, its vocabulary)."""
    from hypermeta.engine.language_model import save_model

    vocab = Vocabulary.from_text(text)
    section = {"method": "lnlstm", "model": {"embedding_size": 16, "hidden_size": 32}}
    save_model(
        tmp_path / "model.pt", section, vocab, char_model("lnlstm", len(vocab)).state_dict(), []
    )
    return tmp_path / "model.pt", vocab


def test_lm_eval_refuses_a_binary_file_and_warns_on_mostly_unknown_text(tmp_path, capsys):
    from hypermeta.cli import main

    model_path, _ = saved_lnlstm(tmp_path)
    binary = tmp_path / "program"
    binary.write_bytes(bytes(range(256)) * 40)  # as an executable: NULs and control bytes
    argv = ["lm", "eval", "--load-model", str(model_path), "--device", "cpu"]
    assert main([*argv, "--data-path", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"hypermeta: error: {binary} is not a text file (1040 of its 10240 bytes are control "
        "characters such as NUL); pass a plain-text file (UTF-16 text: convert it to UTF-8 "
        "first).\n"
    )
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("xyz XYZ 0123 abc\n" * 20)  # 10 of its 17 characters unknown
    assert main([*argv, "--data-path", str(foreign)]) == 0
    out, err = capsys.readouterr()
    assert "unknown to the model 200" in out
    assert err.startswith("[hypermeta] warning: 200 of the 340 characters (59%) are unknown")
    familiar = tmp_path / "familiar.txt"
    familiar.write_text("abc def\nghz\n" * 20)  # 'z' unknown: 20 of 240
    assert main([*argv, "--data-path", str(familiar)]) == 0
    assert capsys.readouterr().err == ""


def test_lm_tools_read_any_prime_bytes_and_refuse_foreign_model_files(tmp_path, capsys):
    from hypermeta.cli import main

    model_path, _ = saved_lnlstm(tmp_path)
    argv = ["lm", "generate", "--load-model", str(model_path), "--device", "cpu"]
    # A command line's bytes that are not UTF-8 ('a', 0xff) reach Python as surrogates.
    prime = b"a\xff".decode("utf-8", errors="surrogateescape")
    assert main([*argv, "--prime-text", prime, "--gen-length", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("a\ufffd") and len(out) == len("a\ufffd") + 5 + 1
    assert "--prime-text unknown to the model: 1 " in err  # the byte 0xff

    for name, content in (
        ("program", bytes(range(256)) * 4),
        ("truncated.pt", model_path.read_bytes()[:300]),
    ):
        (tmp_path / name).write_bytes(content)
        assert main([*argv[:2], "--load-model", str(tmp_path / name), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hypermeta: error: {tmp_path / name} is not a file saved by ")
        assert err.endswith("or pass --load-model a model.pt it saved.\n") and err.count("\n") == 1


class _RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_file_cannot_run_code_when_read(tmp_path):
    from hypermeta.engine.checkpoint import load_saved

    marker = tmp_path / "ran"
    torch.save(
        {"experiment": {"method": "lnlstm"}, "payload": _RunsCode(marker)}, tmp_path / "m.pt"
    )
    with pytest.raises(HypermetaError, match="is not a file saved by hypermeta"):
        load_saved(tmp_path / "m.pt")
    assert not marker.exists()


def word_salad(words: int, seed: int) -> str:
    """Random words from a small lexicon: characters within a word are predictable, so a
    model that learns must beat the unigram entropy by far."""
    lexicon = ["the", "king", "queen", "said", "to", "her", "his", "crown", "and", "of"]
    rng = random.Random(seed)
    return " ".join(rng.choice(lexicon) for _ in range(words)) + "\n"


@pytest.mark.slow
def test_a_quick_hyperlstm_run_learns_far_below_the_unigram_entropy(tmp_path):
    train_text, val_text = word_salad(6000, 0), word_salad(600, 1)
    vocab = Vocabulary.from_text(train_text)
    train, val = vocab.encode(train_text).tokens, vocab.encode(val_text).tokens
    torch.manual_seed(0)
    model = char_model("hyperlstm", len(vocab), hyper_num_units=16)
    cfg = LanguageModelTrain(epochs=2, batch_size=16, seq_length=32, lr=0.01, device="cpu")
    history, best = fit(model, train, val, cfg, Checkpointer(tmp_path / "c.pt", "h"), "toy")
    unigram = unigram_bits(train, val, len(vocab))
    # Random words from 10: about 1 bit per word boundary, ~0.5 bpc reachable; unigram ~3.5.
    assert history[-1]["val_bpc"] < unigram - 1.5, (history, unigram)
    model.load_state_dict(best)
    scales = hyper_scales(model, vocab, "the king")
    assert scales.shape == (4, 32, 8)
    assert not torch.allclose(scales, torch.ones_like(scales))  # the hypernetwork modulates


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not GPU, reason="needs a GPU"))],
)
def test_resumed_training_matches_uninterrupted_training(tmp_path, device):
    """Stopping after epoch 1 and rerunning continues exactly: weights, optimizer, the
    dropout random stream (the GPU's too) and the best-so-far come back from the checkpoint."""
    text = word_salad(800, 2)
    vocab = Vocabulary.from_text(text)
    train, val = vocab.encode(text).tokens, vocab.encode(word_salad(100, 3)).tokens
    settings = {"batch_size": 8, "seq_length": 16, "lr": 0.01, "device": device}

    def run(epochs: int, checkpoint: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        torch.manual_seed(0)
        model = char_model("lnlstm", len(vocab), use_recurrent_dropout=True, dropout=0.2)
        model.to(device)
        cfg = LanguageModelTrain(epochs=epochs, patience=5, **settings)
        history, _ = fit(model, train, val, cfg, Checkpointer(tmp_path / checkpoint, "h"), "t")
        assert len(history) == epochs
        return model.state_dict(), history

    straight, straight_history = run(2, "straight.pt")
    run(1, "resumed.pt")
    resumed, resumed_history = run(2, "resumed.pt")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    assert untimed(resumed_history) == untimed(straight_history)


def prepared_text(folder) -> None:
    """A prepared character dataset as the split stage writes one: token splits + manifest."""
    parts = {"train": word_salad(300, 7), "val": word_salad(40, 8), "test": word_salad(40, 9)}
    vocab = Vocabulary.from_text(parts["train"])
    for name, text in parts.items():
        torch_save(folder / f"{name}.pt", {"tokens": vocab.encode(text).tokens})
    write_json(
        folder / "manifest.json",
        {"vocab": vocab.symbols, "vocab_size": len(vocab),
         "unknown_characters": {name: 0 for name in parts}},
    )  # fmt: skip


def test_the_train_stage_killed_inside_an_epoch_resumes_exactly(tmp_path, monkeypatch):
    """The engine's train stage, killed inside the epoch after one without validation gain:
    the hidden state, the dropout random stream, the running sums, the decayed lr and the
    early-stopping count come back, so the saved model is the uninterrupted run's to the bit."""
    from hypermeta.config import Params
    from hypermeta.engine import StageContext, get_engine
    from hypermeta.experiments import resolve
    from hypermeta.tracking import NullTracker

    prepared_text(tmp_path / "data")
    section = {
        "method": "lnlstm",
        "dataset": "tinyshakespeare",
        "model": {"embedding_size": 8, "hidden_size": 16, "use_recurrent_dropout": True,
                  "dropout": 0.2},
        "train": {"epochs": 5, "batch_size": 4, "seq_length": 16, "lr": 0.3, "lr_decay": 0.5,
                  "checkpoint_every": 10, "device": "cpu"},
    }  # fmt: skip
    params = Params.model_validate(
        {
            "profile": "quick",
            "profiles": {"quick": "tests"},
            "data": {"datasets": {"quick": ["tinyshakespeare"]}},
            "experiments": {"lm": section},
        }
    )
    exp, engine = resolve(params, "lm"), get_engine("language_model")

    def context(name: str) -> StageContext:
        out = tmp_path / name
        return StageContext(exp, tmp_path / "data", out / "models", out, out, NullTracker())

    straight, resumed = context("straight"), context("resumed")
    engine.train(straight)
    original_save = Checkpointer.save

    def killed_after_an_epoch_without_gain(self, state):
        original_save(self, state)
        if state["stale"] and state["window"]:  # inside the epoch after it
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", killed_after_an_epoch_without_gain)
    with pytest.raises(KeyboardInterrupt):
        engine.train(resumed)
    monkeypatch.setattr(Checkpointer, "save", original_save)
    engine.train(resumed)
    expected, got = same_trained_weights(straight.model_path, resumed.model_path)
    assert got["history"][-1]["lr"] < 0.3  # decayed after the epoch without gain
    assert untimed(got["history"]) == untimed(expected["history"])


def test_lm_train_continues_with_more_epochs_and_restarts_on_an_edited_file(tmp_path, capsys):
    from hypermeta.cli import main

    data = tmp_path / "text.txt"
    data.write_text(word_salad(300, 5))
    flags = ["lm", "train", "--data-path", str(data), "--save-dir", str(tmp_path / "lm")]
    flags += ["--model", "lstm", "--hidden-size", "8", "--embedding-size", "4", "--device", "cpu"]
    flags += ["--batch-size", "4", "--seq-length", "16", "--val-split", "0.2"]
    assert main([*flags, "--epochs", "1"]) == 0
    assert main([*flags, "--epochs", "2"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    data.write_text(word_salad(300, 6))  # same path and flags, other content
    assert main([*flags, "--epochs", "2"]) == 0
    assert "starting afresh" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        ("--model lstm --use-layer-norm", "--use-layer-norm applies only to --model hyperlstm"),
        ("--model ln-lstm --use-layer-norm", "--use-layer-norm applies only to --model hyperlstm"),
        (
            "--model ln-lstm --hyper-num-units 64",
            "--hyper-num-units applies only to --model hyperlstm",
        ),
        ("--model lstm --hyper-embedding-size 8", "--hyper-embedding-size applies only to"),
        ("--model lstm --use-recurrent-dropout", "applies only to --model ln-lstm or hyperlstm"),
        ("--model hyperlstm --dropout-keep-prob 0.5", "only with --use-recurrent-dropout"),
        ("--model lstm --hyper-num-units 128 --dropout-keep-prob 0.9", None),  # the defaults
        (
            "--model hyperlstm --use-layer-norm --use-recurrent-dropout --dropout-keep-prob 0.5",
            None,
        ),
    ],
)
def test_lm_train_refuses_flags_its_model_would_ignore(flags, refusal):
    from hypermeta.cli import build_parser
    from hypermeta.lm_cli import _model_section

    args = build_parser().parse_args(["lm", "train", "--data-path", "x", *flags.split()])
    if refusal is None:
        assert _model_section(args)["hidden_size"] == 512
    else:
        with pytest.raises(HypermetaError, match=refusal):
            _model_section(args)


def fit_diverging(tmp_path, epochs: int, finite_epochs: int):
    """`fit` of a small LSTM whose outputs turn NaN after `finite_epochs` epochs."""
    text = word_salad(100, 4)
    vocab = Vocabulary.from_text(text)
    tokens = vocab.encode(text).tokens
    model = char_model("lstm", len(vocab))
    done = {"epochs": 0}

    def poison(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return output * math.nan if done["epochs"] >= finite_epochs else None

    def count(row: dict[str, float], epoch: int) -> None:  # fit's `log_metrics`
        done["epochs"] = epoch

    model.decoder.register_forward_hook(poison)
    cfg = LanguageModelTrain(epochs=epochs, batch_size=4, seq_length=16)
    return fit(model, tokens, tokens, cfg, Checkpointer(tmp_path / "c.pt", "h"), "nan", count)


def test_diverged_training_without_a_finite_epoch_names_the_fix(tmp_path):
    with pytest.raises(HypermetaError, match="diverged.*lower the learning rate"):
        fit_diverging(tmp_path, epochs=2, finite_epochs=0)


def test_diverged_training_stops_with_the_best_finite_epoch(tmp_path):
    history, best = fit_diverging(tmp_path, epochs=3, finite_epochs=1)
    assert len(history) == 1 and math.isfinite(history[0]["val_bpc"])
    assert all(torch.isfinite(weight).all() for weight in best.values())


def test_text_splits_keep_reading_order_and_ptb_spacing_is_removed():
    from hypermeta.data.text import ptb_characters, split_by_position

    parts = split_by_position("".join(chr(65 + i % 26) for i in range(200)), (0.90, 0.05, 0.05))
    assert [len(p) for p in parts.values()] == [180, 10, 10]
    assert parts["val"] == "YZABCDEFGH"  # characters 180..189, in order
    assert ptb_characters(" a e r _ b a n k \n\n n o t e s \n") == "aer_bank\nnotes\n"
