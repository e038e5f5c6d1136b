"""DistillCTCModel: teachers, objective, offline cache, .nemo round trip and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from omegaconf import OmegaConf

from nemo_tl.data.batches import AudioTextBatch
from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.distill.cache import CachedTeacherBatch, CachedTeacherCollate, TeacherCache
from nemo_tl.distill.cache import main as cache_main
from nemo_tl.errors import InputError
from nemo_tl.models.distill_ctc import LOG_KEYS, DistillCTCModel
from nemo_tl.modules import UncertaintyConvASRDecoder
from tests.conftest import DE_LABELS, ROOT, load_conf
from tests.helpers import cpu_trainer, raises_input_error, snapshot

UNC = "nemo_tl.modules.UncertaintyConvASRDecoder"


def _tiny(uncertainty: bool = True, labels=None, first_stride: int = 2, last_filters: int | None = None):
    cfg = load_conf("quartznet_tiny")
    if uncertainty:
        cfg.decoder._target_ = UNC
    if labels is not None:
        cfg.labels = list(labels)
        cfg.decoder.vocabulary = list(labels)
        cfg.decoder.num_classes = len(labels)
    cfg.encoder.jasper[0].stride = [first_stride]
    if last_filters is not None:
        cfg.encoder.jasper[3].filters = last_filters
    return cfg


def _save(model, directory, name):
    path = str(directory / f"{name}.nemo")
    model.save_to(path)
    return path


@pytest.fixture(scope="session")
def teachers_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="session")
def teacher_a(teachers_dir):
    torch.manual_seed(1)
    return _save(EncDecCTCModel(cfg=_tiny()), teachers_dir, "teacher_a")


@pytest.fixture(scope="session")
def teacher_b(teachers_dir):
    torch.manual_seed(2)
    return _save(EncDecCTCModel(cfg=_tiny(last_filters=80)), teachers_dir, "teacher_b")


def _student_cfg(teachers, manifest=None, **distillation):
    cfg = _tiny(uncertainty=distillation.pop("student_uncertainty", True))
    if manifest is not None:
        cfg.train_ds.manifest_filepath = manifest
        cfg.train_ds.batch_size = 4
        cfg.train_ds.shuffle = False
    section = {"teachers": teachers, "uncertainty": True, **distillation}
    cfg.distillation = section
    return cfg


def _two(teacher_a, teacher_b, wa=1.0, wb=1.0):
    return [{"model": teacher_a, "weight": wa}, {"model": teacher_b, "weight": wb}]


def _first_batch(model):
    return next(iter(model._train_dl))


def _parts(model, batch, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return {k: v.item() for k, v in model.distillation_step(batch).items()}


HIDDEN = {"student_blocks": [3], "teacher_blocks": [3], "weight": 0.1}


@pytest.fixture(scope="module")
def two_teacher_model(teacher_a, teacher_b, en_manifest):
    """A student of teachers a (γ 1) and b (γ 0.5) with hidden KD; tests reset what they change."""
    torch.manual_seed(0)
    return DistillCTCModel(cfg=_student_cfg(_two(teacher_a, teacher_b, 1.0, 0.5), en_manifest, hidden=HIDDEN))


@pytest.fixture
def student(two_teacher_model):
    """``two_teacher_model`` in eval mode (no noise, dither or augmentation), its settings restored afterwards."""
    model = two_teacher_model
    settings, weights = model.distillation, [t.weight for t in model.teachers]
    model.eval()
    yield model
    model._set_distillation(settings)
    for teacher, weight in zip(model.teachers, weights):
        teacher.weight = weight


def _configure(model, weights=None, **changes):
    if weights is not None:
        for teacher, weight in zip(model.teachers, weights):
            teacher.weight = weight
    model._set_distillation(dataclasses.replace(model.distillation, **changes))


# ---------------------------------------------------------------------------- teachers are not part of the student
def test_teachers_are_frozen_and_outside_the_student(two_teacher_model):
    model = two_teacher_model
    assert [t.weight for t in model.teachers] == [1.0, 0.5]
    student_params = {id(p) for p in model.parameters()}
    for teacher in model.teachers:
        assert not teacher.model.training
        assert all(not p.requires_grad for p in teacher.model.parameters())
        assert not any(id(p) in student_params for p in teacher.model.parameters())
        assert not any(m is teacher.model for m in model.modules())
    assert not any("teacher" in k for k in model.state_dict())
    # teacher b's block 3 is 80 wide, the student's 96: a learned projection for hidden KD
    assert list(model.hidden_projections.keys()) == ["1:3:3"]


def test_training_updates_only_the_student_and_logs_every_part(teacher_a, teacher_b, en_manifest):
    model = DistillCTCModel(cfg=_student_cfg(_two(teacher_a, teacher_b), en_manifest, hidden=HIDDEN))
    teachers_before = [snapshot(t.model) for t in model.teachers]
    student_before = snapshot(model)
    trainer = cpu_trainer(2)
    model.set_trainer(trainer)
    trainer.fit(model)
    for teacher, before in zip(model.teachers, teachers_before):
        assert not teacher.model.training
        assert all(torch.equal(v, before[k]) for k, v in teacher.model.state_dict().items())
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any(k.startswith("encoder.") for k in moved)
    assert any(k.startswith("decoder.logvar_layers") for k in moved)
    assert any(k.startswith("hidden_projections.") for k in moved)
    for key in LOG_KEYS:
        assert key in trainer.logged_metrics and torch.isfinite(trainer.logged_metrics[key])
    for key in ("tok_kd_loss", "unc_kd_loss", "hidden_kd_loss"):
        assert trainer.logged_metrics[key] > 0


def test_gradients_reach_only_the_student(student):
    student.train()
    student.zero_grad()
    student.distillation_step(_first_batch(student))["train_loss"].backward()
    for teacher in student.teachers:
        assert all(p.grad is None for p in teacher.model.parameters())
    assert student.decoder.logvar_layers[0].weight.grad.abs().sum() > 0
    assert student.encoder.encoder[0].mconv[0].conv.weight.grad.abs().sum() > 0
    assert student.hidden_projections["1:3:3"].weight.grad.abs().sum() > 0
    student.zero_grad()


def test_teachers_move_with_the_student_device(teacher_a):
    model = DistillCTCModel(cfg=_student_cfg([{"model": teacher_a}]))
    model.move_teachers("meta")
    assert next(model.teachers[0].model.parameters()).device.type == "meta"
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------------------- objective in the model
def test_two_weighted_teachers_add_up(student):
    batch = _first_batch(student)

    def parts(weights, **changes):
        _configure(student, weights, **changes)
        return _parts(student, batch)

    only_a, only_b, both = parts([1.0, 0.0]), parts([0.0, 1.0]), parts([2.0, 0.5])
    for key in ("tok_kd_loss", "unc_kd_loss", "hidden_kd_loss"):
        assert both[key] == pytest.approx(2.0 * only_a[key] + 0.5 * only_b[key], rel=1e-5)
    assert both["ctc_loss"] == pytest.approx(only_a["ctc_loss"], rel=1e-6)
    hp = parts([2.0, 0.5], alpha=0.7, beta=0.3, hard_label_weight=0.4)
    expected = 0.4 * hp["ctc_loss"] + 0.7 * (hp["tok_kd_loss"] + 0.3 * hp["unc_kd_loss"]) + 0.1 * hp["hidden_kd_loss"]
    assert hp["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_conditional_distillation_drops_teachers_that_transcribe_wrongly(student):
    batch = _first_batch(student)
    _configure(student, conditional=True)
    # untrained teachers get every transcript wrong: only the hard labels remain
    dropped = _parts(student, batch)
    assert dropped["tok_kd_loss"] == dropped["unc_kd_loss"] == dropped["hidden_kd_loss"] == 0.0
    # a teacher that is right on utterance 0 keeps its weight there only
    outputs = student._teacher_batch(AudioTextBatch.from_nemo(batch))
    transcript, transcript_len = batch[2].clone(), batch[3].clone()
    blank = student.decoder.num_classes_with_blank - 1
    path = outputs[0].log_probs[0, : int(outputs[0].lengths[0])].argmax(-1).tolist()
    said = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
    transcript[0, : len(said)] = torch.tensor(said)
    transcript_len[0] = len(said)
    weights = student._teacher_weights(outputs, transcript, transcript_len)
    assert weights[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert weights[1].tolist() == [0.0] * 4


def test_confidence_weighting_follows_the_more_confident_teacher(student):
    batch = _first_batch(student)
    outputs = student._teacher_batch(AudioTextBatch.from_nemo(batch))
    outputs[1].log_probs = (outputs[1].log_probs * 50).log_softmax(-1)  # teacher b: confident on every frame
    assert student._teacher_weights(outputs, batch[2], batch[3]).tolist() == [[1.0] * 4, [0.5] * 4]
    _configure(student, teacher_weighting="confidence")
    weights = student._teacher_weights(outputs, batch[2], batch[3])
    assert weights.sum(0).tolist() == pytest.approx([1.5] * 4)
    assert torch.all(weights[1] > 0.5) and torch.all(weights[0] < 1.0)


# ---------------------------------------------------------------------------- offline KD
def test_cache_gives_the_same_losses_as_online_teachers(student, teacher_a, teacher_b, en_manifest, tmp_path):
    cache_dir = str(tmp_path / "cache")
    # teacher 0's cache built by the command line, teacher 1's automatically by the model
    argv = [teacher_a, en_manifest, "--out", f"{cache_dir}/teacher_0", "--hidden-blocks", "3", "--batch-size", "3"]
    assert cache_main([*argv, "--device", "cpu"]) == 0
    cached = DistillCTCModel(
        cfg=_student_cfg(_two(teacher_a, teacher_b, 1.0, 0.5), en_manifest, hidden=HIDDEN, cache=cache_dir)
    )
    assert len(cached._caches) == 2 and TeacherCache.is_complete(f"{cache_dir}/teacher_1")
    cached.load_state_dict(student.state_dict())
    cached.eval()
    # the loader is built with the collate function that reads the teachers' outputs
    assert isinstance(cached._train_dl.collate_fn, CachedTeacherCollate)
    batch = _first_batch(cached)
    assert isinstance(batch, AudioTextBatch) and isinstance(batch.teacher, CachedTeacherBatch)
    assert len(batch.teacher.outputs) == 2 and batch.manifest_ids is None
    assert batch.sample_ids.tolist() == [0, 1, 2, 3]  # shuffle: false
    read_in_step = _parts(cached, batch._replace(teacher=None))  # by sample id, in the step: the same
    assert read_in_step == pytest.approx(_parts(cached, batch), rel=1e-6)
    _configure(student, teacher_weighting="confidence")
    _configure(cached, teacher_weighting="confidence")
    for model in (student, cached):
        model.teachers[0].weight = 1.0
    got, expected = _parts(cached, batch), _parts(student, batch.nemo)
    for key in LOG_KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
    _configure(student, conditional=True, teacher_weighting="fixed")
    _configure(cached, conditional=True, teacher_weighting="fixed")
    assert _parts(cached, batch) == pytest.approx(_parts(student, batch.nemo), rel=1e-4, abs=1e-5)
    _configure(student, conditional=False)
    _configure(cached, conditional=False)
    got, expected = _parts(cached, batch), _parts(student, batch.nemo)
    for key in LOG_KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
    assert got["tok_kd_loss"] > 0 and got["hidden_kd_loss"] > 0
    # training from a cache: see test_example_script_runs_with_hydra_overrides


def test_cache_from_another_manifest_or_teacher_is_refused(teacher_a, teacher_b, en_manifest, tmp_path):
    cache_dir = str(tmp_path / "cache")
    DistillCTCModel(cfg=_student_cfg([{"model": teacher_a}], en_manifest, cache=cache_dir))
    other = make_tone_manifest(str(tmp_path), ["nine", "ten"], name="other")
    with pytest.raises(InputError, match="manifest content"):
        DistillCTCModel(cfg=_student_cfg([{"model": teacher_a}], other, cache=cache_dir))
    with pytest.raises(InputError, match="the teacher"):
        DistillCTCModel(cfg=_student_cfg([{"model": teacher_b}], en_manifest, cache=cache_dir))


def test_cache_with_mixed_manifests(student, teacher_a, teacher_b, en_manifest, tmp_path):
    other = make_tone_manifest(str(tmp_path), ["nine", "ten", "zero", "one"], name="other", seed=7)
    cfg = _student_cfg(_two(teacher_a, teacher_b, 1.0, 0.5), hidden=HIDDEN, cache=str(tmp_path / "cache"))
    cfg.train_ds.manifest_filepath = [en_manifest, other]
    cfg.train_ds.batch_size = 4
    cfg.train_ds.mixing = {"weights": [0.5, 0.5], "seed": 3}
    cached = DistillCTCModel(cfg=cfg)
    cached.load_state_dict(student.state_dict())
    cached.eval()
    batches = list(cached._train_dl)
    assert all(isinstance(b.teacher, CachedTeacherBatch) and b.sample_ids is not None for b in batches)
    assert {m for b in batches for m in b.manifest_ids.tolist()} == {0, 1}
    assert cached._train_dl.sampler is cached.mixed_sampler  # the mixed sampler (and its resume state) kept
    # the non-finite guard names a row's audio file by the batch's sample and manifest ids
    listed = [{json.loads(line)["audio_filepath"] for line in open(m)} for m in (en_manifest, other)]
    for batch in batches:
        files = cached._batch_audio_files(batch)
        assert [f in listed[m] for f, m in zip(files, batch.manifest_ids.tolist())] == [True] * len(files)
    for batch in batches[:2]:
        got, expected = _parts(cached, batch), _parts(student, batch.nemo)
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_cache_holds_teacher_outputs_on_clean_audio(teacher_a, en_manifest, tmp_path):
    """Audio perturbations of train_ds are off while caching: the same cache as one built from the manifest."""
    cache_main([teacher_a, en_manifest, "--out", str(tmp_path / "clean"), "--device", "cpu"])
    cfg = _student_cfg([{"model": teacher_a}], en_manifest, cache=str(tmp_path / "auto"))
    cfg.train_ds.augmentor = {"white_noise": {"prob": 1.0, "min_level": -30, "max_level": -20}}
    model = DistillCTCModel(cfg=cfg)
    assert model._train_dl.dataset.featurizer.augmentor._pipeline  # still augmented for the student
    keys = [
        os.path.basename(p)[:-3] for _, _, files in os.walk(tmp_path / "clean") for p in files if p.endswith(".pt")
    ]
    assert len(keys) == 8
    clean = TeacherCache(str(tmp_path / "clean"), {}).read(keys)
    auto = model._caches[0].read(keys)
    assert torch.allclose(auto.log_probs, clean.log_probs, atol=1e-5)
    assert torch.equal(auto.lengths, clean.lengths)


# ---------------------------------------------------------------------------- saving, restoring, starting points
def test_student_restores_from_nemo_without_its_teachers(teacher_a, teacher_b, tmp_path):
    from nemo_tl.data.synthetic import tone_audio

    hidden = {"student_blocks": [3], "teacher_blocks": [3], "weight": 0.1}
    model = DistillCTCModel(cfg=_student_cfg(_two(teacher_a, teacher_b), hidden=hidden))
    path = str(tmp_path / "student.nemo")
    model.save_to(path)
    moved_away = str(tmp_path / "gone.nemo")
    os.rename(teacher_a, moved_away)  # the teachers are not needed to restore
    try:
        restored = ASRModel.restore_from(path, map_location="cpu")
    finally:
        os.rename(moved_away, teacher_a)
    assert isinstance(restored, DistillCTCModel) and restored.teachers == []
    assert isinstance(restored.decoder, UncertaintyConvASRDecoder)
    assert list(restored.hidden_projections.keys()) == ["1:3:3"]
    audio = torch.tensor(tone_audio("seven")).unsqueeze(0)
    length = torch.tensor([audio.shape[1]])
    model.eval(), restored.eval()
    with torch.no_grad():
        expected, _, _ = model(input_signal=audio, input_signal_length=length)
        got, _, _ = restored(input_signal=audio, input_signal_length=length)
    assert torch.equal(got, expected)
    assert set(restored.state_dict()) == set(model.state_dict())
    restored.on_fit_start()  # training it further loads the teachers named in its config
    assert [t.weight for t in restored.teachers] == [1.0, 1.0]


def test_student_starts_from_a_teacher_through_the_transfer_section(teacher_a):
    cfg = _student_cfg([{"model": teacher_a}])
    cfg.transfer = {"base_model": teacher_a, "vocabulary": "same"}
    model = DistillCTCModel(cfg=cfg)
    teacher = model.teachers[0].model
    assert torch.equal(model.encoder.encoder[2].mconv[0].conv.weight, teacher.encoder.encoder[2].mconv[0].conv.weight)
    assert torch.equal(model.decoder.logvar_layers[0].weight, teacher.decoder.logvar_layers[0].weight)


# ---------------------------------------------------------------------------- bad input
@pytest.fixture(scope="session")
def teacher_plain(base_nemo):
    return base_nemo  # a plain EncDecCTCModel: no uncertainty head


@pytest.fixture(scope="session")
def teacher_de(teachers_dir):
    return _save(EncDecCTCModel(cfg=_tiny(labels=DE_LABELS)), teachers_dir, "teacher_de")


@pytest.fixture(scope="session")
def teacher_stride1(teachers_dir):
    return _save(EncDecCTCModel(cfg=_tiny(first_stride=1)), teachers_dir, "teacher_stride1")


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty", "teacher list is empty"),
        ("no_section", "distillation section is missing"),
        ("vocabulary", "vocabulary differs"),
        ("frame_rate", "frame every"),
        ("teacher_without_head", "teacher's decoder"),
        ("student_without_head", "student's decoder"),
        ("missing_file", "does not exist"),
        ("weighting", "unknown teacher_weighting"),
        ("negative_weight", "weight"),
        ("block_out_of_range", "does not exist"),
        ("unpaired_blocks", "pair up"),
        ("unknown_key", "unknown key"),
    ],
)
def test_bad_input_raises_input_error_with_a_fix(case, match, teacher_a, teacher_plain, teacher_de, teacher_stride1):
    one = [{"model": teacher_a}]
    cfg = {
        "empty": lambda: _student_cfg([]),
        "no_section": lambda: _tiny(),
        "vocabulary": lambda: _student_cfg([{"model": teacher_de}], uncertainty=False),
        "frame_rate": lambda: _student_cfg([{"model": teacher_stride1}]),
        "teacher_without_head": lambda: _student_cfg([{"model": teacher_plain}]),
        "student_without_head": lambda: _student_cfg(one, student_uncertainty=False),
        "missing_file": lambda: _student_cfg([{"model": "/no/such/teacher.nemo"}]),
        "weighting": lambda: _student_cfg(one, teacher_weighting="entropy"),
        "negative_weight": lambda: _student_cfg([{"model": teacher_a, "weight": -1.0}]),
        "block_out_of_range": lambda: _student_cfg(
            one, hidden={"student_blocks": [9], "teacher_blocks": [1], "weight": 0.1}
        ),
        "unpaired_blocks": lambda: _student_cfg(one, hidden={"student_blocks": [1, 2], "teacher_blocks": [1]}),
        "unknown_key": lambda: _student_cfg(one, teacher_weight="fixed"),
    }[case]()
    with pytest.raises(InputError, match=match) as info:
        DistillCTCModel(cfg=OmegaConf.create(cfg))
    assert "Fix:" in str(info.value)


# ---------------------------------------------------------------------------- example script
def test_example_script_runs_with_hydra_overrides(teacher_a, en_manifest, tmp_path):
    conf = OmegaConf.load(os.path.join(ROOT, "conf", "distill_ctc.yaml"))
    tiny = OmegaConf.load(os.path.join(ROOT, "conf", "quartznet_tiny.yaml"))
    conf.model.preprocessor, conf.model.encoder = tiny.model.preprocessor, tiny.model.encoder
    conf.model.spec_augment.rect_freq, conf.model.spec_augment.rect_time = 10, 20  # 40 mel bands, short clips
    conf.model.decoder.feat_in = 128
    OmegaConf.save(conf, tmp_path / "distill_tiny.yaml")
    out = tmp_path / "student.nemo"
    args = [
        f"--config-path={tmp_path}",
        "--config-name=distill_tiny",
        f"model.distillation.teachers=[{{model:{teacher_a},weight:1.0}}]",
        f"model.distillation.cache={tmp_path / 'cache'}",
        f"model.train_ds.manifest_filepath={en_manifest}",
        "trainer.max_steps=1",
        "trainer.accelerator=cpu",
        "+trainer.enable_progress_bar=false",
        f"exp_manager.exp_dir={tmp_path / 'exp'}",
        "exp_manager.create_checkpoint_callback=false",
        "exp_manager.create_tensorboard_logger=false",
        f"save_to={out}",
    ]
    script = os.path.join(ROOT, "examples", "distill_ctc.py")
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    restored = ASRModel.restore_from(str(out), map_location="cpu")
    assert isinstance(restored, DistillCTCModel) and restored.teachers == []
    assert TeacherCache.is_complete(str(tmp_path / "cache" / "teacher_0"))


def test_forgetting_regularizers_are_refused_by_the_distillation_model(teacher_a):
    """DistillCTCModel has its own objective: a regularization section would be ignored, so it is an error."""
    cfg = OmegaConf.create(_student_cfg([{"model": teacher_a}]))
    cfg.transfer = {"regularization": {"l2sp": {"weight": 0.1}}}
    raises_input_error(lambda: DistillCTCModel(cfg=cfg), r"model\.transfer\.regularization", "TransferCTCModel")
