"""Decoding helpers: LID-free multi-softmax decoding and early stopping.

Multilingual evaluation (WER and CER per language, WERR, LID accuracy, T_avg) is in
:mod:`nemo_tl.decoding.multilingual_eval`.
"""

from nemo_tl.decoding.lid_free import average_posteriors, choose_language, early_stopping

__all__ = ["average_posteriors", "choose_language", "early_stopping"]
