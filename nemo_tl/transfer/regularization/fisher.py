"""EWC's empirical diagonal Fisher at θ_base, and its cache beside the run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import torch
from nemo.collections.asr.models import ASRModel
from nemo.utils import logging

from nemo_tl.errors import input_error
from nemo_tl.transfer.regularization.config import WHERE, EWCConfig
from nemo_tl.transfer.tokens import model_tokens

FISHER_DIR = "ewc_fisher"


def training_loss(
    model: ASRModel, audio: torch.Tensor, audio_len: torch.Tensor, tokens: torch.Tensor, tokens_len: torch.Tensor
) -> torch.Tensor:
    """A NeMo ASR model's training loss on a batch: CTC, or RNN-T for a model with a joint (hybrids too).

    audio (B, S), audio_len (B,), tokens (B, U), tokens_len (B,); NeMo's loss reduction.
    """
    joint = getattr(model, "joint", None)
    if joint is None:
        log_probs, encoded_len, _ = model.forward(input_signal=audio, input_signal_length=audio_len)
        return model.loss(log_probs=log_probs, targets=tokens, input_lengths=encoded_len, target_lengths=tokens_len)
    encoded, encoded_len = model.forward(input_signal=audio, input_signal_length=audio_len)[:2]
    decoded, target_len, _ = model.decoder(targets=tokens, target_length=tokens_len)
    if joint.fuse_loss_wer:
        return joint(encoder_outputs=encoded, decoder_outputs=decoded, encoder_lengths=encoded_len,
                     transcripts=tokens, transcript_lengths=target_len, compute_wer=False)[0]
    log_probs = joint(encoder_outputs=encoded, decoder_outputs=decoded)
    return model.loss(log_probs=log_probs, targets=tokens, input_lengths=encoded_len, target_lengths=target_len)


def empirical_fisher(model: ASRModel, loader: Iterable, batches: int) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher at the model's current weights: the mean over ``batches`` batches of (∇L)².

    L is :func:`training_loss` on a batch ``(audio, audio_len, tokens, tokens_len, ...)``; the model
    runs in eval mode (no SpecAugment, dither or dropout; BatchNorm uses its statistics). Returns
    name -> F (the parameter's shape, float32, on its device). Weights, ``requires_grad`` flags and
    the train/eval mode are left as they were.
    """
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    device = next(model.parameters()).device
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    seen = 0
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in loader:
                if seen == batches:
                    break
                loss = training_loss(model, *(t.to(device) for t in batch[:4]))
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[n] += g.detach().float().pow(2)
                seen += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if seen == 0:
        raise ValueError("the EWC loader gave no batches")
    return {n: f / seen for n, f in fisher.items()}


def _fisher_loader(base_model: ASRModel, ewc: EWCConfig, sample_rate: int) -> torch.utils.data.DataLoader:
    """The EWC manifest's batches for the base, in order; a character base's alphabet is checked first."""
    from nemo.collections.asr.data.audio_to_text import AudioToBPEDataset, AudioToCharDataset

    from nemo_tl.data.validate import check_manifests, default_parser

    where = f"{WHERE}.ewc.manifest"
    tokenizer = getattr(base_model, "tokenizer", None)
    if tokenizer is not None:
        check_manifests([ewc.manifest], sample_rate=sample_rate, where=where)
        dataset = AudioToBPEDataset(manifest_filepath=ewc.manifest, tokenizer=tokenizer, sample_rate=sample_rate)
    else:
        labels = model_tokens(base_model)
        try:
            check_manifests([ewc.manifest], labels=labels, sample_rate=sample_rate, where=where)
        except ValueError as e:
            raise input_error(
                f"the EWC manifest does not fit the base model ({e})", where=where,
                fix="give a manifest of the base model's own (source) language: its Fisher information measures "
                "what the base needs to keep recognizing it",
            ) from e
        dataset = AudioToCharDataset(manifest_filepath=ewc.manifest, labels=labels, sample_rate=sample_rate,
                                     parser=default_parser(labels))
    return torch.utils.data.DataLoader(dataset, batch_size=ewc.batch_size, shuffle=False,
                                       collate_fn=dataset.collate_fn)


def fisher_for_run(base_model: ASRModel, ewc: EWCConfig, directory: str, *, sample_rate: int) -> dict[str, torch.Tensor]:
    """The base's Fisher for ``ewc``: read from ``directory`` when its fingerprint matches, else computed there.

    The manifest is checked first (every transcript within the base's alphabet: InputError otherwise).
    Files: ``fisher.pt`` and ``fingerprint.json`` (written last, so an interrupted write is recomputed).
    """
    from nemo_tl.distill.cache import cache_fingerprint

    if not os.path.isfile(ewc.manifest):
        raise input_error(f"manifest {ewc.manifest!r} does not exist", where=f"{WHERE}.ewc.manifest",
                          fix="give the path of an existing NeMo manifest of the source (base) data")
    loader = _fisher_loader(base_model, ewc, sample_rate)  # checks the manifest
    expected = cache_fingerprint(base_model, [ewc.manifest], sample_rate=sample_rate)
    expected.update({"kind": "ewc_fisher", "batches": ewc.batches, "batch_size": ewc.batch_size})
    expected = json.loads(json.dumps(expected))
    stamp, weights = os.path.join(directory, "fingerprint.json"), os.path.join(directory, "fisher.pt")
    try:
        with open(stamp, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        found = None
    if found == expected and os.path.isfile(weights):
        logging.info(f"EWC: reusing the Fisher information in {directory}")
        return torch.load(weights, map_location="cpu", weights_only=True)
    if found is not None:
        logging.info(f"EWC: the Fisher information in {directory} was computed for another base or manifest; "
                     "recomputing it")
    fisher = empirical_fisher(base_model, loader, ewc.batches)
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    tmp = f"{weights}.tmp{os.getpid()}"
    torch.save({n: f.cpu() for n, f in fisher.items()}, tmp)
    os.replace(tmp, weights)
    with open(f"{stamp}.tmp{os.getpid()}", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)
    os.replace(f"{stamp}.tmp{os.getpid()}", stamp)
    return fisher
