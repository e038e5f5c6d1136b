""":class:`ForgettingRegularizationMixin`: the regularization section's terms in a transfer model's training."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from nemo.collections.asr.models import ASRModel
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import attached_trainer, logs_this_step
from nemo_tl.data.batches import AudioTextBatch
from nemo_tl.errors import input_error
from nemo_tl.transfer.regularization.config import WHERE, LwFConfig, RegularizationConfig
from nemo_tl.transfer.regularization.fisher import FISHER_DIR, fisher_for_run
from nemo_tl.transfer.regularization.penalties import (
    add_penalty_gradients,
    anchors_from_base,
    ewc_penalty,
    l2sp_penalty,
    lwf_lattice_loss,
    lwf_loss,
    rnnt_joint_outputs,
)
from nemo_tl.transfer.tokens import model_tokens
from nemo_tl.transfer.vocabulary import shared_label_rows


def _keep_first(store: dict, key: str, pick: Any) -> Any:
    """A forward hook that keeps ``pick(output)`` of the module's first call in ``store[key]`` (and returns None,
    so the output is left as it is)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if key not in store:
            store[key] = pick(output)

    return hook


def run_directory(trainer: Any) -> str:
    """The directory a run writes to: exp_manager's log dir, else the trainer's default_root_dir."""
    return str(getattr(trainer, "log_dir", None) or trainer.default_root_dir)


def _lwf_manifest_indices(manifests: Sequence[str], train_ds: Any, loader: Any) -> torch.Tensor:
    """The indices, among ``train_ds.manifest_filepath``, of the manifests ``lwf.manifests`` names.

    The batches must say which manifest each utterance comes from: the training data is mixed
    (``train_ds.mixing``), whose loader numbers the manifests in ``manifest_filepath``'s order.
    """
    from nemo_tl.data.mixing import MixedDataset, mixed_manifest_paths

    where = f"{WHERE}.lwf.manifests"
    if not isinstance(loader.dataset, MixedDataset):
        raise input_error(
            "LwF on some training manifests only needs batches that say which manifest each utterance comes "
            "from, but train_ds is not mixed",
            where=where,
            fix="list the target and source manifests in train_ds.manifest_filepath with train_ds.mixing "
            "(e.g. mixing: {weights: [0.8, 0.2]}), or set lwf.manifests: null",
        )
    paths = mixed_manifest_paths(train_ds)
    index = {os.path.realpath(p): i for i, p in reversed(list(enumerate(paths)))}  # the first of equal paths
    indices = []
    for manifest in manifests:
        i = index.get(os.path.realpath(manifest))
        if i is None:
            raise input_error(
                f"{manifest} is not one of the training manifests {paths}",
                where=where,
                fix="name manifests of train_ds.manifest_filepath (the source data replayed), as written there",
            )
        indices.append(i)
    return torch.tensor(indices, dtype=torch.long)


# ---------------------------------------------------------------------------- the model mixin
class ForgettingRegularizationMixin:
    """Adds ``model.transfer.regularization``'s terms to a transfer model's training.

    List it before the NeMo class. ``training_step`` calls ``super().training_step`` (NeMo's step)
    and adds w · L_tok (LwF) to the loss, logged as ``lwf_loss``; LwF reads the model's outputs from
    that same forward (hooks on the encoder and on the CTC decoder, or the RNN-T joint), so nothing
    of the model is computed twice. L2-SP's (w/2)‖θ − θ_base‖² and EWC's (w/2) Σ F (θ − θ_base)² are
    not in the loss: ``on_before_optimizer_step`` (once per optimizer step, after the backward of
    every accumulated batch) adds their gradients to the gradients (:func:`add_penalty_gradients`);
    ``on_train_batch_end`` logs their values as ``l2sp_penalty``, ``ewc_penalty`` on the steps
    Lightning sends to the loggers (``log_every_n_steps``). With every weight 0 the step is NeMo's,
    untouched.
    """

    _forgetting_base: list  # [the frozen base model] for online LwF, outside the module tree (not saved)
    _forgetting_anchors: list
    _regularization_ready: bool = False
    _regularization_config: RegularizationConfig | None = None
    _forgetting_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # LwF: (model columns, base columns)
    _lwf_manifest_ids: torch.Tensor | None = None  # LwF: the training manifests' indices lwf.manifests names

    @property
    def regularization(self) -> RegularizationConfig:
        """The validated ``model.transfer.regularization`` section."""
        parsed = getattr(self, "_regularization_config", None)
        if parsed is None:
            transfer = self.cfg.get("transfer") if self.cfg is not None else None
            parsed = RegularizationConfig.from_section(transfer.get("regularization") if transfer is not None else None)
            self._regularization_config = parsed
        return parsed

    # -- setup
    def _regularization_base(self) -> ASRModel:
        from nemo_tl.distill.teachers import freeze_teacher
        from nemo_tl.transfer.base import load_base_model

        load = getattr(type(self), "_load_base", None) or load_base_model  # a transfer model checks the base's kind
        transfer = self.cfg.transfer
        spec = transfer.get("base_model")
        if transfer.get("reinitialize"):
            raise input_error(
                "regularization pulls the model towards the base's weights, but reinitialize: true starts "
                "from fresh weights",
                where=WHERE,
                fix="set model.transfer.reinitialize: false, or remove model.transfer.regularization",
            )
        if not isinstance(spec, str) or spec.startswith("<in-memory"):
            raise input_error(
                f"regularization needs the base model when training starts, but transfer.base_model is {spec!r}",
                where="model.transfer.base_model",
                fix="save the base with base.save_to('base.nemo') and build the model from that path "
                "(TransferCTCModel.from_base('base.nemo', ...))",
            )
        return freeze_teacher(load(spec))

    def _prepare_regularization(self) -> None:
        """Load the base, build the anchors and (EWC) the Fisher; called when training starts."""
        reg = self.regularization
        self._forgetting_base, self._forgetting_anchors, self._forgetting_rows = [], [], None
        self._regularization_ready = True
        if not reg.active:
            return
        if reg.lwf.weight > 0 and reg.lwf.manifests is not None and self._lwf_manifest_ids is None:
            raise input_error(
                "lwf.manifests needs the model's own training loader, whose batches say which manifest each "
                "utterance comes from, but the model has none",
                where=f"{WHERE}.lwf.manifests",
                fix="give the data as model.train_ds (with mixing) instead of a DataLoader passed to trainer.fit, "
                "or set lwf.manifests: null",
            )
        if self._lwf_manifest_ids is not None:  # on the device once, not copied from the host every step
            self._lwf_manifest_ids = self._lwf_manifest_ids.to(self.device)
        base = self._regularization_base().to(self.device)
        if reg.lwf.weight > 0 and self._lwf_on_joint:
            self._check_rnnt_lwf(base, reg.lwf)
        if reg.lwf.weight > 0 and reg.lwf.cache is None:
            self._forgetting_base = [base]  # kept only where it runs every step
        output_rows = self.cfg.transfer.get("vocabulary") != "reinit"
        if reg.needs_anchors:
            self._forgetting_anchors = anchors_from_base(base, self, output_rows=output_rows)
        if reg.ewc.weight > 0:
            directory = reg.ewc.cache or os.path.join(run_directory(self.trainer), FISHER_DIR)
            fisher = fisher_for_run(base, reg.ewc, directory, sample_rate=int(self.cfg.get("sample_rate", 16000)))
            for anchor in self._forgetting_anchors:
                anchor.set_fisher(fisher)
        if reg.lwf.weight > 0:
            base_rows, rows = shared_label_rows(model_tokens(base), model_tokens(self))
            self._forgetting_rows = tuple(torch.tensor(r, dtype=torch.long, device=self.device) for r in (rows, base_rows))
            # RNN-T: equal vocabularies, so the columns are the tokens and blank, in order
            if reg.lwf.cache is not None:
                self._prepare_lwf_cache(base, reg.lwf.cache)

    @property
    def _lwf_on_joint(self) -> bool:
        """LwF compares the RNN-T joint's outputs (a model with a joint), else the CTC decoder's."""
        return getattr(self, "joint", None) is not None

    def _check_rnnt_lwf(self, base: ASRModel, lwf: LwFConfig) -> None:
        where = f"{WHERE}.lwf"
        if model_tokens(base) != model_tokens(self):
            raise input_error(
                "LwF on an RNN-T model needs the base's vocabulary: the joint's outputs at each lattice node depend "
                "on the transcript's tokens, which the base cannot read in another vocabulary",
                where=f"{where}.weight",
                fix="keep the base's vocabulary (vocabulary: same), or use l2sp / ewc (they work for RNN-T models)",
            )
        if lwf.cache is not None:
            raise input_error("the teacher cache holds CTC outputs; an RNN-T base runs online",
                              where=f"{where}.cache", fix="set lwf.cache: null")
        if self.joint.fuse_loss_wer:
            raise input_error(
                "LwF compares the joint's outputs, which a fused joint (fuse_loss_wer: true) never materializes",
                where="model.joint.fuse_loss_wer", fix="set model.joint.fuse_loss_wer: false, or lwf.weight: 0",
            )

    def _prepare_lwf_cache(self, base: ASRModel, directory: str) -> None:
        from nemo_tl.distill.cache import build_cache, manifest_list, utterance_datasets

        if self._train_dl is None:
            return
        train_ds = self.cfg.train_ds
        build_cache(
            base, manifest_list(train_ds.manifest_filepath), directory,
            sample_rate=train_ds.get("sample_rate", self.cfg.get("sample_rate")),
            trim_silence=bool(train_ds.get("trim_silence", False)),
            datasets=utterance_datasets(self._train_dl.dataset, where=f"{WHERE}.lwf.cache"),
            where=f"{WHERE}.lwf.cache",
        )

    def on_fit_start(self) -> None:
        self._prepare_regularization()
        super().on_fit_start()

    def setup_training_data(self, train_data_config: DictConfig | dict | None):
        """NeMo's training data; with ``lwf.cache``, its batches carry the base's cached outputs; with
        ``lwf.manifests``, each utterance's manifest index (a mixed loader's)."""
        lwf = self.regularization.lwf
        cache = lwf.cache if lwf.weight > 0 else None
        if train_data_config is not None and cache:
            train_data_config = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(train_data_config)))
            with open_dict(train_data_config):
                train_data_config.return_sample_id = True
        super().setup_training_data(train_data_config)
        if self._train_dl is None:
            return
        some_manifests = lwf.weight > 0 and lwf.manifests is not None
        if some_manifests:
            self._lwf_manifest_ids = _lwf_manifest_indices(lwf.manifests, train_data_config, self._train_dl)
        if cache:
            from nemo_tl.distill.cache import cached_teacher_loader

            self._train_dl = cached_teacher_loader(self._train_dl, [cache], where=f"{WHERE}.lwf.cache")
        elif some_manifests:
            from nemo_tl.data.batches import NamedCollate, with_collate

            self._train_dl = with_collate(self._train_dl, NamedCollate(self._train_dl.collate_fn.collate_fn, mixed=True))

    # -- training
    def training_step(self, batch, batch_nb):
        reg = self.regularization
        if reg.active and not self._regularization_ready:
            self._prepare_regularization()
        if reg.lwf.weight <= 0:  # NeMo's step; L2-SP and EWC act in on_before_optimizer_step
            return super().training_step(batch, batch_nb)
        named = AudioTextBatch.from_nemo(batch)
        captured: dict[str, torch.Tensor] = {}
        head = self.joint if self._lwf_on_joint else self.decoder
        handles = [self.encoder.register_forward_hook(_keep_first(captured, "lengths", lambda out: out[1])),
                   head.register_forward_hook(_keep_first(captured, "outputs", lambda out: out))]
        try:
            result = super().training_step(tuple(named[:4]), batch_nb)
        finally:
            for h in handles:
                h.remove()
        term = self._lwf_term(named, captured, reg.lwf)
        self.log("lwf_loss", term.detach(), on_step=True)
        return {**result, "loss": result["loss"] + reg.lwf.weight * term}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Add the L2-SP and EWC gradients to the gradients (:func:`add_penalty_gradients`)."""
        super().on_before_optimizer_step(optimizer)
        reg = self.regularization
        if not (self._regularization_ready and reg.needs_anchors):
            return
        scale = self._gradient_scale(optimizer)
        for weight, fisher in ((reg.l2sp.weight, False), (reg.ewc.weight, True)):
            if weight > 0:
                add_penalty_gradients(self._forgetting_anchors, weight, fisher=fisher, scale=scale)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Log ``l2sp_penalty`` / ``ewc_penalty`` on the steps Lightning sends to the loggers.

        The value is the penalty at the weights the step ends with (those the next step starts from).
        Only those steps compute it (``trainer.log_every_n_steps``): the gradients need no value.
        """
        super().on_train_batch_end(*args, **kwargs)
        reg = self.regularization
        if not (self._regularization_ready and reg.needs_anchors and logs_this_step(attached_trainer(self))):
            return
        anchors = self._forgetting_anchors
        with torch.no_grad():
            current, values = [a.current() for a in anchors], [a.value for a in anchors]
            if reg.l2sp.weight > 0:
                self.log("l2sp_penalty", l2sp_penalty(current, values, reg.l2sp.weight), on_step=True)
            if reg.ewc.weight > 0:
                fisher = [a.fisher for a in anchors]
                self.log("ewc_penalty", ewc_penalty(current, values, fisher, reg.ewc.weight), on_step=True)

    def _gradient_scale(self, optimizer: torch.optim.Optimizer) -> float:
        """The factor the gradients still carry at ``on_before_optimizer_step``: 1, or fp16 AMP's loss scale
        when the optimizer unscales inside its own step (fused Adam: Lightning then skips ``scaler.unscale_``)."""
        scaler = getattr(getattr(attached_trainer(self), "precision_plugin", None), "scaler", None)
        if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return 1.0
        return float(scaler.get_scale())

    def _lwf_term(self, batch: Any, captured: dict[str, torch.Tensor], lwf: LwFConfig) -> torch.Tensor:
        from nemo_tl.distill.teachers import teacher_outputs

        frames = captured["lengths"]
        if lwf.manifests is not None:  # the other utterances' terms are 0 (no valid frame); the mean stays over B
            frames = torch.where(torch.isin(batch.manifest_ids, self._lwf_manifest_ids.to(frames.device)), frames, 0)
        if self._lwf_on_joint:
            base_joint = rnnt_joint_outputs(self._forgetting_base[0], *batch.nemo)
            joint = captured["outputs"]
            columns = self._forgetting_rows[0][: joint.shape[-1]]
            return lwf_lattice_loss(joint, base_joint, frames, batch.token_lens, columns, lwf.temperature)
        if batch.teacher is not None:
            base = batch.teacher.on_device(batch.audio.device)[0]
        elif not self._forgetting_base:
            raise input_error(
                "lwf.cache is set, but the training batches carry no cached base outputs",
                where=f"{WHERE}.lwf.cache",
                fix="let the model build its training data (setup_training_data), or set cache: null",
            )
        else:
            base = teacher_outputs(self._forgetting_base[0], batch.audio, batch.audio_lens)
        rows, base_rows = self._forgetting_rows
        lengths = torch.minimum(frames, base.lengths)
        return lwf_loss(captured["outputs"], base.log_probs, lengths, rows, base_rows, lwf.temperature)
