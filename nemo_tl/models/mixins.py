"""Data set-up shared by every nemo_tl model: manifest validation and mixed-manifest loading.

Placeholder pass-through until the mixed-manifest work lands; models inherit it first so
that its ``_setup_dataloader_from_config`` runs before NeMo's.
"""


class ManifestDataMixin:
    """Put before the NeMo model class in the bases of every nemo_tl model."""
