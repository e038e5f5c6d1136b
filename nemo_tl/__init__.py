"""nemo_tl: adapting NeMo speech recognizers.

Transfer learning of pretrained QuartzNet CTC models, knowledge distillation with
uncertainty outputs, and a multilingual multi-softmax RNN-T with an integrated LID head.

Importing this package registers the ``nemo_tl.`` prefix in NeMo's allow-list of
config targets, so that ``.nemo`` files written by nemo_tl restore through NeMo's own
``ASRModel.restore_from``. Nothing broader is registered and the check stays on.
"""

import logging as _logging

# NeMo's telemetry (nv_one_logger) warns on every import that it is disabled; say nothing instead.
_logging.getLogger("nv_one_logger").setLevel(_logging.ERROR)

from nemo.core.classes import common as _nemo_common  # noqa: E402

__version__ = "0.1.0"

_TARGET_PREFIX = "nemo_tl."


def _register_target_prefix() -> None:
    if _TARGET_PREFIX not in _nemo_common.ALLOWED_TARGET_PREFIXES:
        _nemo_common.ALLOWED_TARGET_PREFIXES.append(_TARGET_PREFIX)


_register_target_prefix()

from nemo_tl.errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]
