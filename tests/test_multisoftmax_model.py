"""MultiSoftmaxRNNTModel on a tiny 3-language model and tone audio: training isolation, LID, decoding, I/O."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from nemo.collections.asr.models import EncDecRNNTModel
from omegaconf import OmegaConf

from nemo_tl.compat import cuda_graphs_mode
from nemo_tl.data.synthetic import make_tone_manifest, write_manifest
from nemo_tl.decoding.lid_free import early_stopping
from nemo_tl.decoding.multilingual_eval import (
    decode_all_languages,
    evaluate,
    evaluate_modes,
    format_table,
    language_cers,
    language_wers,
    plot_sweep,
    sweep,
    werr,
)
from nemo_tl.errors import InputError
from nemo_tl.losses.lid import frame_lid_loss
from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from tests.conftest import CONF
from tests.helpers import cpu_trainer, snapshot

LANGS = {"en": list(" abcdefgh"), "ru": list(" абвгдеж"), "hi": list(" कखगघचछ")}
TEXTS = {"en": ["abc", "bad", "cafe", "head"], "ru": ["абв", "где", "жаба", "вед"], "hi": ["कख", "गघ", "चछ", "कग"]}


pytestmark = pytest.mark.usefixtures("single_thread")


def ms_cfg(encoder: str = "conformer", **overrides):
    """conf/multisoftmax_rnnt.yaml with the 3 tiny languages, a tiny encoder and small RNN-T sizes.

    ``encoder``: "conformer" (the default encoder, shrunk) or "batchnorm" (a tiny QuartzNet).
    """
    cfg = OmegaConf.load(os.path.join(CONF, "multisoftmax_rnnt.yaml")).model
    tiny = OmegaConf.load(os.path.join(CONF, "quartznet_tiny.yaml")).model
    cfg.languages = {lang: {"labels": labels} for lang, labels in LANGS.items()}
    cfg.preprocessor.features = 40
    cfg.spec_augment = None
    if encoder == "batchnorm":
        cfg.encoder = tiny.encoder
    else:  # the default ConformerEncoder (LayerNorm convolutions), shrunk
        cfg.encoder.update(n_layers=1, n_heads=2, subsampling_factor=2, conv_kernel_size=5, dropout=0.0,
                           dropout_pre_encoder=0.0, dropout_att=0.0)
    cfg.model_defaults = {"enc_hidden": 128 if encoder == "batchnorm" else 64, "pred_hidden": 32, "joint_hidden": 32}
    cfg.decoder.prednet.dropout = 0.0
    cfg.joint.jointnet.dropout = 0.0
    cfg.decoding.greedy.max_symbols = 3  # untrained models emit many symbols per frame: keep decoding short
    for ds in (cfg.train_ds, cfg.validation_ds):
        ds.batch_size, ds.num_workers = 4, 0
    cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ms_data"))
    return {
        lang: make_tone_manifest(d, TEXTS[lang], name=lang, lang=lang, seed=10 * i) for i, lang in enumerate(LANGS)
    }


def files(manifest, n=2):
    with open(manifest, encoding="utf-8") as f:
        return [json.loads(line)["audio_filepath"] for line in f][:n]


def lang_batch(model, manifest):
    """All utterances of one manifest as one collated batch (signal, len, tokens, len, lang_ids)."""
    ds = model._manifest_dataset(OmegaConf.create({"manifest_filepath": manifest, "sample_rate": 16000}))
    return ds.collate_fn([ds[i] for i in range(len(ds))])


def lang_batch_of_files(model, paths):
    """The audio of ``paths`` as one padded batch (signal, lengths), as transcribe() loads it."""
    import soundfile as sf

    waves = [torch.as_tensor(sf.read(p, dtype="float32")[0]) for p in paths]
    lengths = torch.tensor([len(w) for w in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def specific_params(model, lang):
    """Parameters that must belong to ``lang`` alone, found by name (embedding, joint; LSP: LSTM)."""
    prefixes = [f"decoder.decoders.{lang}.prediction.embed.", f"joint.joints.{lang}."]
    if model.cfg.language_specific_prediction:
        prefixes.append(f"decoder.decoders.{lang}.")
    return {n: p for n, p in model.named_parameters(remove_duplicate=False) if n.startswith(tuple(prefixes))}


def test_each_language_has_its_own_joint_and_softmax(manifests):
    model = MultiSoftmaxRNNTModel(ms_cfg())
    signal, signal_len, tokens, tokens_len, lang_ids = lang_batch(model, manifests["ru"])
    encoded, encoded_len = model.encode(signal, signal_len)
    batch, _, frames = encoded.shape
    for lang, labels in LANGS.items():
        g, _, _ = model.decoder(targets=tokens, target_length=tokens_len, lang=lang)
        assert g.shape == (batch, 32, tokens.shape[1] + 1)
        out = model.joint(encoder_outputs=encoded, decoder_outputs=g, lang=lang)
        assert out.shape == (batch, frames, tokens.shape[1] + 1, len(labels) + 1)  # labels + blank
        assert model.decoder[lang].prediction["embed"].num_embeddings == len(labels) + 1
    assert lang_ids.tolist() == [1] * batch
    # Shared prediction network: one LSTM object in every language's decoder.
    lstm = {id(model.decoder[lang].prediction["dec_rnn"]) for lang in LANGS}
    assert len(lstm) == 1
    lsp = MultiSoftmaxRNNTModel(ms_cfg(language_specific_prediction=True))
    assert len({id(lsp.decoder[lang].prediction["dec_rnn"]) for lang in LANGS}) == 3
    assert model.lid_head(encoded).shape == (batch, frames, 3)


@pytest.mark.parametrize("optim,lsp", [("novograd", False), ("adamw", True)])
def test_batch_updates_shared_and_its_language_only(manifests, optim, lsp):
    model = MultiSoftmaxRNNTModel(ms_cfg(language_specific_prediction=lsp))
    model.train()
    optimizer, _ = model.setup_optimization(OmegaConf.create({"name": optim, "lr": 0.05, "weight_decay": 0.1}))

    def step(lang):
        optimizer.zero_grad(set_to_none=True)
        loss, _, _, _ = model._losses(lang_batch(model, manifests[lang]))
        loss.backward()
        optimizer.step()

    step("en")  # en's parameters now have momentum / moment estimates
    before_params = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    optimizer.zero_grad(set_to_none=True)
    loss, _, _, _ = model._losses(lang_batch(model, manifests["ru"]))
    loss.backward()
    for lang in ("en", "hi"):
        assert all(p.grad is None for p in specific_params(model, lang).values()), lang
    assert all(p.grad is not None for p in specific_params(model, "ru").values())
    optimizer.step()

    for lang in ("en", "hi"):  # no gradient, no momentum, no weight decay: bit-identical
        for name, p in specific_params(model, lang).items():
            assert torch.equal(p.detach(), before_params[name]), name
    assert all(not torch.equal(p.detach(), before_params[n]) for n, p in specific_params(model, "ru").items())
    shared = {n: p for n, p in model.named_parameters() if n.startswith(("encoder.", "lid_head."))}
    assert all(not torch.equal(p.detach(), before_params[n]) for n, p in shared.items() if p.dim() > 1)


def test_lid_loss_reaches_encoder_and_head_only(manifests):
    model = MultiSoftmaxRNNTModel(ms_cfg())
    signal, signal_len, _, _, lang_ids = lang_batch(model, manifests["hi"])
    encoded, encoded_len = model.encode(signal, signal_len)
    frame_lid_loss(model.lid_head(encoded), encoded_len, lang_ids).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.joint.parameters())
    assert all(p.grad is not None for p in model.lid_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    # Padded frames (beyond each encoder length) do not count.
    assert int(encoded_len.min()) < encoded.shape[-1]
    loss, parts, _, _ = model._losses(lang_batch(model, manifests["hi"]))
    assert loss.item() == pytest.approx((parts["rnnt_loss"] + model.cfg.lid.weight * parts["lid_loss"]).item())


@pytest.mark.parametrize("lsp", [False, True])
def test_lid_free_decoding_equals_per_language_decoding(manifests, lsp):
    model = MultiSoftmaxRNNTModel(ms_cfg(language_specific_prediction=lsp))
    model.eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # Shared LSTM: every language decoded in one batched NeMo decoding; LSP: one decoder after another.
    assert (model._stacked_decoding() is None) == lsp
    audio = [f for lang in LANGS for f in files(manifests[lang])]
    free = model.transcribe(audio, batch_size=3, verbose=False, min_frames=math.inf)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # training can go on
    known = {lang: model.transcribe(audio, batch_size=3, verbose=False, lang=lang) for lang in LANGS}
    for i, h in enumerate(free):
        assert set(h.lang_hypotheses) == set(LANGS)
        for lang in LANGS:
            assert h.lang_hypotheses[lang] == known[lang][i].text
            assert h.lang_scores[lang] == pytest.approx(float(known[lang][i].score), abs=1e-4)
        assert torch.equal(torch.as_tensor(h.y_sequence), torch.as_tensor(known[h.lang][i].y_sequence))
        best = max(h.lang_posteriors, key=h.lang_posteriors.get)
        assert h.lang == best and h.text == known[best][i].text
        assert h.t_avg == 3.0
        assert sum(h.lang_posteriors.values()) == pytest.approx(1.0)
        assert known["ru"][i].lang == "ru" and known["ru"][i].t_avg == 1.0
    # Early stopping on: the answer is the known-language decoding of a language still on.
    stopped = model.transcribe(audio, batch_size=3, verbose=False, min_frames=0, threshold=0.0)
    for i, h in enumerate(stopped):
        assert h.lang in h.lang_hypotheses and h.text == known[h.lang][i].text
        assert 0.0 < h.t_avg < 3.0
    # Batched: a decoder switched off at t_l^off decodes only its first t_l^off frames.
    if not lsp:
        seen = []
        stacked = model._stacked_decoding()
        decode = stacked.decoding.rnnt_decoder_predictions_tensor

        def spy(encoded, lengths, **kwargs):
            seen.append(lengths.clone())
            return decode(encoded, lengths, **kwargs)

        stacked.decoding.rnnt_decoder_predictions_tensor = spy
        again = model.transcribe(audio[:3], batch_size=3, verbose=False, min_frames=0, threshold=0.0)
        lengths = seen[0].view(len(LANGS), 3).t()  # (utterance, language)
        batch = lang_batch_of_files(model, audio[:3])
        encoded, encoded_len = model.encode(batch[0], batch[1])
        t_off, active, _ = early_stopping(model.lid_log_posteriors(encoded), encoded_len, min_frames=0, threshold=0.0)
        for i, h in enumerate(again):
            for j, lang in enumerate(LANGS):
                runs = bool(active[i, j]) or lang == h.lang
                assert int(lengths[i, j]) == (int(encoded_len[i]) if runs else int(t_off[i, j]))
        assert (lengths < encoded_len.view(-1, 1)).any()
    # A language per file.
    per_file = model.transcribe(audio[:3], batch_size=2, verbose=False, lang=["hi", "en", "ru"])
    assert [h.text for h in per_file] == [known[lang][i].text for i, lang in enumerate(["hi", "en", "ru"])]


def graph_modes(model) -> list:
    """The CUDA-graph mode of every NeMo decoding computer the model holds (None: graphs off)."""
    return [cuda_graphs_mode(d.decoding) for d in model._decodings()]


@pytest.mark.parametrize("architecture", ["multisoftmax", "vanilla"])
def test_every_decoder_avoids_full_graphs_through_nemo_hooks(manifests, architecture, monkeypatch):
    """NeMo's full-graph decoder crashes when two decoders replay in turn: every decoder uses no_while_loops."""
    from nemo.collections.asr.parts.submodules.transducer_decoding import label_looping_base

    # Let NeMo pick full graphs as it does on a GPU whose driver has conditional nodes.
    monkeypatch.setattr(label_looping_base, "check_cuda_python_cuda_graphs_conditional_nodes_supported", lambda: None)
    model = MultiSoftmaxRNNTModel(ms_cfg(architecture=architecture))
    model.eval()
    model.transcribe(files(manifests["en"], 1), verbose=False)  # builds the batched LID-free decoding
    expected = 4 if architecture == "multisoftmax" else 1  # 3 languages + the batched one, or the union one
    modes = graph_modes(model)
    assert len(modes) == expected and set(modes) == {"no_while_loops"}
    # NeMo's hooks: off for training, on again (re-initialized) for validation, on every decoder.
    model.on_train_epoch_start()
    assert set(graph_modes(model)) == {None}
    model.on_validation_epoch_start()
    assert set(graph_modes(model)) == {"no_while_loops"}
    # Asked for in the config, full graphs stay; graphs off in NeMo's decoding config stay off.
    full = MultiSoftmaxRNNTModel(ms_cfg(architecture=architecture, cuda_graphs_mode="full_graph"))
    assert set(graph_modes(full)) == {"full_graph"}
    off = MultiSoftmaxRNNTModel(ms_cfg(architecture=architecture, decoding={"greedy": {"use_cuda_graph_decoder": False}}))
    off.maybe_enable_cuda_graphs(force_reinit=True)
    assert set(graph_modes(off)) == {None}


def test_frame_looping_decoders_decode_alike_and_loop_without_conditional_graphs(manifests):
    """NeMo's frame-looping greedy_batch (``loop_labels: false``): the batched LID-free decoder follows it
    and gives each language's own texts; NeMo's frame-looping graph (conditional nodes) is not kept."""
    frames = MultiSoftmaxRNNTModel(ms_cfg(decoding={"greedy": {"loop_labels": False}}))
    labels = MultiSoftmaxRNNTModel(ms_cfg())
    labels.load_state_dict(frames.state_dict())
    audio = [f for lang in LANGS for f in files(manifests[lang], 1)]
    for model in (frames, labels):
        model.eval()
    stacked = frames._stacked_decoding()
    assert stacked is not None and stacked.decoding.decoding.loop_labels is False
    free = frames.transcribe(audio, batch_size=3, verbose=False, min_frames=math.inf)
    for lang in LANGS:
        by_labels = [h.text for h in labels.transcribe(audio, batch_size=3, verbose=False, lang=lang)]
        assert [h.lang_hypotheses[lang] for h in free] == by_labels
    # As NeMo builds it on a GPU with conditional nodes: the graph decoder in place of the Python loop.
    for decoding in frames._decodings():
        greedy = decoding.decoding
        greedy.use_cuda_graph_decoder, greedy._greedy_decode = True, "conditional-node graph"
        frames._limit_graphs_mode(decoding)
        assert greedy._greedy_decode == greedy._greedy_decode_blank_as_pad_loop_frames
    full = MultiSoftmaxRNNTModel(ms_cfg(decoding={"greedy": {"loop_labels": False}}, cuda_graphs_mode="full_graph"))
    greedy = full.lang_decoding["en"].decoding
    greedy.use_cuda_graph_decoder, greedy._greedy_decode = True, "conditional-node graph"
    full._limit_graphs_mode(full.lang_decoding["en"])
    assert greedy._greedy_decode == "conditional-node graph"


@pytest.mark.parametrize("architecture", ["multisoftmax", "vanilla"])
def test_half_precision_encoder_output_decodes_as_full_precision(manifests, architecture, monkeypatch):
    """A BatchNorm encoder under bf16 autocast returns bf16; NeMo's CUDA-graph decoder runs without autocast."""
    from nemo_tl.models.multisoftmax_rnnt import MultilingualTranscribeConfig

    model = MultiSoftmaxRNNTModel(ms_cfg("batchnorm", architecture=architecture))
    model.eval()
    with torch.inference_mode():
        encoded, encoded_len = model.encode(*lang_batch_of_files(model, files(manifests["ru"], 3)))
        half = encoded.to(torch.bfloat16)
        for languages in (None, "ru"):  # LID-free (batched decoder) and known language
            trcfg = MultilingualTranscribeConfig(batch_size=3, return_hypotheses=True)
            trcfg.languages = languages
            decode = model._transcribe_output_processing
            ref = decode({"encoded": half.float(), "encoded_len": encoded_len, "lang_ids": None}, trcfg)
            got = decode({"encoded": half, "encoded_len": encoded_len, "lang_ids": None}, trcfg)
            assert [h.text for h in got] == [h.text for h in ref] and [h.lang for h in got] == [h.lang for h in ref]
    # Validation WER decodes the encoder output too: under a bf16-mixed Trainer it gets it in fp32.
    # The prediction LSTM runs in fp32 here: oneDNN has no bf16 LSTM on CPUs without bf16 instructions
    # (it is the encoder's output dtype that this test is about).
    lstm_forward = torch.nn.LSTM.forward

    def fp32_lstm(self, input, hx=None):
        with torch.autocast("cpu", enabled=False):
            return lstm_forward(self, input.float(), None if hx is None else tuple(h.float() for h in hx))

    monkeypatch.setattr(torch.nn.LSTM, "forward", fp32_lstm)
    seen = []
    for wer in ([model.wer] if architecture == "vanilla" else model.lang_wer.values()):
        wer.update = lambda *a, _update=wer.update, **k: seen.append(k["predictions"].dtype) or _update(*a, **k)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encode(*lang_batch(model, manifests["ru"])[:2])[0].dtype == torch.bfloat16
        assert math.isfinite(float(model.validation_pass(lang_batch(model, manifests["ru"]), 0)["val_wer"]))
    assert seen == [torch.float32]


def test_lid_free_without_lid_head_picks_the_best_scoring_decoder(manifests):
    model = MultiSoftmaxRNNTModel(ms_cfg(lid={"enabled": False}))
    model.eval()
    assert model.lid_head is None
    for h in model.transcribe(files(manifests["hi"], 2), verbose=False):
        assert h.lang_posteriors is None and h.t_avg == 3.0
        assert set(h.lang_scores) == set(LANGS)
        assert h.lang == max(h.lang_scores, key=h.lang_scores.get) and h.text == h.lang_hypotheses[h.lang]


def test_full_model_nemo_round_trip(manifests, tmp_path):
    model = MultiSoftmaxRNNTModel(ms_cfg(language_specific_prediction=True))
    model.eval()
    path = str(tmp_path / "ms.nemo")
    model.save_to(path)
    restored = MultiSoftmaxRNNTModel.restore_from(path, map_location="cpu")
    restored.eval()
    assert restored.languages == list(LANGS)
    a, b = snapshot(model), snapshot(restored)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    audio = files(manifests["hi"], 2) + files(manifests["en"], 1)
    before, after = model.transcribe(audio, verbose=False), restored.transcribe(audio, verbose=False)
    assert [(h.text, h.lang, h.t_avg) for h in before] == [(h.text, h.lang, h.t_avg) for h in after]


def test_extracted_language_is_plain_nemo_and_fine_tunes_without_nemo_tl(manifests, tmp_path):
    model = MultiSoftmaxRNNTModel(ms_cfg())
    model.eval()
    mono = model.extract_language("ru")
    assert type(mono) is EncDecRNNTModel and list(mono.cfg.labels) == LANGS["ru"]
    path = str(tmp_path / "ru.nemo")
    mono.save_to(path)
    audio = files(manifests["ru"], 2)
    expected = [h.text for h in model.transcribe(audio, batch_size=1, verbose=False, lang="ru")]
    code = (
        "import json, sys\n"
        "import lightning.pytorch as pl, torch\n"
        "from nemo.collections.asr.models import ASRModel\n"
        "m = ASRModel.restore_from(sys.argv[1], map_location='cpu')\n"
        "m.eval()\n"
        "texts = [h.text for h in m.transcribe(json.loads(sys.argv[2]), batch_size=1, use_lhotse=False, verbose=False)]\n"
        "m.setup_training_data({'manifest_filepath': sys.argv[3], 'sample_rate': 16000, 'labels': list(m.cfg.labels),\n"
        "    'batch_size': 4, 'shuffle': False, 'num_workers': 0, 'parser': 'base'})\n"
        "before = m.joint.joint_net[-1].weight.detach().clone()\n"
        "t = pl.Trainer(max_steps=1, accelerator='cpu', logger=False, enable_checkpointing=False,\n"
        "    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)\n"
        "m.set_trainer(t); t.fit(m)\n"
        "print('RESULT', json.dumps({'class': type(m).__name__, 'texts': texts, 'nemo_tl': 'nemo_tl' in sys.modules,\n"
        "    'moved': not torch.equal(before, m.joint.joint_net[-1].weight.detach())}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", code, path, json.dumps(audio), manifests["ru"]],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, (run.stdout + run.stderr)[-3000:]
    result = json.loads(line[len("RESULT ") :])
    assert result == {"class": "EncDecRNNTModel", "texts": expected, "nemo_tl": False, "moved": True}


def test_vanilla_and_onehot_baselines(manifests):
    vanilla = MultiSoftmaxRNNTModel(ms_cfg(architecture="vanilla"))
    union = [c for labels in LANGS.values() for c in labels if c != " "]
    assert vanilla.joint.num_classes_with_blank == len(union) + 2  # + space + blank
    batch = lang_batch(vanilla, manifests["hi"])
    assert batch[2].max() >= len(LANGS["en"])  # hi tokens are union ids
    loss, _, _, _ = vanilla._losses(batch)
    assert torch.isfinite(loss)
    hyp = vanilla.transcribe(files(manifests["hi"], 1), verbose=False)[0]
    assert hyp.lang in LANGS and hyp.t_avg == 1.0
    mono = vanilla.extract_language("en")
    assert mono.joint.num_classes_with_blank == len(LANGS["en"]) + 1

    onehot = MultiSoftmaxRNNTModel(ms_cfg(architecture="onehot", lid={"enabled": False}))
    assert onehot.cfg.encoder.feat_in == 40 + 3 and onehot.lid_head is None
    signal, signal_len, tokens, tokens_len, lang_ids = lang_batch(onehot, manifests["ru"])
    enc_ru, _ = onehot.encode(signal, signal_len, lang_ids)
    enc_en, _ = onehot.encode(signal, signal_len, torch.zeros_like(lang_ids))
    assert not torch.allclose(enc_ru, enc_en)  # the one-hot reaches the encoder
    assert onehot.transcribe(files(manifests["ru"], 1), lang="ru", verbose=False)[0].lang == "ru"
    with pytest.raises(InputError, match="lang"):
        onehot.transcribe(files(manifests["ru"], 1), verbose=False)


def test_hydra_baseline_configs_differ_only_in_architecture():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base=None):
        ms, van, one = (compose(config_name=n) for n in ("multisoftmax_rnnt", "vanilla_rnnt", "onehot_rnnt"))
    assert (ms.model.architecture, van.model.architecture, one.model.architecture) == (
        "multisoftmax",
        "vanilla",
        "onehot",
    )
    assert van.model.languages == ms.model.languages and van.model.train_ds == ms.model.train_ds
    assert ms.model.train_ds.mixing == {"per_batch": False, "weights": "hours"}


def test_multilingual_metrics_exact():
    wers = language_wers(["a b", "c", "x y z"], ["a b", "c d", "x y"], ["en", "en", "hi"])
    assert wers["en"] == (pytest.approx(100 / 4), 4)  # one deletion in 4 words
    assert wers["hi"] == (pytest.approx(50.0), 2)  # one insertion in 2 words
    assert wers["avg"] == (pytest.approx(100 * 2 / 6), 6)  # word-weighted: (1 + 1) / (4 + 2)
    cers = language_cers(["a b", "c", "x y z"], ["a b", "c d", "x y"], ["en", "en", "hi"])
    assert cers["en"] == (pytest.approx(100 * 2 / 6), 6)  # "c d" -> "c": 2 of 6 characters deleted
    assert cers["hi"] == (pytest.approx(100 * 2 / 3), 3)  # "x y" -> "x y z": 2 insertions in 3 characters
    assert cers["avg"] == (pytest.approx(100 * 4 / 9), 9)  # character-weighted: (2 + 2) / (6 + 3)
    assert werr(22.86, 23.97) == pytest.approx(4.63, abs=0.01)  # Joshi et al. Table 2, multi-softmax
    assert werr(32.45, 23.97) < 0


def test_evaluation_modes_and_sweep(manifests, tmp_path):
    model = MultiSoftmaxRNNTModel(ms_cfg())
    model.eval()
    sets = list(manifests.values())
    rows = {mode: evaluate(model, sets, mode, batch_size=6) for mode in ("known", "lid_free", "oracle")}
    assert rows["known"].wers == rows["oracle"].wers  # independent decoders: oracle = known language
    assert rows["known"].cers == rows["oracle"].cers
    for r in rows.values():  # CER beside WER in every mode, per language and character-weighted
        assert r.cers == language_cers(r.hyps, r.refs, r.langs) and set(r.cers) == {"en", "ru", "hi", "avg"}
    assert rows["known"].t_avg == 1.0 and rows["oracle"].t_avg == 3.0
    assert 0 <= rows["lid_free"].lid_accuracy <= 100
    lid_free = rows["lid_free"]
    expected = 100 * sum(p == t for p, t in zip(lid_free.predicted, lid_free.langs)) / len(lid_free.langs)
    assert lid_free.lid_accuracy == pytest.approx(expected)
    table = format_table(rows, model.languages, baseline=rows["known"])
    assert table.splitlines()[0].split("\t") == [
        "model", "en", "ru", "hi", "Avg.", "en CER", "ru CER", "hi CER", "Avg. CER", "WERR", "CERR", "LID acc", "T_avg"
    ]
    known = table.splitlines()[1].split("\t")
    assert known[8] == f"{rows['known'].cers['avg'][0]:.2f}" and known[10] == "0.00"  # CERR against itself
    settings = [(math.inf, math.inf), (0, 0.0), (2, 0.05), (5, 0.5)]
    points = sweep(model, sets, settings, batch_size=6)
    assert points[0]["t_avg"] == 3.0 and 1.0 <= points[1]["t_avg"] < 3.0  # at least one decoder stays on
    # One decoding serves the whole sweep: every point is what decoding at that (τ, s_th) gives.
    for (tau, s_th), point in zip(settings, points):
        decoded = evaluate(model, sets, "lid_free", batch_size=6, min_frames=tau, threshold=s_th)
        assert point == {"tau": tau, "s_th": s_th, "wer": decoded.wers["avg"][0], "cer": decoded.cers["avg"][0],
                         "t_avg": pytest.approx(decoded.t_avg), "lid_accuracy": decoded.lid_accuracy}
    assert len({p["t_avg"] for p in points}) >= 3  # the settings switch decoders off differently
    assert len({p["lid_accuracy"] for p in points}) >= 2 and len({p["cer"] for p in points}) >= 2  # other choices
    every = decode_all_languages(model, sets, batch_size=6)  # the one decoding, kept
    assert sweep(model, every, settings) == points
    assert every.oracle().wers == rows["oracle"].wers and every.oracle().cers == rows["oracle"].cers
    lines = [json.loads(x) for x in open(every.write_jsonl(str(tmp_path / "outputs.jsonl")), encoding="utf-8")]
    assert [x["lang"] for x in lines] == rows["oracle"].langs and [x["text"] for x in lines] == rows["oracle"].refs
    assert [x["hypotheses"][x["lang"]] for x in lines] == rows["oracle"].hyps
    assert all(set(x["hypotheses"]) == set(x["scores"]) == set(x["lid_posteriors"]) == set(LANGS) for x in lines)
    with pytest.raises(InputError, match="multi-softmax model with a LID head"):
        decode_all_languages(MultiSoftmaxRNNTModel(ms_cfg(architecture="vanilla")), sets)
    found, kept = evaluate_modes(model, sets, ("known", "lid_free", "oracle"), batch_size=6)
    assert kept is not None and {m: (r.wers, r.cers, r.lid_accuracy, r.t_avg) for m, r in found.items()} == {
        m: (r.wers, r.cers, r.lid_accuracy, pytest.approx(r.t_avg)) for m, r in rows.items()}
    assert evaluate_modes(model, sets, ("known",), batch_size=6)[1] is None  # nothing LID-free asked
    png = plot_sweep(points, str(tmp_path / "sweep.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


class _LanguagesSeen(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(sorted(set(batch.lang_ids.tolist())))


@pytest.mark.parametrize("architecture", ["multisoftmax", "onehot"])
def test_lightning_fit_with_one_language_per_batch(manifests, architecture):
    model = MultiSoftmaxRNNTModel(ms_cfg(architecture=architecture))
    seen = _LanguagesSeen()
    trainer = cpu_trainer(3, callbacks=[seen], limit_val_batches=1)
    model.set_trainer(trainer)
    train = OmegaConf.merge(model.cfg.train_ds, {"manifest_filepath": list(manifests.values()), "mixing": {"per_batch": True}})
    model.setup_training_data(train)
    model.setup_multiple_validation_data(
        OmegaConf.merge(model.cfg.validation_ds, {"manifest_filepath": [manifests["en"], manifests["hi"]]})
    )
    before = snapshot(model.encoder)
    trainer.fit(model)
    assert len(seen.seen) == 3 and all(len(s) == 1 for s in seen.seen)
    assert any(not torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert "val_wer" in trainer.callback_metrics


class _BatchNormModes(pl.Callback):
    """After each training step: whether the encoder's BatchNorm layers ran in training mode, and their running mean."""

    def __init__(self):
        self.training, self.means = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        norms = [m for m in pl_module.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        self.training.append(all(m.training for m in norms))
        self.means.append(norms[0].running_mean.clone())


def test_batch_norm_statistics_freeze_after_n_steps_and_warning(manifests, monkeypatch):
    from nemo.utils import logging

    logged = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args, **kw: logged.append(msg))
    train = {"manifest_filepath": list(manifests.values()), "mixing": {"per_batch": True, "weights": "count"}}

    def fit(freeze_after):
        logged.clear()
        model = MultiSoftmaxRNNTModel(ms_cfg("batchnorm", freeze_batch_norm_after=freeze_after))
        modes = _BatchNormModes()
        trainer = cpu_trainer(4, callbacks=[modes])
        model.set_trainer(trainer)
        model.setup_training_data(OmegaConf.merge(model.cfg.train_ds, train))
        trainer.fit(model)
        return model, modes

    # Without freezing: BatchNorm keeps batch statistics, and the user is told why that hurts the LID head.
    _, modes = fit(None)
    assert modes.training == [True] * 4
    assert any("BatchNorm1d" in m and "freeze_batch_norm_after" in m for m in logged)
    # Frozen from step 2 on: eval mode (running statistics no longer move), affine weights still train.
    model, modes = fit(2)
    assert modes.training == [True, True, False, False]
    assert not torch.equal(modes.means[0], modes.means[1])
    assert torch.equal(modes.means[1], modes.means[2]) and torch.equal(modes.means[2], modes.means[3])
    assert not any("BatchNorm1d" in m for m in logged)
    # The default encoder has no BatchNorm: no warning.
    logged.clear()
    model = MultiSoftmaxRNNTModel(ms_cfg())
    model.set_trainer(cpu_trainer(1))
    model.setup_training_data(OmegaConf.merge(model.cfg.train_ds, train))
    model.trainer.fit(model)
    assert not any("BatchNorm" in m for m in logged)


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"lang": None}, r"bad\.json:2.*lang"),
        ({"lang": "fr"}, r"bad\.json:2.*'fr'"),
        ({"text": "кa"}, r"bad\.json:2.*'a'"),  # 'a' is an English label, not a Russian one
    ],
)
def test_bad_manifest_lines_stop_before_training(manifests, tmp_path, entry, match):
    with open(manifests["ru"], encoding="utf-8") as f:
        good = json.loads(f.readline())
    bad = {**good, **entry}
    if bad["lang"] is None:
        del bad["lang"]
    path = write_manifest(str(tmp_path / "bad.json"), [good, bad])
    model = MultiSoftmaxRNNTModel(ms_cfg())
    with pytest.raises(InputError, match=match):
        model.setup_training_data(OmegaConf.merge(model.cfg.train_ds, {"manifest_filepath": [path]}))


@pytest.mark.parametrize(
    "languages,match",
    [
        ({"en": {"labels": list(" ab")}, "ru": {"labels": []}}, r"model\.languages\.ru\.labels.*empty"),
        ([{"name": "en", "labels": list(" ab")}, {"name": "en", "labels": list(" cd")}], r"'en' is given twice"),
        ({"en": {"labels": list(" aab")}}, r"model\.languages\.en\.labels.*'a'"),
        ({}, r"model\.languages"),
    ],
)
def test_bad_language_configs(languages, match):
    cfg = ms_cfg()
    cfg.languages = languages
    with pytest.raises(InputError, match=match):
        MultiSoftmaxRNNTModel(cfg)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"languages": {"en": {"labels": 5}}}, r"model\.languages\.en\.labels"),
        ({"lid": {"enabled": True, "weight": "high"}}, r"model\.lid\.weight"),
        ({"lid": {"enabled": True, "wieght": 1.0}}, r"model\.lid\.wieght"),
        ({"lid_free": {"min_frames": -1, "threshold": 0.5}}, r"model\.lid_free\.min_frames"),
        ({"freeze_batch_norm_after": -3}, r"model\.freeze_batch_norm_after"),
        ({"freeze_batch_norm_after": "soon"}, r"model\.freeze_batch_norm_after"),
        ({"cuda_graphs_mode": "always"}, r"model\.cuda_graphs_mode"),
    ],
)
def test_bad_lid_and_label_values(changes, match):
    cfg = ms_cfg()
    for key, value in changes.items():
        cfg[key] = value
    with pytest.raises(InputError, match=match):
        MultiSoftmaxRNNTModel(cfg)


def test_bad_architecture_and_transcribe_languages(manifests):
    with pytest.raises(InputError, match="model.architecture"):
        MultiSoftmaxRNNTModel(ms_cfg(architecture="mixture"))
    with pytest.raises(InputError, match="model.language_specific_prediction"):
        MultiSoftmaxRNNTModel(ms_cfg(architecture="vanilla", language_specific_prediction=True))
    model = MultiSoftmaxRNNTModel(ms_cfg())
    with pytest.raises(InputError, match="unknown language"):
        model.transcribe(files(manifests["en"], 1), lang="fr", verbose=False)
    with pytest.raises(InputError, match="2 languages for 1 files"):
        model.transcribe(files(manifests["en"], 1), lang=["en", "ru"], verbose=False)
    with pytest.raises(InputError, match=r"transcribe\(threshold=\.\.\.\): must be a number ≥ 0"):
        model.transcribe(files(manifests["en"], 1), threshold=-0.5, verbose=False)
    with pytest.raises(InputError, match="unknown language"):
        model.extract_language("fr")


# ---- NeMo's fused joint (joint.fuse_loss_wer) ---------------------------------------------------

FUSED = {"joint": {"fuse_loss_wer": True, "fused_batch_size": 3}}


def mixed_batch(model, manifests, langs):
    """The utterances of several manifests collated into one batch (languages mixed)."""
    items = []
    for lang in langs:
        ds = model._manifest_dataset(OmegaConf.create({"manifest_filepath": manifests[lang], "sample_rate": 16000}))
        items += [ds[i] for i in range(len(ds))]
    return ds.collate_fn(items)


def plain_and_fused(architecture):
    """Two models with the same weights, one with NeMo's fused joint (3 utterances a sub-batch)."""
    plain = MultiSoftmaxRNNTModel(ms_cfg(architecture=architecture))
    fused = MultiSoftmaxRNNTModel(ms_cfg(architecture=architecture, **FUSED))
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def joint_batch_sizes(model, monkeypatch) -> list[int]:
    """The batch size of every joint tensor (B, T, U + 1, V + 1) the model computes, appended as it goes."""
    sizes = []
    for joint in [model.joint[lang] for lang in LANGS] if model.is_multisoftmax else [model.joint]:

        def spy(f, g, joint_fn=joint.joint):
            out = joint_fn(f, g)
            sizes.append(out.shape[0])
            return out

        monkeypatch.setattr(joint, "joint", spy)
    return sizes


@pytest.mark.parametrize("architecture", ["multisoftmax", "vanilla"])
def test_fused_joint_gives_the_plain_loss_gradients_and_wer(manifests, architecture, monkeypatch):
    plain, fused = plain_and_fused(architecture)
    sizes = {id(m): joint_batch_sizes(m, monkeypatch) for m in (plain, fused)}
    expected = {  # joint tensors of one loss: plain, one per language group; fused, sub-batches of ≤ 3
        ("multisoftmax", 1): ([4], [3, 1]),
        ("multisoftmax", 2): ([4, 4], [3, 1, 3, 1]),
        ("vanilla", 1): ([4], [3, 1]),
        ("vanilla", 2): ([8], [3, 3, 2]),
    }
    assert fused.joint.fuse_loss_wer and not plain.joint.fuse_loss_wer
    if architecture == "multisoftmax":  # every language's NeMo joint is fused, with its own loss and WER
        for lang in LANGS:
            joint = fused.joint[lang]
            assert joint.fuse_loss_wer and joint.fused_batch_size == 3
            assert joint.loss is fused.loss[lang] and joint.wer is fused.lang_wer[lang]
    for langs in (["ru"], ["en", "hi"]):  # one language; two languages mixed in one batch
        batch = mixed_batch(plain, manifests, langs)
        out = []
        for model in (plain, fused):
            model.eval()  # no dither or dropout: both models see the same encoder output
            model.zero_grad(set_to_none=True)
            sizes[id(model)].clear()
            _, parts, _, _ = model._losses(batch)
            parts["rnnt_loss"].backward()
            assert sizes[id(model)] == expected[architecture, len(langs)][model is fused]
            with torch.no_grad():
                logs = model.validation_pass(batch, 0)
            wer = (int(logs["val_wer_num"]), int(logs["val_wer_denom"]))
            out.append((parts["rnnt_loss"].item(), wer, {n: p.grad for n, p in model.named_parameters()}))
        (loss_p, wer_p, grad_p), (loss_f, wer_f, grad_f) = out
        assert loss_f == pytest.approx(loss_p, abs=1e-5)
        assert wer_f == wer_p and wer_p[1] > 0
        assert grad_f.keys() == grad_p.keys()
        for name, g in grad_p.items():
            if g is None:  # other languages' parameters: no gradient either way
                assert grad_f[name] is None, name
            else:
                assert torch.allclose(grad_f[name], g, atol=1e-5), name
    if architecture == "multisoftmax":  # a new decoding strategy brings new WER objects, wired into the joints
        fused.change_decoding_strategy(fused.cfg.decoding, verbose=False)
        fused.validation_pass(batch, 0)
        assert all(fused.joint[lang].wer is fused.lang_wer[lang] for lang in LANGS)


class _FusedIsolation(pl.Callback):
    """After every backward: the batch's language has gradients, the other languages none."""

    def __init__(self):
        self.langs, self.leaks = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.langs.append(pl_module.languages[int(batch.lang_ids[0])])

    def on_after_backward(self, trainer, pl_module):
        lang = self.langs[-1]
        assert all(p.grad is not None for p in specific_params(pl_module, lang).values())
        for other in set(LANGS) - {lang}:
            self.leaks += [n for n, p in specific_params(pl_module, other).items() if p.grad is not None]


def test_lightning_fit_with_fused_joint_keeps_languages_isolated(manifests):
    model = MultiSoftmaxRNNTModel(ms_cfg(**FUSED))
    check = _FusedIsolation()
    trainer = cpu_trainer(3, callbacks=[check], limit_val_batches=1)
    model.set_trainer(trainer)
    model.setup_training_data(OmegaConf.merge(model.cfg.train_ds, {"manifest_filepath": list(manifests.values()), "mixing": {"per_batch": True}}))
    model.setup_multiple_validation_data(
        OmegaConf.merge(model.cfg.validation_ds, {"manifest_filepath": [manifests["en"], manifests["hi"]]})
    )
    trainer.fit(model)
    assert len(check.langs) == 3 and check.leaks == []
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert "val_wer" in trainer.callback_metrics
    # Greedy decoding still runs on the fused joints: the same text as the plain model with these weights.
    plain = MultiSoftmaxRNNTModel(ms_cfg())
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    audio = files(manifests["hi"], 2) + files(manifests["en"], 1)
    for lang in (None, "hi"):
        got, want = (m.transcribe(audio, verbose=False, lang=lang) for m in (model, plain))
        assert [(h.text, h.lang) for h in got] == [(h.text, h.lang) for h in want]


@pytest.mark.parametrize("joint", [{"fuse_loss_wer": True}, {"fuse_loss_wer": True, "fused_batch_size": 0}])
def test_fused_joint_without_a_sub_batch_size_is_refused(joint):
    with pytest.raises(InputError, match=r"model\.joint\.fused_batch_size"):
        MultiSoftmaxRNNTModel(ms_cfg(joint=joint))
