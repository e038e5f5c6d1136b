"""Every nemo_tl .nemo restores through NeMo's own ASRModel.restore_from and works with NeMo's transcribe().

(``python -m nemo_tl.transcribe`` is covered in test_scripts_ctc.py; a model extracted from a
multi-softmax RNN-T loading without nemo_tl in test_multisoftmax_model.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
from nemo.collections.asr.models import ASRModel

from tests.conftest import EN_LABELS, load_conf


def _transfer(base_nemo, en_manifest):
    from nemo_tl.models import TransferCTCModel

    return TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=2), en_manifest


def _distill(base_nemo, en_manifest):
    from nemo_tl.models.distill_ctc import DistillCTCModel

    cfg = load_conf("quartznet_tiny")
    cfg.decoder._target_ = "nemo_tl.modules.UncertaintyConvASRDecoder"  # a nemo_tl module inside NeMo's decode path
    cfg.distillation = {"teachers": [{"model": base_nemo}], "uncertainty": False}
    return DistillCTCModel(cfg=cfg), en_manifest


def _multisoftmax(base_nemo, en_manifest, tmp_path):
    from nemo_tl.data.synthetic import make_tone_manifest
    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
    from tests.test_multisoftmax_model import TEXTS, ms_cfg

    manifest = make_tone_manifest(str(tmp_path), TEXTS["en"][:3], name="ms_en", lang="en")
    return MultiSoftmaxRNNTModel(ms_cfg()), manifest


BUILDERS = {"TransferCTCModel": _transfer, "DistillCTCModel": _distill, "MultiSoftmaxRNNTModel": _multisoftmax}


def _texts(hypotheses) -> list[str]:
    if isinstance(hypotheses, tuple):  # (best, all) of some NeMo models
        hypotheses = hypotheses[0]
    return [h if isinstance(h, str) else h.text for h in hypotheses]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_nemo_restore_from_and_transcribe_paths_and_manifest(kind, base_nemo, en_manifest, tmp_path):
    build = BUILDERS[kind]
    torch.manual_seed(0)
    model, manifest = build(base_nemo, en_manifest, tmp_path) if kind == "MultiSoftmaxRNNTModel" else build(
        base_nemo, en_manifest
    )
    path = str(tmp_path / f"{kind}.nemo")
    model.save_to(path)

    restored = ASRModel.restore_from(path, map_location="cpu")  # NeMo's entry point, class read from the archive
    assert type(restored).__name__ == kind and type(restored) is type(model)
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name

    with open(manifest, encoding="utf-8") as f:
        lines = f.readlines()[:3]
    audio = [json.loads(line)["audio_filepath"] for line in lines]
    manifest = tmp_path / "three.json"
    manifest.write_text("".join(lines), encoding="utf-8")
    from_paths = _texts(restored.transcribe(audio, batch_size=2, verbose=False))
    from_manifest = _texts(restored.transcribe(str(manifest), batch_size=2, verbose=False))
    model.eval()
    original = _texts(model.transcribe(audio, batch_size=2, verbose=False))
    assert len(from_paths) == 3 and all(isinstance(t, str) for t in from_paths)
    assert from_paths == original  # the restored model decodes as the saved one did
    assert from_manifest == from_paths  # a manifest gives the same as its files
