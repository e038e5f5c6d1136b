"""Subword transfer (issue 18): TransferCTCBPEModel, TransferHybridRNNTCTCBPEModel, compose, from_base's class table."""

from __future__ import annotations

import json

import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModelBPE, EncDecHybridRNNTCTCBPEModel

from nemo_tl.models import TransferCTCBPEModel, TransferCTCModel, TransferHybridRNNTCTCBPEModel
from nemo_tl.transfer import from_base, mapped_output_rows
from nemo_tl.transfer.model import transfer_class
from nemo_tl.transfer.tokens import compose_sources, model_tokens
from tests.conftest import EN_LABELS
from tests.helpers import raises_input_error, snapshot
from tests.tiny_asr import DE_TEXT, EN_TEXT, build_base, fit_steps, make_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return make_tokenizer(str(root / "en"), EN_TEXT, 40), make_tokenizer(str(root / "de"), DE_TEXT, 40)


@pytest.fixture(scope="module")
def ctc_base(tmp_path_factory, tokenizers):
    path = str(tmp_path_factory.mktemp("b") / "ctc_bpe.nemo")
    return build_base(EncDecCTCModelBPE, path, tokenizer_dir=tokenizers[0])


@pytest.fixture(scope="module")
def base(ctc_base):
    return ASRModel.restore_from(ctc_base, map_location="cpu")


def ctc_rows(model, attr="decoder"):
    conv = getattr(model, attr).decoder_layers[0]
    return conv.weight.detach()[:, :, 0], conv.bias.detach()


def test_keep_shared_copies_the_rows_of_shared_pieces(tokenizers, base):
    model = TransferCTCBPEModel.from_base(base, tokenizer_dir=tokenizers[1])
    base_tokens, tokens = model_tokens(base), model_tokens(model)
    (bw, bb), (w, b) = ctc_rows(base), ctc_rows(model)
    shared = [t for t in tokens if t in base_tokens]
    assert "▁d" in tokens and "▁d" not in base_tokens and "e" in shared  # pieces keep their '▁'
    for t in shared:
        i, j = base_tokens.index(t), tokens.index(t)
        assert torch.equal(w[j], bw[i]) and b[j] == bb[i], t
    assert torch.equal(w[-1], bw[-1]) and b[-1] == bb[-1]  # blank stays blank (the last row)
    new = [tokens.index(t) for t in model.transfer_report.new_tokens]
    assert not w[new].any() and not b[new].any()
    assert model.transfer_report.found == len(shared) and len(new) == len(tokens) - len(shared)
    assert all(torch.equal(v, base.encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())


def test_compose_starts_a_new_piece_from_the_base_pieces_that_spell_it(tokenizers, base):
    model = TransferCTCBPEModel.from_base(base, tokenizer_dir=tokenizers[1], new_label_init="compose")
    base_tokens, tokens = model_tokens(base), model_tokens(model)
    sources = compose_sources(base.tokenizer, base_tokens, tokens)
    (bw, bb), (w, b) = ctc_rows(base), ctc_rows(model)
    composed = 0
    for j, token in enumerate(tokens):
        if token in base_tokens:
            continue
        pieces = [base_tokens[i] for i in sources[j]]
        assert "▁" not in pieces and "<unk>" not in pieces
        text = token.replace("▁", "")
        if all(c in "".join(base_tokens) for c in text):  # the base can spell it: the pieces spell the text
            assert "".join(p.replace("▁", "") for p in pieces) == text, (token, pieces)
            # a word-initial piece is split with the dummy prefix, a continuation piece without
            assert pieces[0].startswith("▁") == (token.startswith("▁") and pieces[0] != text[0]), (token, pieces)
        if sources[j]:
            composed += 1
            assert torch.allclose(w[j], bw[sources[j]].mean(0)) and torch.allclose(b[j], bb[sources[j]].mean(0))
        else:
            assert not w[j].any() and b[j] == 0, token
    assert composed >= 5
    assert not w[tokens.index("ß")].any()  # the base cannot spell it: <unk> only, so zero


def test_ctc_bpe_trains_with_frozen_blocks_restores_and_transcribes(tmp_path, tokenizers, base, de_manifest):
    model = from_base(base, tokenizer_dir=tokenizers[1], freeze_encoder_blocks=2)
    assert type(model) is TransferCTCBPEModel
    frozen = snapshot(model.encoder.pre_encode), snapshot(model.encoder.layers[0])
    fit_steps(model, de_manifest, steps=2)
    for block, before in zip((model.encoder.pre_encode, model.encoder.layers[0]), frozen):
        assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    path = str(tmp_path / "de.nemo")
    model.save_to(path)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert type(restored) is TransferCTCBPEModel and len(restored.frozen_blocks) == 2
    assert transfer_class(restored) is TransferCTCBPEModel  # a transfer model can be the next base
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in model.state_dict().items())
    audio = [json.loads(line)["audio_filepath"] for line in open(de_manifest)][:2]
    assert len(restored.transcribe(audio, batch_size=2, verbose=False)) == 2


def test_hybrid_keeps_shared_rows_in_both_heads_and_trains(tmp_path, tokenizers, de_manifest):
    path = build_base(EncDecHybridRNNTCTCBPEModel, str(tmp_path / "hybrid.nemo"), tokenizer_dir=tokenizers[0])
    base = ASRModel.restore_from(path, map_location="cpu")
    model = from_base(base, tokenizer_dir=tokenizers[1], new_label_init="compose")
    assert type(model) is TransferHybridRNNTCTCBPEModel
    mapped = mapped_output_rows(base, model)
    assert {"ctc_decoder.decoder_layers.0.weight", "decoder.prediction.embed.weight"} <= {n for n, _, _ in mapped}
    params, base_params = dict(model.named_parameters()), dict(base.named_parameters())
    for name, src, dst in mapped:
        assert torch.equal(params[name].detach()[dst], base_params[name].detach()[src]), name
    fit_steps(model, de_manifest, steps=2)


# ---------------------------------------------------------------- bad input
def test_an_unsupported_class_names_the_supported_ones(base):
    class PromptedCTC(EncDecCTCModelBPE):  # a NeMo-style subclass whose heads may mean something else
        pass

    odd = PromptedCTC.__new__(PromptedCTC)
    odd.__dict__.update(base.__dict__)
    raises_input_error(lambda: from_base(odd, tokenizer_dir="x"), "cannot adapt a PromptedCTC",
                       "EncDecCTCModelBPE", "EncDecHybridRNNTCTCBPEModel", "EncDecRNNTModel")


def test_keep_shared_between_bpe_and_wpe(tmp_path, base):
    wpe = tmp_path / "wpe"
    wpe.mkdir()
    (wpe / "vocab.txt").write_text("[PAD]\n[UNK]\na\n##b\n")
    raises_input_error(lambda: TransferCTCBPEModel.from_base(base, tokenizer_dir=str(wpe), tokenizer_type="wpe"),
                       r"model\.tokenizer\.type", "bpe and the target's wpe")


def test_tokenizer_directory_missing_or_of_another_type(tmp_path, tokenizers, base):
    raises_input_error(lambda: TransferCTCBPEModel.from_base(base, tokenizer_dir=str(tmp_path / "nope")),
                       r"model\.tokenizer\.dir", "does not exist")
    raises_input_error(lambda: TransferCTCBPEModel.from_base(base), r"model\.tokenizer\.dir", "missing")
    raises_input_error(
        lambda: TransferCTCBPEModel.from_base(base, tokenizer_dir=tokenizers[1], tokenizer_type="wpe"),
        r"model\.tokenizer\.type", "holds a SentencePiece model", "type to bpe",
    )


def test_same_needs_the_same_tokenizer(tokenizers, base):
    raises_input_error(lambda: TransferCTCBPEModel.from_base(base, tokenizer_dir=tokenizers[1], vocabulary="same"),
                       r"model\.transfer\.vocabulary", "only in the config")
    model = TransferCTCBPEModel.from_base(base, tokenizer_dir=tokenizers[0], vocabulary="same")
    assert torch.equal(ctc_rows(model)[0], ctc_rows(base)[0])


def test_labels_for_a_subword_base_and_compose_for_characters(base, base_nemo):
    raises_input_error(lambda: from_base(base, labels=EN_LABELS), "labels", "tokenizer_dir=")
    raises_input_error(lambda: TransferCTCModel.from_base(base, labels=EN_LABELS), r"subword \(BPE\)")
    raises_input_error(lambda: TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, new_label_init="compose"),
                       r"model\.transfer\.new_label_init", "characters")
