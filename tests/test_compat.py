"""nemo_tl.compat: each private NeMo / Lightning / torchmetrics internal nemo_tl uses, pinned.

Each test asserts the behaviour of the library that nemo_tl relies on, so that an upgrade that
changes it fails here, by name, instead of somewhere in a model.
"""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
from nemo.collections.asr.data.audio_to_text import AudioToCharDataset
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor, ConvASRDecoder, RNNTDecoder, RNNTJoint
from nemo.collections.asr.parts.submodules.rnnt_greedy_decoding import GreedyBatchedRNNTInfer
from torchmetrics import Metric

from nemo_tl import compat
from tests.conftest import EN_LABELS, load_conf
from tests.helpers import cpu_trainer


# ----------------------------------------------------------------------------- NeMo data
def test_audio_text_dataset_subclass_hook_and_collate(en_manifest):
    class WithIndex(compat.AudioTextDataset):
        """Adds a field per item through NeMo's ``_process_sample`` hook, as the multilingual dataset does."""

        def _process_sample(self, index):
            return (*super()._process_sample(index), torch.tensor(index))

    from nemo.collections.common.parts.preprocessing.parsers import make_parser

    dataset = WithIndex(manifest_filepath=en_manifest, parser=make_parser(EN_LABELS, name="base"), sample_rate=16000)
    item = dataset[1]
    assert len(item) == 5 and int(item[-1]) == 1  # NeMo's four, then ours
    assert issubclass(AudioToCharDataset, compat.AudioTextDataset)
    audio, audio_len, tokens, tokens_len = compat.speech_collate_fn([dataset[0][:4], dataset[1][:4]], pad_id=0)
    assert audio.shape == (2, int(audio_len.max())) and tokens.shape == (2, int(tokens_len.max()))
    assert audio_len.tolist() == [int(dataset[0][1]), int(dataset[1][1])]


# ----------------------------------------------------------------------------- NeMo modules
def test_decoder_input_width_is_the_width_the_decoder_takes():
    decoder = ConvASRDecoder(feat_in=7, num_classes=3)
    assert compat.decoder_input_width(decoder) == 7
    assert decoder(encoder_output=torch.randn(2, 7, 5)).shape == (2, 5, 4)


def test_encoder_output_width_is_the_width_the_encoder_outputs():
    from nemo.collections.asr.modules import ConformerEncoder, ConvASREncoder

    conformer = ConformerEncoder(feat_in=16, n_layers=1, d_model=24, n_heads=2, subsampling_factor=4)
    out, _ = conformer(audio_signal=torch.randn(1, 16, 40), length=torch.tensor([40]))
    assert compat.encoder_output_width(conformer) == out.shape[1] == 24
    block = {"filters": 12, "repeat": 1, "kernel": [3], "stride": [1], "dilation": [1], "dropout": 0.0,
             "residual": False, "separable": False}
    conv = ConvASREncoder(jasper=[block], activation="relu", feat_in=16)
    out, _ = conv(audio_signal=torch.randn(1, 16, 40), length=torch.tensor([40]))
    assert compat.encoder_output_width(conv) == out.shape[1] == 12


def test_preprocessor_sample_rate():
    assert compat.preprocessor_sample_rate(AudioToMelSpectrogramPreprocessor(sample_rate=8000)) == 8000
    assert compat.preprocessor_sample_rate(torch.nn.Identity()) is None


def test_optimizer_param_groups_are_what_setup_optimization_builds_from():
    class DecoderFrozen(EncDecCTCModel):
        def setup_optimizer_param_groups(self):
            super().setup_optimizer_param_groups()
            assert compat.optimizer_param_groups(self) is not None  # NeMo wrote its groups
            decoder = {id(p) for p in self.decoder.parameters()}
            kept = [p for p in self.parameters() if id(p) not in decoder]
            compat.set_optimizer_param_groups(self, [{"params": kept}])

    model = DecoderFrozen(cfg=load_conf("quartznet_tiny"))
    optimizer, _ = model.setup_optimization(optim_config={"name": "adam", "lr": 0.01})
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held and not any(id(p) in held for p in model.decoder.parameters())
    assert all(id(p) in held for p in model.encoder.parameters())


# ----------------------------------------------------------------------------- NeMo RNN-T greedy decoding
def _greedy(loop_labels: bool) -> GreedyBatchedRNNTInfer:
    decoder = RNNTDecoder(prednet={"pred_hidden": 8, "pred_rnn_layers": 1}, vocab_size=4, blank_as_pad=True)
    joint = RNNTJoint(
        jointnet={"encoder_hidden": 8, "pred_hidden": 8, "joint_hidden": 8, "activation": "relu"}, num_classes=4
    )
    return GreedyBatchedRNNTInfer(
        decoder, joint, blank_index=4, max_symbols_per_step=5, loop_labels=loop_labels, use_cuda_graph_decoder=True
    )


def test_label_looping_full_graph_becomes_no_while_loops_with_its_fallback():
    greedy = _greedy(loop_labels=True)
    computer = greedy.decoding_computer
    assert compat.cuda_graphs_mode(greedy) == "no_while_loops"  # without conditional nodes (here: no CUDA)
    computer.cuda_graphs_mode = computer.CudaGraphsMode.FULL_GRAPH  # what NeMo picks on a GPU with conditional nodes
    fallback = computer.cuda_graphs_allow_fallback
    assert compat.cuda_graphs_mode(greedy) == "full_graph"
    assert compat.avoid_conditional_graphs(greedy) is True
    assert compat.cuda_graphs_mode(greedy) == "no_while_loops"
    assert computer.cuda_graphs_allow_fallback == fallback
    assert compat.avoid_conditional_graphs(greedy) is False  # nothing left to change
    # NeMo's hooks keep a mode that is set: enabling again does not bring full graphs back
    assert greedy.maybe_enable_cuda_graphs() is False and compat.cuda_graphs_mode(greedy) == "no_while_loops"
    assert greedy.disable_cuda_graphs() is True and compat.cuda_graphs_mode(greedy) is None


def test_frame_looping_graph_decoder_gives_way_to_the_python_loop():
    greedy = _greedy(loop_labels=False)
    assert greedy.decoding_computer is None and compat.cuda_graphs_mode(greedy) is None
    # As NeMo builds it on a GPU: its conditional-node graph decoder in place of the loop.
    greedy.use_cuda_graph_decoder, greedy._greedy_decode = True, "conditional-node graph"
    assert compat.avoid_conditional_graphs(greedy) is True
    assert greedy._greedy_decode == greedy._greedy_decode_blank_as_pad_loop_frames
    assert compat.force_cuda_graphs_mode(greedy, "no_graphs") is False


def test_force_cuda_graphs_mode_turns_the_fallback_off():
    greedy = _greedy(loop_labels=True)
    assert compat.force_cuda_graphs_mode(greedy, "no_graphs") is True
    assert compat.cuda_graphs_mode(greedy) == "no_graphs"
    assert greedy.decoding_computer.cuda_graphs_allow_fallback is False


# ----------------------------------------------------------------------------- torchmetrics
class _Total(Metric):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:
        self.total += value

    def compute(self) -> torch.Tensor:
        return self.total


def test_metric_sync_disabled_computes_without_gathering():
    from nemo.collections.asr.metrics.wer import WER

    assert issubclass(WER, Metric)
    gathers = []

    def two_ranks(tensor, group=None):  # every rank holds what this one holds
        gathers.append(tensor)
        return [tensor, tensor]

    metric = _Total(distributed_available_fn=lambda: True, dist_sync_fn=two_ranks)
    metric.update(torch.tensor(2.0))
    with compat.metric_sync_disabled(metric):
        assert float(metric.compute()) == 2.0 and not gathers
    metric.update(torch.tensor(1.0))
    assert float(metric.compute()) == 6.0 and gathers  # synced again after the context


# ----------------------------------------------------------------------------- Lightning
def test_ddp_find_unused_parameters_reaches_distributed_data_parallel(monkeypatch):
    import lightning.pytorch.strategies.ddp as ddp

    strategy = ddp.DDPStrategy(parallel_devices=[torch.device("cpu")])
    assert compat.ddp_find_unused_parameters(strategy) is True
    assert compat.ddp_find_unused_parameters(strategy) is False  # already set
    given = {}
    monkeypatch.setattr(ddp, "DistributedDataParallel", lambda module, **kwargs: given.update(kwargs) or module)
    strategy._setup_model(torch.nn.Linear(1, 1))
    assert given["find_unused_parameters"] is True
    # one the user asked for in the trainer config is left as it is
    assert compat.ddp_find_unused_parameters(ddp.DDPStrategy(find_unused_parameters=True)) is False


class _Steps(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append((batch_idx, compat.batches_trained_this_epoch(self.trainer)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=1)


def test_batches_trained_this_epoch_counts_finished_steps():
    model = _Steps()
    cpu_trainer(6).fit(model)  # two epochs of 4 batches, the second cut at 2
    assert model.seen == [(0, 1), (1, 2), (2, 3), (3, 4), (0, 1), (1, 2)]
    assert compat.batches_trained_this_epoch(object()) is None



def test_attached_trainer_is_none_until_a_trainer_attaches_the_module():
    model = _Steps()
    assert compat.attached_trainer(model) is None
    with pytest.raises(RuntimeError):
        model.trainer  # noqa: B018 (the public property refuses)
    trainer = cpu_trainer(1)
    trainer.fit(model)
    assert compat.attached_trainer(model) is trainer


def test_logs_this_step_is_true_on_the_steps_lightning_sends_to_the_loggers(tmp_path):
    """Lightning flushes on the steps whose count (from 1) is a multiple of log_every_n_steps; so does the test."""
    from lightning.pytorch.loggers import CSVLogger

    class Logged(_Steps):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.seen.append(compat.logs_this_step(self.trainer))
            self.log("step_seen", float(batch_idx), on_step=True)

    model = Logged()
    logger = CSVLogger(str(tmp_path), name="log", version=0)
    cpu_trainer(6, logger=logger, log_every_n_steps=3).fit(model)
    assert model.seen == [False, False, True, False, False, True]
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["step_seen"]) for r in rows] == [("2", "2.0"), ("5", "1.0")]  # the 3rd and 6th steps
    assert not compat.logs_this_step(None) and not compat.logs_this_step(object())

@pytest.mark.parametrize("name", compat.__all__)
def test_every_name_is_documented(name):
    obj = getattr(compat, name)
    assert obj.__doc__ and (name == "AudioTextDataset" or obj.__module__ == "nemo_tl.compat")
