"""The multi-softmax RNN-T capability (Joshi et al. 2021) outside the model class.

- :mod:`~nemo_tl.multilingual.config`: the config keys, validated into a frozen :class:`MultilingualConfig`;
- :mod:`~nemo_tl.multilingual.dataset`: the language-tagged dataset (batches: ``LanguageBatch``);
- :mod:`~nemo_tl.multilingual.loss`: one NeMo RNN-T loss per language, a batch's loss split by language;
- :mod:`~nemo_tl.multilingual.decoding`: one NeMo decoding and WER metric per language, validation metrics;
- :mod:`~nemo_tl.multilingual.lid_free`: LID-free decoding (stacked decoding + the early-stopping rule);
- :mod:`~nemo_tl.multilingual.one_language_batches`: DDP and BatchNorm policy for one language per batch;
- :mod:`~nemo_tl.multilingual.cuda_graphs`: which NeMo CUDA-graph modes the decoders use;
- :mod:`~nemo_tl.multilingual.transcribe`: the language of each file at inference, and its decoding;
- :mod:`~nemo_tl.multilingual.pretrained`: the start from a pretrained NeMo ASR model;
- :mod:`~nemo_tl.multilingual.aux_ctc`: the auxiliary CTC head on the shared encoder;
- :mod:`~nemo_tl.multilingual.extraction`: one language as a plain NeMo model.
"""

from nemo_tl.multilingual.config import MultilingualConfig, prepare_multilingual_config
from nemo_tl.multilingual.dataset import LanguageAudioToCharDataset, append_language_onehot
from nemo_tl.multilingual.extraction import extract_language
from nemo_tl.multilingual.lid_free import lid_free_decode
from nemo_tl.multilingual.transcribe import MultilingualTranscribeConfig

__all__ = [
    "LanguageAudioToCharDataset",
    "MultilingualConfig",
    "MultilingualTranscribeConfig",
    "append_language_onehot",
    "extract_language",
    "lid_free_decode",
    "prepare_multilingual_config",
]
