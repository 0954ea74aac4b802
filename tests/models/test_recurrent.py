"""Tests for textcompress.models.recurrent and textcompress.models.cnn: the word-level students."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textcompress.data import pad_arrays
from textcompress.deploy.export import export_onnx
from textcompress.deploy.inference import make_session, run_logits
from textcompress.models.encoder import load_bundle, save_bundle
from textcompress.models.cnn import ConvClassifier, ConvConfig
from textcompress.models.recurrent import RecurrentClassifier, RecurrentConfig, reverse_real_tokens

VOCAB = 40
SENTENCES = [np.array([2, 5, 9, 11, 3]), np.array([2, 7, 3]), np.array([2, 4, 4, 8, 13, 21, 30, 6, 3]),
             np.array([2, 3]), np.array([2, 17, 3])]

MODELS = {
    "bilstm-max": lambda: RecurrentClassifier(RecurrentConfig(VOCAB, 16, 8, cell="lstm")),
    "lstm-mean": lambda: RecurrentClassifier(RecurrentConfig(VOCAB, 16, 8, cell="lstm", bidirectional=False, pooling="mean")),
    "bigru-2-last-head": lambda: RecurrentClassifier(RecurrentConfig(VOCAB, 16, 8, cell="gru", num_layers=2,
                                                                     pooling="last", head_size=12)),
    "cnn": lambda: ConvClassifier(ConvConfig(VOCAB, 16, filters=6, kernel_sizes=[2, 3, 5])),
}


def build(name: str):
    torch.manual_seed(0)
    return MODELS[name]().eval()


def test_reverse_real_tokens_reverses_each_row_and_is_its_own_inverse():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    lengths = torch.tensor([3, 5])
    reversed_ = reverse_real_tokens(x, lengths)
    assert reversed_[0, :, 0].tolist() == [2, 1, 0, 3, 4]  # padding stays where it is
    assert reversed_[1, :, 0].tolist() == [9, 8, 7, 6, 5]
    assert torch.equal(reverse_real_tokens(reversed_, lengths), x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_sentence_gets_the_same_logits_alone_and_padded_in_a_batch(name):
    model = build(name)
    ids, mask = pad_arrays(SENTENCES)
    with torch.no_grad():
        batched = model(torch.from_numpy(ids), torch.from_numpy(mask))
        for row, sentence in enumerate(SENTENCES):
            alone = model(*(torch.from_numpy(a) for a in pad_arrays([sentence])))
            torch.testing.assert_close(batched[row], alone[0], atol=1e-6, rtol=0)


def test_the_backward_direction_starts_at_each_rows_last_real_token():
    """In a padded batch, the backward RNN's output at a row's first token is what it gives
    after reading that row's real tokens from last to first, and never the padding."""
    model = build("bilstm-max")
    ids, mask = (torch.from_numpy(a) for a in pad_arrays(SENTENCES))
    lengths = mask.sum(dim=1)
    x = model.word_embeddings(ids)
    layer = model.layers[0]
    with torch.no_grad():
        out = layer(x, lengths)
        for row, sentence in enumerate(SENTENCES):
            alone, _ = layer.backward_rnn(x[row : row + 1, : len(sentence)].flip(1))
            torch.testing.assert_close(out[row, 0, 8:], alone[0, -1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_matches_pytorch_and_the_bundle_reloads_the_same_model(name, tmp_path, tiny_tokenizer_file):
    model = build(name)
    save_bundle(model, tmp_path / "bundle", tiny_tokenizer_file, [0, 1])
    reloaded, labels = load_bundle(tmp_path / "bundle")
    assert type(reloaded) is type(model) and reloaded.config == model.config and labels == [0, 1]
    ids, mask = pad_arrays(SENTENCES)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        torch.testing.assert_close(reloaded(torch.from_numpy(ids), torch.from_numpy(mask)).numpy(), expected)
    export_onnx(reloaded, tmp_path / "model.onnx")
    session = make_session(tmp_path / "model.onnx")
    assert np.abs(run_logits(session, ids, mask) - expected).max() < 1e-5
    one_ids, one_mask = pad_arrays(SENTENCES[2:3])  # batch 1, as serving sends it (traced with 2)
    assert np.abs(run_logits(session, one_ids, one_mask) - expected[2:3]).max() < 1e-5


def test_unknown_architecture_in_a_bundle_names_the_fix(tmp_path, tiny_tokenizer_file):
    from textcompress.errors import TextcompressError

    save_bundle(build("cnn"), tmp_path / "bundle", tiny_tokenizer_file, [0, 1])
    config = tmp_path / "bundle" / "config.json"
    config.write_text(config.read_text().replace('"cnn"', '"transformer-xl"'))
    with pytest.raises(TextcompressError, match="unknown architecture 'transformer-xl'.*Fix"):
        load_bundle(tmp_path / "bundle")


@pytest.mark.parametrize("bad", [{"cell": "rnn"}, {"pooling": "sum"}, {"hidden_size": 0}])
def test_recurrent_config_refuses_impossible_shapes(bad):
    with pytest.raises(ValueError):
        RecurrentConfig(**{"vocab_size": VOCAB, "embedding_size": 8, "hidden_size": 8, **bad})


def test_dynamic_int8_quantizes_lstm_weights_and_reports_the_grus_it_keeps_fp32(tmp_path):
    import onnx

    from textcompress.deploy.quantization import apply_quantize

    ids, mask = pad_arrays(SENTENCES)
    args = {"mode": "dynamic", "per_channel": False, "exclude": [], "sensitivity": 0, "calibration": 8, "method": "minmax"}
    for name, kept in [("bilstm-max", {}), ("bigru-2-last-head", {"GRU": 4})]:
        model = build(name)
        export_onnx(model, tmp_path / f"{name}.onnx")
        details = apply_quantize(tmp_path / f"{name}.onnx", tmp_path / f"{name}-int8.onnx", args)
        ops = {n.op_type for n in onnx.load(str(tmp_path / f"{name}-int8.onnx")).graph.node}
        assert details.get("kept_fp32_ops", {}) == kept
        if name == "bilstm-max":
            assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
        with torch.no_grad():
            expected = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = run_logits(make_session(tmp_path / f"{name}-int8.onnx"), ids, mask)
        assert np.abs(got - expected).max() < 0.1  # int8 weights: close, not equal
