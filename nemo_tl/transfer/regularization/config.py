"""``model.transfer.regularization`` validated once into frozen dataclasses (:class:`RegularizationConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import ListConfig

from nemo_tl.config_checks import checked_int, checked_number, checked_section
from nemo_tl.errors import input_error

WHERE = "model.transfer.regularization"
_SECTION_FIX = "write regularization: {lwf: {weight: 1.0, temperature: 2.0}, l2sp: {weight: 0.01}, " \
    "ewc: {weight: 100.0, manifest: source.json, batches: 50}}"


def _weight(section: dict, where: str) -> float:
    return checked_number(section.get("weight", 0.0), f"{where}.weight", finite=True,
                          fix="give a weight ≥ 0 (0 turns the term off)")


def _directory(value: Any, where: str, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise input_error(f"must be a directory path or null, got {value!r}", where=where, fix=f"give {what}")
    return value


@dataclass(frozen=True)
class LwFConfig:
    """``lwf: {weight w, temperature T, cache, manifests}``: KD from the frozen base.

    ``cache``: a teacher-cache directory (None: the base runs online). ``manifests``: the training
    manifests whose utterances LwF distils (None: every utterance); with replay, the source's, so that
    the base's outputs pull only on the source audio and never on the target's.
    """

    weight: float = 0.0
    temperature: float = 1.0
    cache: str | None = None
    manifests: tuple[str, ...] | None = None

    @classmethod
    def from_section(cls, value: Any, where: str) -> LwFConfig:
        s = checked_section(value, where, ("weight", "temperature", "cache", "manifests"),
                            fix="write lwf: {weight: 1.0, temperature: 2.0}")
        return cls(
            weight=_weight(s, where),
            temperature=checked_number(s.get("temperature", 1.0), f"{where}.temperature", positive=True, finite=True),
            cache=_directory(s.get("cache"), f"{where}.cache",
                             "a directory for the base model's cached outputs, or null to run it online"),
            manifests=_manifest_list(s.get("manifests"), f"{where}.manifests"),
        )


def _manifest_list(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, (list, tuple, ListConfig)) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise input_error(f"must be a list of training manifest paths or null, got {value!r}", where=where,
                          fix="list the train_ds manifests whose utterances LwF distils (e.g. [source_train.json]), "
                          "or null for every utterance")
    return tuple(paths)


@dataclass(frozen=True)
class L2SPConfig:
    """``l2sp: {weight w}``: (w/2) ‖θ − θ_base‖² over the transferred parameters."""

    weight: float = 0.0

    @classmethod
    def from_section(cls, value: Any, where: str) -> L2SPConfig:
        s = checked_section(value, where, ("weight",), fix="write l2sp: {weight: 0.01}")
        return cls(weight=_weight(s, where))


@dataclass(frozen=True)
class EWCConfig:
    """``ewc: {weight w, manifest, batches, batch_size, cache}``: (w/2) Σ F (θ − θ_base)², F from source data.

    ``cache``: the directory of the Fisher (None: ``ewc_fisher`` in the run's directory); several runs
    from one base can share one.
    """

    weight: float = 0.0
    manifest: str | None = None
    batches: int = 50
    batch_size: int = 8
    cache: str | None = None

    @classmethod
    def from_section(cls, value: Any, where: str) -> EWCConfig:
        s = checked_section(value, where, ("weight", "manifest", "batches", "batch_size", "cache"),
                            fix="write ewc: {weight: 100.0, manifest: source.json, batches: 50}")
        weight = _weight(s, where)
        manifest = s.get("manifest")
        if weight > 0 and (not isinstance(manifest, str) or not manifest):
            raise input_error(
                f"EWC needs source data for its Fisher information, got manifest {manifest!r}",
                where=f"{where}.manifest",
                fix="give a NeMo manifest of the base model's (source) training data",
            )
        return cls(
            weight=weight,
            manifest=manifest,
            batches=checked_int(s.get("batches", cls.batches), f"{where}.batches", minimum=1),
            batch_size=checked_int(s.get("batch_size", cls.batch_size), f"{where}.batch_size", minimum=1),
            cache=_directory(s.get("cache"), f"{where}.cache", "a directory for the Fisher information, or null "
                             "for ewc_fisher in the run's directory"),
        )


@dataclass(frozen=True)
class RegularizationConfig:
    """The ``model.transfer.regularization`` section (all terms off by default)."""

    lwf: LwFConfig = field(default_factory=LwFConfig)
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)
    ewc: EWCConfig = field(default_factory=EWCConfig)

    @classmethod
    def from_section(cls, section: Any, where: str = WHERE) -> RegularizationConfig:
        """Validate a ``regularization`` section (DictConfig, dict or None) and fill defaults."""
        s = checked_section(section, where, ("lwf", "l2sp", "ewc"), fix=_SECTION_FIX)
        return cls(
            lwf=LwFConfig.from_section(s.get("lwf"), f"{where}.lwf"),
            l2sp=L2SPConfig.from_section(s.get("l2sp"), f"{where}.l2sp"),
            ewc=EWCConfig.from_section(s.get("ewc"), f"{where}.ewc"),
        )

    @property
    def active(self) -> bool:
        """Whether any term has a weight > 0 (else training is exactly unregularized)."""
        return self.lwf.weight > 0 or self.l2sp.weight > 0 or self.ewc.weight > 0

    @property
    def needs_anchors(self) -> bool:
        return self.l2sp.weight > 0 or self.ewc.weight > 0

    def as_section(self) -> dict:
        return {
            "lwf": {"weight": self.lwf.weight, "temperature": self.lwf.temperature, "cache": self.lwf.cache,
                    "manifests": None if self.lwf.manifests is None else list(self.lwf.manifests)},
            "l2sp": {"weight": self.l2sp.weight},
            "ewc": {"weight": self.ewc.weight, "manifest": self.ewc.manifest, "batches": self.ewc.batches,
                    "batch_size": self.ewc.batch_size, "cache": self.ewc.cache},
        }
