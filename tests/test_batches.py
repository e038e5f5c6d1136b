"""nemo_tl.data.batches: named training batches, and a loader rebuilt with another collate function."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from nemo.collections.asr.data.audio_to_text_dataset import get_char_dataset
from omegaconf import OmegaConf

from nemo_tl.data.batches import AudioTextBatch, utterance_ids, with_collate
from nemo_tl.data.mixing import build_mixed_dataloader
from nemo_tl.distill.cache import CachedTeacherBatch
from nemo_tl.distill.teachers import TeacherOutputs
from tests.conftest import DE_LABELS


def _cfg(manifest, **extra):
    return OmegaConf.create(
        {"manifest_filepath": manifest, "labels": DE_LABELS, "sample_rate": 16000, "batch_size": 3, **extra}
    )


def _tensors(batch):
    return [t.tolist() for t in batch if isinstance(t, torch.Tensor)]


def test_nemo_tuples_are_named_once():
    audio, lens, tokens, token_lens = torch.zeros(2, 5), torch.tensor([5, 4]), torch.ones(2, 3), torch.tensor([3, 2])
    ids = torch.tensor([7, 9])
    plain = AudioTextBatch.from_nemo((audio, lens, tokens, token_lens))
    assert plain.sample_ids is None and plain.manifest_ids is None and plain.teacher is None
    assert plain.nemo == (audio, lens, tokens, token_lens) and plain[:4] == plain.nemo  # NeMo's positions kept
    named = AudioTextBatch.from_nemo((audio, lens, tokens, token_lens, ids), manifest_ids=torch.tensor([0, 1]))
    assert named.sample_ids is ids and named.manifest_ids.tolist() == [0, 1]
    assert AudioTextBatch.from_nemo(named) is named
    with pytest.raises(ValueError, match="got 3 elements"):
        AudioTextBatch.from_nemo((audio, lens, tokens))
    # sample and manifest ids by name; NeMo's 5-tuple (return_sample_id) gives its sample ids
    assert utterance_ids(named) == (named.sample_ids, named.manifest_ids)
    assert utterance_ids((audio, lens, tokens, token_lens, ids)) == (ids, None)
    assert utterance_ids((audio, lens, tokens, token_lens)) == (None, None)


def test_lightning_moves_a_batch_and_its_teacher_outputs_field_by_field():
    outputs = TeacherOutputs(log_probs=torch.zeros(2, 4, 3), lengths=torch.tensor([4, 3]), hidden={1: torch.ones(2, 5, 4)})
    batch = AudioTextBatch(
        torch.zeros(2, 5), torch.tensor([5, 4]), torch.ones(2, 3), torch.tensor([3, 2]),
        sample_ids=torch.tensor([0, 1]), teacher=CachedTeacherBatch([outputs]),
    )
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, AudioTextBatch) and moved.audio.is_meta and moved.sample_ids.is_meta
    (on_meta,) = moved.teacher.outputs
    assert on_meta.log_probs.is_meta and on_meta.lengths.is_meta and on_meta.hidden[1].is_meta
    assert moved.manifest_ids is None


def test_with_collate_draws_what_nemos_loader_draws(en_manifest):
    dataset = get_char_dataset(_cfg(en_manifest))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=True, drop_last=True,
                                         collate_fn=dataset.collate_fn)
    named = with_collate(loader, lambda samples: AudioTextBatch.from_nemo(dataset.collate_fn(samples)))
    assert named.dataset is dataset and named.sampler is loader.sampler and named.drop_last
    torch.manual_seed(3)
    expected = [_tensors(b) for b in loader]
    torch.manual_seed(3)
    got = list(named)
    assert all(isinstance(b, AudioTextBatch) for b in got) and len(got) == 2  # 8 utterances, drop_last
    assert [_tensors(b) for b in got] == expected


def test_with_collate_keeps_the_mixed_sampler(en_manifest, de_manifest):
    loader = build_mixed_dataloader(
        _cfg([en_manifest, de_manifest], mixing={"weights": [0.5, 0.5], "num_batches": 4}), get_char_dataset
    )
    again = with_collate(loader, loader.collate_fn)
    assert again.sampler is loader.sampler and again.batch_size is None and len(again) == 4
    assert [_tensors(b) for b in again] == [_tensors(b) for b in loader]
