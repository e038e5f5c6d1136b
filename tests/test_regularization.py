"""Fine-tuning against forgetting (model.transfer.regularization): L2-SP, EWC and LwF."""

from __future__ import annotations

import json
import os

import pytest
import torch
from nemo.collections.asr.models import ASRModel
from omegaconf import OmegaConf

from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.models import TransferCTCModel
from nemo_tl.transfer import regularization as reg
from nemo_tl.transfer.config import TransferConfig
from nemo_tl.transfer.regularization import (
    EWCConfig,
    RegularizationConfig,
    add_penalty_gradients,
    anchors_from_base,
    ewc_penalty,
    fisher_for_run,
    l2sp_penalty,
    lwf_loss,
    training_loss,
)
from nemo_tl.transfer.vocabulary import shared_label_rows
from tests.conftest import DE_LABELS, EN_LABELS, EN_TEXTS, load_conf
from tests.helpers import fit, raises_input_error, snapshot

pytestmark = pytest.mark.usefixtures("single_thread")

DECODER_W = "decoder.decoder_layers.0.weight"


@pytest.fixture(scope="module")
def base(base_nemo):
    return ASRModel.restore_from(base_nemo, map_location="cpu").eval()


def build(base_nemo, regularization: dict | None = None, labels=DE_LABELS, base_model=None, **transfer):
    """A German TransferCTCModel from the English base, through the config path (as a YAML run builds it)."""
    cfg = load_conf("quartznet_tiny")
    cfg.labels = list(labels)
    cfg.optim = {"name": "adam", "lr": 0.05}
    cfg.transfer = {"base_model": None if base_model is not None else base_nemo, "regularization": regularization,
                    **transfer}
    return TransferCTCModel(cfg=cfg, base_model=base_model)


def transferred_distance(model, base) -> float:
    """‖θ − θ_base‖² over the transferred parameters (shared rows of the decoder)."""
    return float(sum((a.current() - a.value).pow(2).sum() for a in anchors_from_base(base, model)))


@pytest.fixture(scope="module")
def plain(base_nemo, de_manifest, tmp_path_factory):
    """3 steps of plain fine-tuning on German."""
    torch.manual_seed(0)
    model = build(base_nemo)
    fit(model, de_manifest, steps=3, default_root_dir=str(tmp_path_factory.mktemp("plain")))
    return model


# ---------------------------------------------------------------------------- the penalties
def test_penalties_are_zero_at_the_base_and_their_gradients_are_exact(base, base_nemo):
    model = build(base_nemo)
    anchors = anchors_from_base(base, model)
    names = {a.name for a in anchors}
    assert DECODER_W in names and "encoder.encoder.0.mconv.0.conv.weight" in names
    decoder = next(a for a in anchors if a.name == DECODER_W)
    assert decoder.rows.tolist() == shared_label_rows(EN_LABELS, DE_LABELS)[1]  # shared labels and blank
    for a in anchors:
        a.fisher = torch.rand_like(a.value)
    params, values, fisher = [a.current() for a in anchors], [a.value for a in anchors], [a.fisher for a in anchors]
    assert l2sp_penalty(params, values, 3.0).item() == 0.0
    assert ewc_penalty(params, values, fisher, 3.0).item() == 0.0

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    for penalty, expected in (
        (lambda: l2sp_penalty([a.current() for a in anchors], values, 3.0),
         lambda a: 3.0 * (a.current() - a.value)),
        (lambda: ewc_penalty([a.current() for a in anchors], values, fisher, 3.0),
         lambda a: 3.0 * a.fisher * (a.current() - a.value)),
    ):
        model.zero_grad(set_to_none=True)
        penalty().backward()
        for a in anchors:
            grad = a.param.grad if a.rows is None else a.param.grad[a.rows]
            torch.testing.assert_close(grad, expected(a).detach(), rtol=1e-5, atol=1e-7)
        new_rows = [DE_LABELS.index(c) for c in "äöüß"]
        assert decoder.param.grad[new_rows].abs().max().item() == 0.0  # German-only rows: not anchored


def test_penalty_gradients_equal_autograd_of_the_penalty_added_to_the_gradients(base, base_nemo):
    torch.manual_seed(0)
    model = build(base_nemo)
    anchors = anchors_from_base(base, model)
    assert any(a.rows is not None for a in anchors) and any(a.rows is None for a in anchors)
    for a in anchors:
        a.fisher = torch.rand_like(a.value)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    params = list(model.parameters())
    before = [torch.randn_like(p) for p in params]
    no_grad = {id(anchors[0].param), id(next(a for a in anchors if a.rows is not None).param)}  # get zeros first

    def set_grads():
        for p, g in zip(params, before):
            p.grad = None if id(p) in no_grad else g.clone()

    values = [a.value for a in anchors]
    for fisher, penalty in (
        (False, lambda: l2sp_penalty([a.current() for a in anchors], values, 3.0)),
        (True, lambda: ewc_penalty([a.current() for a in anchors], values, [a.fisher for a in anchors], 3.0)),
    ):
        set_grads()
        penalty().backward()
        expected = [p.grad.clone() for p in params]
        set_grads()
        assert add_penalty_gradients(anchors, 3.0, fisher=fisher)
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-7)

        set_grads()
        assert add_penalty_gradients(anchors, 3.0, fisher=fisher, scale=8.0)
        for p, g, e in zip(params, before, expected):
            g = torch.zeros_like(g) if id(p) in no_grad else g
            torch.testing.assert_close(p.grad - g, 8.0 * (e - g), rtol=1e-5, atol=1e-6)


def test_penalty_gradients_leave_a_skipped_step_alone(base, base_nemo):
    model = build(base_nemo)
    anchors = anchors_from_base(base, model)
    model.zero_grad(set_to_none=True)
    assert add_penalty_gradients(anchors, 1.0, fisher=False) is False
    assert all(p.grad is None for p in model.parameters())


def test_penalties_check_shapes():
    with pytest.raises(ValueError, match="shape"):
        l2sp_penalty([torch.zeros(2, 3)], [torch.zeros(3, 2)], 1.0)


def test_lwf_renormalizes_over_the_shared_labels_and_blank():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, len(EN_LABELS) + 1).log_softmax(-1)
    base_rows, rows = shared_label_rows(EN_LABELS, DE_LABELS)
    student = torch.randn(2, 5, len(DE_LABELS) + 1)
    with torch.no_grad():
        student[..., rows] = teacher[..., base_rows] + 4.0  # same distribution over the shared labels
    student.requires_grad_(True)
    lengths = torch.tensor([5, 3])
    loss = lwf_loss(student, teacher, lengths, rows, base_rows, temperature=2.0)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-6  # at its minimum; German-only columns get no gradient
    # the teacher's entropy over the shared labels at T = 2, times T², summed over valid frames
    shared_t = (teacher[..., base_rows] / 2).log_softmax(-1)
    expected = (-(shared_t.exp() * shared_t).sum(-1) * 4)
    expected = torch.stack([expected[0, :5].sum(), expected[1, :3].sum()]).mean()
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------- training
def test_weight_zero_is_the_plain_run_bit_for_bit(base_nemo, de_manifest, en_manifest, plain, tmp_path):
    torch.manual_seed(0)
    zero = build(base_nemo, {"lwf": {"weight": 0.0, "temperature": 2.0}, "l2sp": {"weight": 0.0},
                             "ewc": {"weight": 0.0, "manifest": en_manifest, "batches": 2}})
    fit(zero, de_manifest, steps=3, default_root_dir=str(tmp_path))
    expected = snapshot(plain)
    for name, value in snapshot(zero).items():
        assert torch.equal(value, expected[name]), name
    assert not os.path.exists(tmp_path / reg.FISHER_DIR)


def test_l2sp_keeps_the_transferred_weights_closer_to_the_base(base_nemo, base, de_manifest, plain, tmp_path):
    torch.manual_seed(0)
    model = build(base_nemo, {"l2sp": {"weight": 1000.0}})
    fit(model, de_manifest, steps=3, default_root_dir=str(tmp_path))
    assert transferred_distance(model, base) < 0.5 * transferred_distance(plain, base)


def test_penalties_are_logged_where_the_loss_is_with_the_value_at_the_step_end(base_nemo, base, de_manifest,
                                                                                  en_manifest, tmp_path):
    """log_every_n_steps decides, as for NeMo's own train_loss; the value is the penalty at the weights
    the step ends with."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    model = build(base_nemo, {"l2sp": {"weight": 100.0},
                              "ewc": {"weight": 10.0, "manifest": en_manifest, "batches": 2, "batch_size": 4}})
    logger = CSVLogger(str(tmp_path), name="log", version=0)
    trainer = fit(model, de_manifest, steps=4, logger=logger, log_every_n_steps=2, default_root_dir=str(tmp_path))
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    steps = {key: [int(r["step"]) for r in rows if r.get(key)] for key in ("train_loss", "l2sp_penalty", "ewc_penalty")}
    assert steps["train_loss"] == [1, 3]  # Lightning's steps 2 and 4, counted from 0
    assert steps["l2sp_penalty"] == steps["ewc_penalty"] == steps["train_loss"]
    anchors = model._forgetting_anchors
    current, values = [a.current() for a in anchors], [a.value for a in anchors]
    with torch.no_grad():
        l2sp = l2sp_penalty(current, values, 100.0)
        ewc = ewc_penalty(current, values, [a.fisher for a in anchors], 10.0)
    assert l2sp > 0 and ewc > 0
    torch.testing.assert_close(trainer.callback_metrics["l2sp_penalty"], l2sp)
    torch.testing.assert_close(trainer.callback_metrics["ewc_penalty"], ewc)


def test_penalty_gradients_are_added_once_per_optimizer_step(base_nemo, de_manifest, tmp_path, monkeypatch):
    calls, batches = [], []
    add = reg.add_penalty_gradients
    monkeypatch.setattr(reg.mixin, "add_penalty_gradients", lambda *a, **k: calls.append(k["fisher"]) or add(*a, **k))
    step = TransferCTCModel.training_step
    monkeypatch.setattr(TransferCTCModel, "training_step", lambda m, b, i: batches.append(i) or step(m, b, i))
    torch.manual_seed(0)
    model = build(base_nemo, {"l2sp": {"weight": 1000.0}})
    trainer = fit(model, de_manifest, steps=2, accumulate_grad_batches=2, log_every_n_steps=1,
                  default_root_dir=str(tmp_path))
    assert len(batches) == 4 and calls == [False, False]  # 2 optimizer steps of 2 batches each
    assert trainer.callback_metrics["l2sp_penalty"] > 0


def test_all_three_train_together_and_the_nemo_restores_without_the_base(base_nemo, de_manifest, en_manifest,
                                                                         plain, tmp_path):
    torch.manual_seed(0)
    section = {"lwf": {"weight": 1.0, "temperature": 2.0}, "l2sp": {"weight": 0.1},
               "ewc": {"weight": 10.0, "manifest": en_manifest, "batches": 2, "batch_size": 4}}
    model = build(base_nemo, section)
    trainer = fit(model, de_manifest, steps=2, log_every_n_steps=1, default_root_dir=str(tmp_path))
    for key in ("lwf_loss", "l2sp_penalty", "ewc_penalty"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert os.path.isfile(tmp_path / reg.FISHER_DIR / "fisher.pt")
    path = str(tmp_path / "regularized.nemo")
    model.save_to(path)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert set(restored.state_dict()) == set(plain.state_dict())  # no copy of the base inside
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    assert OmegaConf.to_container(restored.cfg.transfer.regularization) == RegularizationConfig.from_section(
        section).as_section()

    # Trained further in the same run directory: the base is loaded again, the Fisher read back, not recomputed.
    fisher_file = tmp_path / reg.FISHER_DIR / "fisher.pt"
    stamp = fisher_file.stat().st_mtime_ns
    trainer = fit(restored, de_manifest, steps=1, log_every_n_steps=1, default_root_dir=str(tmp_path))
    assert torch.isfinite(trainer.callback_metrics["ewc_penalty"]) and fisher_file.stat().st_mtime_ns == stamp


def test_lwf_from_the_teacher_cache_matches_the_online_base(base_nemo, de_manifest, tmp_path):
    from nemo_tl.distill.cache import CachedTeacherCollate, build_cache

    # Built first, so that both runs draw the same batches (building iterates a DataLoader, which draws a seed).
    build_cache(ASRModel.restore_from(base_nemo, map_location="cpu"), [de_manifest], str(tmp_path / "base_cache"),
                sample_rate=16000)
    losses = {}
    for name, cache in (("online", None), ("cached", str(tmp_path / "base_cache"))):
        torch.manual_seed(0)
        model = build(base_nemo, {"lwf": {"weight": 1.0, "temperature": 1.0, "cache": cache}})
        trainer = fit(model, de_manifest, steps=1, default_root_dir=str(tmp_path / name))
        losses[name] = trainer.callback_metrics["lwf_loss"]
        assert isinstance(model._train_dl.collate_fn, CachedTeacherCollate) == (cache is not None)
    assert os.path.isfile(tmp_path / "base_cache" / "fingerprint.json")
    torch.testing.assert_close(losses["cached"], losses["online"], rtol=1e-4, atol=1e-4)


def _lwf_per_batch(model, de_manifest, en_manifest, tmp_path, steps=4, per_batch=True, labels=None):
    """Train on German and English mixed (one manifest per batch, or both in each); (manifests of each batch, its
    lwf_loss)."""
    import lightning.pytorch as pl

    from tests.helpers import cpu_trainer, data_cfg

    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            manifests = getattr(batch, "manifest_ids", None)  # carried only where lwf.manifests needs them
            seen.append((None if manifests is None else set(manifests.tolist()),
                         float(trainer.callback_metrics["lwf_loss"])))

    trainer = cpu_trainer(steps, callbacks=[Record()], default_root_dir=str(tmp_path))
    model.set_trainer(trainer)
    model.setup_training_data({**data_cfg([de_manifest, en_manifest], labels or model.decoder.vocabulary),
                               "mixing": {"weights": [0.5, 0.5], "per_batch": per_batch, "seed": 0}})
    trainer.fit(model)
    return seen


def test_lwf_on_named_manifests_within_mixed_batches_is_the_same_online_and_cached(base_nemo, de_manifest,
                                                                                     en_manifest, tmp_path):
    """In a batch of both languages, only the English utterances are distilled: online and cached agree."""
    losses = {}
    for name, cache in (("online", None), ("cached", str(tmp_path / "base_cache"))):
        torch.manual_seed(0)
        model = build(base_nemo, {"lwf": {"weight": 1.0, "temperature": 2.0, "manifests": [en_manifest],
                                          "cache": cache}})
        seen = _lwf_per_batch(model, de_manifest, en_manifest, tmp_path / name, steps=1, per_batch=False)
        assert seen[0][0] == {0, 1}, seen  # German and English in the one batch
        losses[name] = seen[0][1]
    assert losses["online"] > 0
    assert losses["online"] == pytest.approx(losses["cached"], rel=1e-4)


def test_lwf_on_named_manifests_distils_only_their_utterances(base_nemo, de_manifest, en_manifest, tmp_path):
    """Replay with LwF on the source: German batches get no LwF term, English ones the usual one."""
    torch.manual_seed(0)
    model = build(base_nemo, {"lwf": {"weight": 1.0, "temperature": 2.0, "manifests": [en_manifest]}})
    seen = _lwf_per_batch(model, de_manifest, en_manifest, tmp_path / "source")
    assert {0} in [m for m, _ in seen] and {1} in [m for m, _ in seen]  # German (0) and English (1) batches
    for manifests, loss in seen:
        assert (loss > 0) == (manifests == {1}), seen
    # the same from the base's cached outputs
    torch.manual_seed(0)
    cached = build(base_nemo, {"lwf": {"weight": 1.0, "temperature": 2.0, "manifests": [en_manifest],
                                       "cache": str(tmp_path / "base_cache")}})
    cached_seen = _lwf_per_batch(cached, de_manifest, en_manifest, tmp_path / "cached")
    assert [m for m, _ in cached_seen] == [m for m, _ in seen]
    for (_, loss), (_, online) in zip(cached_seen, seen):
        assert (loss > 0) == (online > 0)
    # without lwf.manifests, the German batches are distilled too
    torch.manual_seed(0)
    every = build(base_nemo, {"lwf": {"weight": 1.0, "temperature": 2.0}})
    every_seen = _lwf_per_batch(every, de_manifest, en_manifest, tmp_path / "every")
    assert all(loss > 0 for _, loss in every_seen)


def test_lwf_manifests_must_name_mixed_training_manifests(base_nemo, de_manifest, en_manifest, tmp_path):
    from tests.helpers import data_cfg

    section = {"lwf": {"weight": 1.0, "manifests": [en_manifest]}}
    model = build(base_nemo, section)
    raises_input_error(lambda: model.setup_training_data(data_cfg([de_manifest], model.decoder.vocabulary)),
                       r"lwf\.manifests", r"not mixed", r"train_ds\.mixing")
    raises_input_error(model._prepare_regularization, r"lwf\.manifests", r"training loader")  # no train_ds at all
    other = make_tone_manifest(str(tmp_path), EN_TEXTS[:4], name="other")
    model = build(base_nemo, {"lwf": {"weight": 1.0, "manifests": [other]}})
    mixed = {**data_cfg([de_manifest, en_manifest], model.decoder.vocabulary), "mixing": {"weights": [0.5, 0.5]}}
    raises_input_error(lambda: model.setup_training_data(mixed), r"lwf\.manifests", r"other", r"not one of")
    for bad in ([], [3], ""):
        raises_input_error(lambda bad=bad: RegularizationConfig.from_section({"lwf": {"weight": 1.0, "manifests": bad}}),
                           r"lwf\.manifests", r"list of training manifest paths")
    parsed = RegularizationConfig.from_section({"lwf": {"weight": 1.0, "manifests": en_manifest}})
    assert parsed.lwf.manifests == (en_manifest,) and parsed.as_section()["lwf"]["manifests"] == [en_manifest]


# ---------------------------------------------------------------------------- EWC's Fisher and its cache
def test_fisher_is_the_squared_gradient_and_its_cache_is_reused_and_invalidated(base, tmp_path, monkeypatch):
    manifest = make_tone_manifest(str(tmp_path), EN_TEXTS[:4], name="source")
    ewc = EWCConfig(weight=1.0, manifest=manifest, batches=1, batch_size=4)
    calls = []
    compute = reg.empirical_fisher
    monkeypatch.setattr(reg.fisher, "empirical_fisher", lambda *a, **k: calls.append(1) or compute(*a, **k))
    directory = str(tmp_path / "run" / reg.FISHER_DIR)
    fisher = fisher_for_run(base, ewc, directory, sample_rate=16000)

    loader = reg.fisher._fisher_loader(base, ewc, 16000)
    base.eval()
    loss = training_loss(base, *next(iter(loader))[:4])
    name = "encoder.encoder.1.mconv.0.conv.weight"
    param = dict(base.named_parameters())[name]
    (grad,) = torch.autograd.grad(loss, [param])
    torch.testing.assert_close(fisher[name], grad.pow(2))

    again = fisher_for_run(base, ewc, directory, sample_rate=16000)
    assert len(calls) == 1 and torch.equal(again[name], fisher[name])  # reused

    with open(manifest, "a", encoding="utf-8") as f:  # the manifest changes
        f.write(open(manifest, encoding="utf-8").readline())
    fisher_for_run(base, ewc, directory, sample_rate=16000)
    assert len(calls) == 2

    with torch.no_grad():
        saved = param.detach().clone()
        param.add_(0.5)  # the base changes
    try:
        fisher_for_run(base, ewc, directory, sample_rate=16000)
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert len(calls) == 3
    with open(os.path.join(directory, "fingerprint.json"), encoding="utf-8") as f:
        assert json.load(f)["batches"] == 1


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "section, patterns",
    [
        ({"l2sp": {"weight": -1.0}}, [r"regularization\.l2sp\.weight", r"≥ 0"]),
        ({"ewc": {"weight": 1.0}}, [r"regularization\.ewc\.manifest", r"source"]),
        ({"lwf": {"weight": 1.0, "temperature": 0}}, [r"regularization\.lwf\.temperature"]),
        ({"ewc": {"weight": 1.0, "manifest": "x.json", "batches": 0}}, [r"regularization\.ewc\.batches"]),
        ({"dropout": {"weight": 1.0}}, [r"regularization\.dropout", r"lwf, l2sp, ewc"]),
        ({"l2sp": 0.1}, [r"regularization\.l2sp", r"mapping"]),
        ({"ewc": {"weight": 1.0, "manifest": "x.json", "cache": 3}}, [r"regularization\.ewc\.cache", r"directory"]),
    ],
)
def test_bad_sections_name_the_key(section, patterns):
    raises_input_error(lambda: TransferConfig.from_section({"regularization": section}), r"model\.transfer\.", *patterns)


def test_ewc_manifest_outside_the_base_alphabet_is_refused(base, de_manifest, tmp_path):
    ewc = EWCConfig(weight=1.0, manifest=de_manifest, batches=1)
    raises_input_error(lambda: fisher_for_run(base, ewc, str(tmp_path), sample_rate=16000),
                       r"ewc\.manifest", r"ü|ö|ß", r"source")


def test_regularization_needs_the_base_weights_and_a_base_on_disk(base_nemo, base):
    reinit = build(base_nemo, {"l2sp": {"weight": 1.0}}, reinitialize=True)
    raises_input_error(reinit._prepare_regularization, r"reinitialize")
    in_memory = build(base_nemo, {"l2sp": {"weight": 1.0}}, base_model=base)
    raises_input_error(in_memory._prepare_regularization, r"base_model", r"save_to")


def test_fisher_and_anchors_for_rnnt_and_subword_models(tmp_path, en_manifest):
    from nemo.collections.asr.models import EncDecCTCModelBPE, EncDecRNNTModel

    from nemo_tl.models import TransferRNNTModel
    from tests.tiny_asr import EN_TEXT, build_base, make_tokenizer

    ewc = EWCConfig(weight=1.0, manifest=en_manifest, batches=1, batch_size=4)
    rnnt_path = build_base(EncDecRNNTModel, str(tmp_path / "rnnt.nemo"), labels=EN_LABELS)
    rnnt = ASRModel.restore_from(rnnt_path, map_location="cpu")
    fisher = fisher_for_run(rnnt, ewc, str(tmp_path / "rnnt_fisher"), sample_rate=16000)
    joint_out = f"joint.joint_net.{len(rnnt.joint.joint_net) - 1}.weight"
    assert fisher[joint_out].sum() > 0 and all(torch.isfinite(f).all() for f in fisher.values())
    model = TransferRNNTModel.from_base(rnnt_path, labels=DE_LABELS)
    anchors = {a.name: a for a in anchors_from_base(rnnt, model)}
    assert anchors["decoder.prediction.embed.weight"].rows is not None and joint_out in anchors
    assert l2sp_penalty([a.current() for a in anchors.values()], [a.value for a in anchors.values()], 1.0) == 0

    tokenizer = make_tokenizer(str(tmp_path / "tok"), EN_TEXT, 40)
    bpe = ASRModel.restore_from(build_base(EncDecCTCModelBPE, str(tmp_path / "bpe.nemo"), tokenizer_dir=tokenizer),
                                map_location="cpu")
    fisher = fisher_for_run(bpe, ewc, str(tmp_path / "bpe_fisher"), sample_rate=16000)
    assert fisher["decoder.decoder_layers.0.weight"].sum() > 0


def test_lwf_lattice_loss_counts_only_valid_nodes_and_is_minimal_at_the_base():
    torch.manual_seed(0)
    base_joint = torch.randn(2, 6, 4, 7)
    joint = base_joint.clone().requires_grad_(True)
    frames, targets, columns = torch.tensor([6, 4]), torch.tensor([3, 1]), torch.arange(5)  # 2 duration outputs
    loss = reg.lwf_lattice_loss(joint, base_joint, frames, targets, columns, temperature=2.0)
    loss.backward()
    assert joint.grad.abs().max().item() < 1e-6
    moved = base_joint.clone()
    moved[1, :, 2:] += 5.0  # nodes u > U_b of utterance 1
    moved[1, 4:] += 5.0  # frames t ≥ T_b
    moved[..., 5:] += 5.0  # duration columns
    torch.testing.assert_close(reg.lwf_lattice_loss(moved, base_joint, frames, targets, columns, 2.0), loss.detach())


def test_lwf_on_rnnt_needs_the_base_vocabulary_and_trains_with_it(tmp_path, en_manifest):
    from nemo.collections.asr.models import EncDecRNNTModel

    from nemo_tl.models import TransferRNNTModel
    from tests.tiny_asr import build_base, fit_steps, model_config

    path = build_base(EncDecRNNTModel, str(tmp_path / "rnnt.nemo"), labels=EN_LABELS)

    def make(labels, vocabulary, manifests=None):
        cfg = model_config("rnnt", labels=labels)
        cfg.transfer = {"base_model": path, "vocabulary": vocabulary,
                        "regularization": {"lwf": {"weight": 1.0, "temperature": 2.0, "manifests": manifests}}}
        return TransferRNNTModel(cfg=cfg)

    raises_input_error(make(DE_LABELS, "keep_shared")._prepare_regularization, r"lwf\.weight", r"vocabulary")
    model = make(EN_LABELS, "same")
    trainer = fit_steps(model, en_manifest, steps=1, default_root_dir=str(tmp_path))
    assert torch.isfinite(trainer.callback_metrics["lwf_loss"])
    # on one of two training manifests only: the base's lattice on those utterances alone, 0 on the others
    replayed = make_tone_manifest(str(tmp_path), EN_TEXTS[:8], name="replayed")
    model = make(EN_LABELS, "same", manifests=[replayed])
    torch.manual_seed(0)
    seen = _lwf_per_batch(model, en_manifest, replayed, tmp_path / "named", labels=EN_LABELS)
    assert {0} in [m for m, _ in seen] and {1} in [m for m, _ in seen]
    for manifests, loss in seen:
        assert (loss > 0) == (manifests == {1}), seen


def test_from_base_takes_regularization_for_a_subword_model(tmp_path, en_manifest):
    """Every transfer class carries the regularizers: L2-SP on a BPE CTC model, through from_base."""
    from nemo.collections.asr.models import EncDecCTCModelBPE

    from nemo_tl.models import TransferCTCBPEModel
    from tests.tiny_asr import EN_TEXT, build_base, fit_steps, make_tokenizer

    tokenizer = make_tokenizer(str(tmp_path / "tok"), EN_TEXT, 40)
    path = build_base(EncDecCTCModelBPE, str(tmp_path / "bpe.nemo"), tokenizer_dir=tokenizer)
    model = TransferCTCBPEModel.from_base(path, tokenizer_dir=tokenizer, regularization={"l2sp": {"weight": 0.5}})
    assert model.regularization.l2sp.weight == 0.5
    trainer = fit_steps(model, en_manifest, steps=2, log_every_n_steps=1, default_root_dir=str(tmp_path))
    assert trainer.callback_metrics["l2sp_penalty"] > 0  # the weights moved away from the base, and were pulled back
