"""DistillCTCModel: a CTC student taught by one or more frozen CTC teachers.

Kim et al. 2021 (token KD + uncertainty-matching KD, several teachers from different domains)
within Abbasi et al. 2020's teacher-student model (hard-label weight φ, conditional
distillation, confidence weighting of teachers, intermediate-layer KD, a student that starts
from scratch, from a base model or from a teacher through the ``transfer`` section):

    L = φ L_CTC + α Σ_k γ_k (L_tok^k + β L_unc^k) + w_h Σ_k γ_k L_hidden^k

The teachers are frozen, in eval mode and run under no_grad. They are kept in a plain list,
not as submodules: they are not in the student's state_dict or ``.nemo``, not seen by the
optimizer and not wrapped by DDP; they follow the student to its device when they run. A saved
student restores (through NeMo's ``restore_from``) without loading them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import Trainer
from nemo.collections.asr.models import ASRModel
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.data.batches import AudioTextBatch
from nemo_tl.distill.cache import (
    TeacherCache,
    build_cache,
    cached_teacher_loader,
    manifest_list,
    teacher_cache_directories,
    utterance_datasets,
    utterance_keys,
)
from nemo_tl.distill.config import DistillationConfig
from nemo_tl.distill.objective import (
    distillation_terms,
    distillation_total,
    greedy_ctc_matches,
    mean_max_probability,
    teacher_weights,
)
from nemo_tl.distill.teachers import (
    Teacher,
    TeacherOutputs,
    capture_encoder_blocks,
    check_teacher,
    has_uncertainty_head,
    load_teachers,
    teacher_outputs,
)
from nemo_tl.errors import input_error
from nemo_tl.models.transfer_ctc import TransferCTCModel

__all__ = ["DistillCTCModel"]

LOG_KEYS = ("train_loss", "ctc_loss", "tok_kd_loss", "unc_kd_loss", "hidden_kd_loss")


class DistillCTCModel(TransferCTCModel):
    """A TransferCTCModel trained with knowledge distillation, configured by ``model.distillation``.

    ``model.distillation`` keys: ``teachers`` ([{model, weight γ_k}]), ``temperature`` T,
    ``alpha`` α, ``beta`` β, ``hard_label_weight`` φ, ``uncertainty`` (token-level σ matching;
    needs UncertaintyConvASRDecoder in every model), ``conditional`` (drop a teacher on the
    utterances its greedy transcript gets wrong), ``teacher_weighting`` (fixed | confidence),
    ``hidden`` {student_blocks, teacher_blocks, weight w_h} and ``cache`` (a directory for
    offline KD, see :mod:`nemo_tl.distill.cache`). Each training step logs ``train_loss``,
    ``ctc_loss``, ``tok_kd_loss``, ``unc_kd_loss`` and ``hidden_kd_loss``.
    """

    def __init__(self, cfg: DictConfig, trainer: Trainer | None = None, *, base_model: ASRModel | None = None):
        distillation = DistillationConfig.from_section(OmegaConf.create(cfg).get("distillation"))
        super().__init__(cfg=cfg, trainer=trainer, base_model=base_model)
        if self.regularization.active:
            raise input_error(
                "the forgetting regularizers (LwF, L2-SP, EWC) are not part of the distillation objective",
                where="model.transfer.regularization",
                fix="remove model.transfer.regularization, or fine-tune with TransferCTCModel to use them",
            )
        self._teachers: list[Teacher] = []
        self._caches: list[TeacherCache] = []
        self._set_distillation(distillation)
        self.hidden_projections = torch.nn.ModuleDict()
        for k, s_block, t_block, d_s, d_t in distillation.hidden.projections:
            self._add_projection(k, s_block, t_block, d_s, d_t)
        if not self._is_model_being_restored():
            self._load_teachers()

    # ------------------------------------------------------------------ teachers
    def _set_distillation(self, distillation: DistillationConfig) -> None:
        self._distillation = distillation
        with open_dict(self._cfg):
            self._cfg.distillation = distillation.as_section()

    @property
    def distillation(self) -> DistillationConfig:
        """The validated ``model.distillation`` section."""
        return self._distillation

    @property
    def teachers(self) -> list[Teacher]:
        """The loaded teachers (empty for a restored student until training starts)."""
        return list(self._teachers)

    def _load_teachers(self) -> None:
        """Load, freeze and check the teachers; add hidden-KD projections; open or build caches."""
        dist = self._distillation
        teachers = load_teachers(dist.teachers)
        s_blocks, t_blocks = dist.hidden.student_blocks, dist.hidden.teacher_blocks
        for k, teacher in enumerate(teachers):
            check_teacher(
                teacher.model,
                self,
                uncertainty=dist.uncertainty,
                where=f"model.distillation.teachers[{k}]",
                student_blocks=s_blocks,
                teacher_blocks=t_blocks,
            )
        self._teachers = teachers
        projections = list(dist.hidden.projections)
        for k, teacher in enumerate(teachers):
            for s_block, t_block in dist.hidden.pairs:
                d_s = int(self.cfg.encoder.jasper[s_block].filters)
                d_t = int(teacher.model.cfg.encoder.jasper[t_block].filters)
                if d_s != d_t and f"{k}:{s_block}:{t_block}" not in self.hidden_projections:
                    self._add_projection(k, s_block, t_block, d_s, d_t)
                    projections.append((k, s_block, t_block, d_s, d_t))
        if len(projections) != len(dist.hidden.projections):
            self._set_distillation(dist.with_projections(tuple(projections)))
        self._prepare_caches()

    def _add_projection(self, k: int, s_block: int, t_block: int, d_s: int, d_t: int) -> None:
        """A learned 1x1 convolution P mapping student block width D_s to teacher width D_t."""
        self.hidden_projections[f"{k}:{s_block}:{t_block}"] = torch.nn.Conv1d(d_s, d_t, kernel_size=1, bias=False)

    def move_teachers(self, device: torch.device | str) -> None:
        """Put the teachers on ``device`` (they also follow the audio's device whenever they run)."""
        for teacher in self._teachers:
            teacher.model.to(device)

    def on_fit_start(self) -> None:
        if not self._teachers:  # a restored student trained further
            self._load_teachers()
        if not self._caches:
            self.move_teachers(self.device)
        super().on_fit_start()

    # ------------------------------------------------------------------ data and caches
    def setup_training_data(self, train_data_config: DictConfig | dict | None):
        """NeMo's training data; with a teacher cache, its batches carry the teachers' outputs by name.

        With ``distillation.cache`` the loader's datasets return sample ids, and the collate function
        the loader is built with (:class:`~nemo_tl.distill.cache.CachedTeacherCollate`) makes every
        batch an :class:`~nemo_tl.data.batches.AudioTextBatch` whose ``teacher`` holds every teacher's
        cached outputs, read in the loader's workers by sample id (and manifest id, for mixed
        manifests). The caches themselves are built or checked when the teachers load.
        """
        section = self._cfg.get("distillation") if self._cfg is not None else None
        cache = section.get("cache") if section is not None else None
        if train_data_config is not None and cache:
            if not isinstance(train_data_config, DictConfig):
                train_data_config = OmegaConf.create(train_data_config)
            with open_dict(train_data_config):
                train_data_config.return_sample_id = True
        super().setup_training_data(train_data_config)
        if cache and self._train_dl is not None:
            directories = teacher_cache_directories(cache, len(section.get("teachers") or ()))
            self._train_dl = cached_teacher_loader(self._train_dl, directories)
        if getattr(self, "_teachers", None):
            self._prepare_caches()

    def _prepare_caches(self) -> None:
        """Open (or build, the first time) ``cache/teacher_<k>`` for every teacher."""
        dist = self._distillation
        self._caches = []
        if dist.cache is None or self._train_dl is None:
            return
        datasets = utterance_datasets(self._train_dl.dataset)
        train_ds = self.cfg.train_ds
        directories = teacher_cache_directories(dist.cache, len(self._teachers))
        for k, (teacher, directory) in enumerate(zip(self._teachers, directories)):
            self._caches.append(
                build_cache(
                    teacher.model,
                    manifest_list(train_ds.manifest_filepath),
                    directory,
                    sample_rate=train_ds.get("sample_rate", self.cfg.get("sample_rate")),
                    trim_silence=bool(train_ds.get("trim_silence", False)),
                    hidden_blocks=[t for _, t in dist.hidden.pairs],
                    datasets=datasets,
                    where=f"model.distillation.cache (teacher {k})",
                )
            )

    def _teacher_batch(self, batch: AudioTextBatch) -> list[TeacherOutputs]:
        """Every teacher's outputs on a training batch: as its loader read them from the caches, else
        from the caches by sample id, else from the teachers run on its audio."""
        device = batch.audio.device
        if batch.teacher is not None:
            return batch.teacher.on_device(device)
        if self._caches:
            if batch.sample_ids is None:
                raise input_error(
                    "the training batches carry no sample ids, so the teacher cache cannot be looked up",
                    where="model.train_ds",
                    fix="let DistillCTCModel build the training data (it sets return_sample_id: true)",
                )
            datasets = utterance_datasets(self._train_dl.dataset)
            if batch.manifest_ids is None and len(datasets) > 1:
                raise input_error(
                    f"the training data joins {len(datasets)} datasets, but the batches do not say which one "
                    "each utterance comes from",
                    where="model.train_ds",
                    fix="join several manifests with train_ds.mixing (nemo_tl's mixed loader), or set cache: null",
                )
            keys = utterance_keys(datasets, batch.sample_ids, batch.manifest_ids)
            return [cache.read(keys, device=device) for cache in self._caches]
        blocks = [t for _, t in self._distillation.hidden.pairs]
        return [teacher_outputs(t.model, batch.audio, batch.audio_lens, blocks) for t in self._teachers]

    def _teacher_weights(
        self, outputs: list[TeacherOutputs], transcript: torch.Tensor, transcript_len: torch.Tensor
    ) -> torch.Tensor:
        """γ_{k,b} (K, B): fixed, with conditional dropping and/or confidence weighting."""
        dist = self._distillation
        blank = self.decoder.num_classes_with_blank - 1
        keep = None
        if dist.conditional:
            keep = [greedy_ctc_matches(o.log_probs, o.lengths, transcript, transcript_len, blank) for o in outputs]
        confidences = None
        if dist.teacher_weighting == "confidence":
            confidences = [mean_max_probability(o.log_probs, o.lengths) for o in outputs]
        return teacher_weights(
            [t.weight for t in self._teachers],
            transcript.shape[0],
            keep=keep,
            confidences=confidences,
            device=transcript.device,
        )

    # ------------------------------------------------------------------ training
    def distillation_step(self, batch: AudioTextBatch | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss and its parts on one batch: an :class:`~nemo_tl.data.batches.AudioTextBatch`, or NeMo's
        ``(audio, audio_len, tokens, tokens_len[, sample_ids])``.

        Queued in the order that keeps the GPU busy: student forward, teacher forwards (online),
        KD terms, and NeMo's CTC loss last: its kernel reads the target lengths on the host, so
        the host waits there for everything queued before it.
        """
        batch = AudioTextBatch.from_nemo(batch)
        signal, signal_len, transcript, transcript_len = batch.nemo
        dist = self._distillation
        pairs = dist.hidden.pairs
        with capture_encoder_blocks(self, [s for s, _ in pairs]) as student_hidden:
            log_probs, encoded_len, _ = self.forward(input_signal=signal, input_signal_length=signal_len)
        uncertain_student = has_uncertainty_head(self)
        # Kim et al. eq. 5: in training the student's KD distribution is softmax of the corrupted g.
        student_logits = self.decoder.last_logits if uncertain_student else log_probs
        outputs = self._teacher_batch(batch)
        terms = distillation_terms(
            student_logits,
            encoded_len,
            outputs,
            self._teacher_weights(outputs, transcript, transcript_len),
            dist.weights,
            student_logvar=self.decoder.last_logvar if dist.uncertainty and uncertain_student else None,
            student_hidden=student_hidden,
            hidden_pairs=pairs,
            projections=self.hidden_projections,
        )
        ctc_loss = self.loss(
            log_probs=log_probs, targets=transcript, input_lengths=encoded_len, target_lengths=transcript_len
        )
        ctc_loss = self.add_auxiliary_losses(ctc_loss)
        return distillation_total(ctc_loss, terms, dist.weights)

    def training_step(self, batch, batch_nb):
        if not self._teachers:
            self._load_teachers()
        parts = self.distillation_step(batch)
        for key in LOG_KEYS:
            self.log(key, parts[key].detach(), on_step=True, prog_bar=key == "train_loss")
        if self._optimizer is not None:
            self.log("learning_rate", self._optimizer.param_groups[0]["lr"], on_step=True)
        return {"loss": parts["train_loss"]}
