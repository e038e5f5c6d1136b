"""RNN-T transfer (issue 18): transfer_rnnt_rows on NeMo modules, TransferRNNTModel (chars), TransferRNNTBPEModel (RNN-T, TDT)."""

from __future__ import annotations

import shutil

import lightning.pytorch as pl
import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecRNNTBPEModel, EncDecRNNTModel
from nemo.collections.asr.modules import RNNTDecoder, RNNTJoint

from nemo_tl.models import TransferRNNTBPEModel, TransferRNNTModel
from nemo_tl.transfer import from_base, mapped_output_rows, transfer_rnnt_rows
from nemo_tl.transfer.tokens import model_tokens
from tests.conftest import DE_LABELS, EN_LABELS
from tests.helpers import cpu_trainer, raises_input_error, snapshot
from tests.tiny_asr import DE_TEXT, DURATIONS, EN_TEXT, build_base, fit_steps, make_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def head(vocab: int, extra: int = 0) -> tuple[RNNTDecoder, RNNTJoint]:
    decoder = RNNTDecoder(prednet={"pred_hidden": 8, "pred_rnn_layers": 1}, vocab_size=vocab)
    joint = RNNTJoint(jointnet={"encoder_hidden": 6, "pred_hidden": 8, "joint_hidden": 8, "activation": "relu"},
                      num_classes=vocab, num_extra_outputs=extra)
    return decoder, joint


def embed(decoder):
    return decoder.prediction["embed"].weight.detach()


def out(joint):
    return joint.joint_net[-1].weight.detach(), joint.joint_net[-1].bias.detach()


# ---------------------------------------------------------------- transfer_rnnt_rows on plain NeMo modules
BASE_TOKENS = ["a", "b", "c", "d"]
NEW_TOKENS = ["c", "x", "a", "y", "b"]  # c, a, b shared (reordered); x, y new


@pytest.mark.parametrize("extra", [0, len(DURATIONS)])
def test_rows_are_copied_by_token_and_blank_and_durations_whole(extra):
    base_dec, base_joint = head(4, extra)
    with torch.no_grad():
        base_joint.joint_net[-1].bias.uniform_(-1, 1)
    new_dec, new_joint = head(5, extra)
    report = transfer_rnnt_rows(base_dec, base_joint, BASE_TOKENS, new_dec, new_joint, NEW_TOKENS)
    assert report == {"shared": 3, "new": 2}
    pairs = [(2, 0), (0, 2), (1, 4), (4, 5)]  # (base row, new row): c, a, b, then blank
    pairs += [(5 + j, 6 + j) for j in range(extra)]  # TDT duration outputs
    (bw, bb), (nw, nb) = out(base_joint), out(new_joint)
    for b, n in pairs:
        assert torch.equal(nw[n], bw[b]) and torch.equal(nb[n], bb[b])
    for b, n in pairs[:4]:
        assert torch.equal(embed(new_dec)[n], embed(base_dec)[b])
    for n in (1, 3):  # new tokens start at zero
        assert not nw[n].any() and nb[n] == 0 and not embed(new_dec)[n].any()
    # the vocabulary-independent weights are copied whole
    assert torch.equal(new_dec.prediction["dec_rnn"].lstm.weight_hh_l0, base_dec.prediction["dec_rnn"].lstm.weight_hh_l0)
    assert torch.equal(new_joint.enc.weight, base_joint.enc.weight)


def test_random_keeps_fresh_rows_and_compose_averages_sources():
    base_dec, base_joint = head(4)
    new_dec, new_joint = head(5)
    fresh = embed(new_dec).clone()
    transfer_rnnt_rows(base_dec, base_joint, BASE_TOKENS, new_dec, new_joint, NEW_TOKENS, new_label_init="random")
    assert torch.equal(embed(new_dec)[[1, 3]], fresh[[1, 3]])
    transfer_rnnt_rows(base_dec, base_joint, BASE_TOKENS, new_dec, new_joint, NEW_TOKENS,
                       new_label_init="compose", compose_sources={1: [0, 3], 3: []})
    assert torch.allclose(embed(new_dec)[1], embed(base_dec)[[0, 3]].mean(0))
    assert torch.allclose(out(new_joint)[0][1], out(base_joint)[0][[0, 3]].mean(0))
    assert not embed(new_dec)[3].any()  # nothing to compose from: zero


def test_heads_that_differ_beyond_the_vocabulary_are_refused():
    base_dec, base_joint = head(4, extra=5)
    new_dec, new_joint = head(5, extra=3)
    with pytest.raises(ValueError, match="blank/duration rows 6 vs 4"):
        transfer_rnnt_rows(base_dec, base_joint, BASE_TOKENS, new_dec, new_joint, NEW_TOKENS)


# ---------------------------------------------------------------- models
@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return make_tokenizer(str(root / "en"), EN_TEXT, 40), make_tokenizer(str(root / "de"), DE_TEXT, 40)


@pytest.fixture(scope="module")
def char_base(tmp_path_factory):
    return build_base(EncDecRNNTModel, str(tmp_path_factory.mktemp("b") / "rnnt_char.nemo"), labels=EN_LABELS)


@pytest.fixture(scope="module")
def tdt_base(tmp_path_factory, tokenizers):
    path = str(tmp_path_factory.mktemp("b") / "tdt.nemo")
    return build_base(EncDecRNNTBPEModel, path, tokenizer_dir=tokenizers[0], tdt=True)


def assert_rows_follow_tokens(model, base):
    """Every mapped output row of ``model`` equals the base row of the same token (blank, durations included)."""
    mapped = mapped_output_rows(base, model)
    names = {name for name, _, _ in mapped}
    last = f"joint.joint_net.{len(model.joint.joint_net) - 1}"
    assert {"decoder.prediction.embed.weight", f"{last}.weight", f"{last}.bias"} <= names
    params, base_params = dict(model.named_parameters()), dict(base.named_parameters())
    for name, src, dst in mapped:
        assert torch.equal(params[name].detach()[dst], base_params[name].detach()[src]), name
    return mapped


def test_char_rnnt_keeps_shared_labels_trains_and_round_trips(tmp_path, char_base, de_manifest):
    model = TransferRNNTModel.from_base(char_base, labels=DE_LABELS, freeze_encoder_blocks=1)
    base = ASRModel.restore_from(char_base, map_location="cpu")
    assert model.transfer_report.found == 27 and model.transfer_report.new_tokens == ("ä", "ö", "ü", "ß")
    assert_rows_follow_tokens(model, base)
    new = [DE_LABELS.index(c) for c in "äöüß"]
    assert not model.joint.joint_net[-1].weight[new].any()
    pre_encode = snapshot(model.encoder.pre_encode)
    fit_steps(model, de_manifest, steps=2)
    assert all(torch.equal(v, pre_encode[k]) for k, v in model.encoder.pre_encode.state_dict().items())
    path = str(tmp_path / "de.nemo")
    model.save_to(path)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert type(restored) is TransferRNNTModel
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in model.state_dict().items())


def test_tdt_keeps_durations_and_its_loss(tmp_path, tokenizers, tdt_base, de_manifest):
    model = from_base(tdt_base, tokenizer_dir=tokenizers[1], new_label_init="compose")
    assert type(model) is TransferRNNTBPEModel and model.cfg.transfer.base_model == tdt_base
    base = ASRModel.restore_from(tdt_base, map_location="cpu")
    mapped = dict((n, (s, d)) for n, s, d in assert_rows_follow_tokens(model, base))
    src, dst = mapped[f"joint.joint_net.{len(model.joint.joint_net) - 1}.bias"]
    vocab, base_vocab = len(model_tokens(model)), len(model_tokens(base))
    assert dst[-6:] == list(range(vocab, vocab + 6)) and src[-6:] == list(range(base_vocab, base_vocab + 6))
    assert list(model.cfg.model_defaults.tdt_durations) == DURATIONS and model.cfg.loss.loss_name == "tdt"
    # NeMo 3.0's change_vocabulary puts a plain RNN-T loss in; ours keeps the TDT loss, whose numba
    # kernel has no CPU path (a plain RNN-T loss would compute here)
    model.change_vocabulary(tokenizers[1], "bpe")
    args = dict(log_probs=torch.randn(2, 6, 3, vocab + 1 + len(DURATIONS)), targets=torch.randint(0, vocab, (2, 2)),
                input_lengths=torch.tensor([6, 5]), target_lengths=torch.tensor([2, 1]))
    with pytest.raises(ValueError, match="TDT is not yet implemented for non CUDA"):
        model.loss(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NeMo's TDT losses (numba and PyTorch) run on CUDA only")
def test_tdt_trains_on_gpu(tokenizers, tdt_base, de_manifest):
    model = TransferRNNTBPEModel.from_base(tdt_base, tokenizer_dir=tokenizers[1], freeze_encoder_blocks=1)
    fit_steps(model, de_manifest, steps=3, accelerator="gpu")
    assert model.cfg.loss.loss_name == "tdt"


def test_rnnt_bpe_trains_restores_and_transcribes(tmp_path, tokenizers, de_manifest):
    base = build_base(EncDecRNNTBPEModel, str(tmp_path / "rnnt.nemo"), tokenizer_dir=tokenizers[0])
    model = TransferRNNTBPEModel.from_base(base, tokenizer_dir=tokenizers[1], freeze_encoder_blocks=2)
    assert_rows_follow_tokens(model, ASRModel.restore_from(base, map_location="cpu"))
    # mixed training manifests and a validation WER per manifest, as for the character models
    other = str(tmp_path / "tgt_dev.json")
    shutil.copy(de_manifest, other)
    data = {"manifest_filepath": [de_manifest, other], "sample_rate": 16000, "batch_size": 2, "num_workers": 0}
    model.setup_training_data({**data, "shuffle": True, "mixing": {"weights": [0.5, 0.5], "num_batches": 2}})
    model.setup_multiple_validation_data({**data, "shuffle": False})
    trainer = cpu_trainer(2, limit_val_batches=1)
    trainer.fit(model)
    assert {"de_val_wer", "tgt_dev_val_wer"} <= set(trainer.callback_metrics)
    path = str(tmp_path / "de.nemo")
    model.save_to(path)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert type(restored) is TransferRNNTBPEModel and len(restored.frozen_blocks) == 2
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in model.state_dict().items())
    import json

    audio = [json.loads(line)["audio_filepath"] for line in open(de_manifest)][:2]
    hyps = restored.transcribe(audio, batch_size=2, verbose=False)
    assert len(hyps) == 2


# ---------------------------------------------------------------- bad input
def test_tdt_target_must_keep_the_durations(tokenizers, tdt_base):
    raises_input_error(
        lambda: TransferRNNTBPEModel.from_base(tdt_base, tokenizer_dir=tokenizers[1],
                                               cfg={"model_defaults": {"tdt_durations": [0, 1, 2]}}),
        r"model_defaults\.tdt_durations", r"durations \[0, 1, 2, 3, 4\]",
    )


def test_tokenizer_for_a_char_base_and_labels_for_a_subword_base(tokenizers, char_base, tdt_base):
    raises_input_error(lambda: from_base(char_base, tokenizer_dir=tokenizers[1]), "tokenizer_dir", "labels=")
    raises_input_error(lambda: from_base(tdt_base, labels=DE_LABELS), r"\[labels\]|labels", "tokenizer_dir=")
    raises_input_error(lambda: TransferRNNTModel.from_base(char_base, labels=DE_LABELS, tokenizer_dir=tokenizers[1]),
                       r"model\.tokenizer", "model.labels")
    raises_input_error(lambda: TransferRNNTBPEModel.from_base(char_base, tokenizer_dir=tokenizers[1]),
                       "a character model", "from_base")


def test_compose_with_character_labels(char_base):
    raises_input_error(lambda: TransferRNNTModel.from_base(char_base, labels=DE_LABELS, new_label_init="compose"),
                       r"new_label_init", "characters")


class Killed(Exception):
    """Stands in for the job being killed."""


class SaveAndStop(pl.Callback):
    """Save a checkpoint at ``step``, then kill the run there."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Killed(f"killed at step {self.step}")


def test_rnnt_bpe_resumes_mid_epoch_exactly(tmp_path, tokenizers, de_manifest):
    base = build_base(EncDecRNNTBPEModel, str(tmp_path / "rnnt.nemo"), tokenizer_dir=tokenizers[0])
    train_ds = {"manifest_filepath": [de_manifest, de_manifest], "sample_rate": 16000, "batch_size": 2,
                "shuffle": True, "num_workers": 0, "mixing": {"weights": [0.5, 0.5], "num_batches": 3, "seed": 5}}
    spec_augment = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 1,
                    "time_masks": 2, "freq_width": 4, "time_width": 0.1}

    def run(seed: int, ckpt_path: str | None = None, callbacks=()):
        torch.manual_seed(seed)
        model = TransferRNNTBPEModel.from_base(base, tokenizer_dir=tokenizers[1], freeze_encoder_blocks=1,
                                               cfg={"train_ds": train_ds, "spec_augment": spec_augment})
        torch.manual_seed(seed + 1)
        cpu_trainer(5, callbacks=list(callbacks)).fit(model, ckpt_path=ckpt_path)
        return snapshot(model)

    reference = run(0)
    ckpt = str(tmp_path / "mid.ckpt")
    with pytest.raises(Killed):
        run(0, callbacks=[SaveAndStop(4, ckpt)])  # step 4: the 2nd batch of the 2nd epoch
    resumed = run(123, ckpt_path=ckpt)  # the resumed run's own randomness must not matter
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
