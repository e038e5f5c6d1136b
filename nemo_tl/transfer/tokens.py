"""A model's vocabulary as token strings, the target tokenizer directory, and ``compose`` sources.

``keep_shared`` maps output rows by token string: a character label, or a SentencePiece piece
with its word-boundary mark '▁' as it is (:func:`model_tokens`). ``new_label_init: compose``
starts a new piece from the base rows of the pieces the *base* tokenizer splits it into
(:func:`compose_sources`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nemo_tl.errors import input_error

__all__ = ["VocabularyReport", "check_tokenizer_dir", "compose_sources", "model_tokens", "vocabulary_kind"]

WORD_BOUNDARY = "▁"
TOKENIZER_FILES = {"bpe": "tokenizer.model", "wpe": "vocab.txt"}


def model_tokens(model: Any) -> list[str]:
    """The output vocabulary of a NeMo ASR model, one string per output row (blank excluded).

    Subword models: the tokenizer's tokens by id (SentencePiece pieces keep their '▁');
    character models: the joint's vocabulary (RNN-T) or the decoder's (CTC).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        return [str(t) for t in tokenizer.ids_to_tokens(list(range(tokenizer.vocab_size)))]
    for owner in (getattr(model, "joint", None), getattr(model, "decoder", None)):
        vocabulary = getattr(owner, "vocabulary", None)
        if vocabulary is not None:
            return [str(t) for t in vocabulary]
    raise ValueError(f"{type(model).__name__} has neither a tokenizer nor a joint/decoder vocabulary")


def vocabulary_kind(model: Any) -> str:
    """``"chars"``, ``"bpe"`` (SentencePiece) or ``"wpe"`` (WordPiece) for a NeMo ASR model."""
    if getattr(model, "tokenizer", None) is None:
        return "chars"
    kind = getattr(model, "tokenizer_type", None)
    if kind in TOKENIZER_FILES:
        return kind
    return "bpe" if _sentencepiece(model.tokenizer) is not None else "wpe"


def _sentencepiece(tokenizer: Any) -> Any | None:
    """The ``sentencepiece.SentencePieceProcessor`` behind a NeMo tokenizer, or None."""
    import sentencepiece as spm

    inner = getattr(tokenizer, "tokenizer", None)
    return inner if isinstance(inner, spm.SentencePieceProcessor) else None


def check_tokenizer_dir(directory: Any, kind: Any, *, where: str = "model.tokenizer") -> tuple[str, str]:
    """Check a target tokenizer section (``dir``, ``type``) before NeMo reads it; return ``(dir, type)``.

    Raises:
        InputError: no directory, a type other than bpe/wpe, or a directory without the type's file
            (``tokenizer.model`` for bpe, ``vocab.txt`` for wpe), or an unreadable SentencePiece model.
    """
    make = "python -m nemo_tl.transfer.tokenizer (or NeMo's process_asr_text_tokenizer.py)"
    if not isinstance(directory, str) or not directory:
        raise input_error("the target tokenizer directory is missing", where=f"{where}.dir",
                          fix=f"set {where}.dir (tokenizer_dir= in from_base) to a directory made by {make}")
    if kind not in TOKENIZER_FILES:
        raise input_error(f"tokenizer type must be bpe or wpe, got {kind!r}", where=f"{where}.type",
                          fix="use bpe for a SentencePiece tokenizer (tokenizer.model), wpe for WordPiece (vocab.txt)")
    if not os.path.isdir(directory):
        raise input_error(f"tokenizer directory {directory!r} does not exist", where=f"{where}.dir",
                          fix=f"train one with {make}, or correct the path")
    wanted = TOKENIZER_FILES[kind]
    if kind == "wpe" and os.path.isfile(os.path.join(directory, TOKENIZER_FILES["bpe"])):
        raise input_error(  # NeMo's SentencePiece directories carry a vocab.txt too; a WordPiece one has no .model
            f"tokenizer directory {directory!r} holds a SentencePiece model (tokenizer.model), but type is wpe",
            where=f"{where}.type", fix=f"set {where}.type to bpe",
        )
    if not os.path.isfile(os.path.join(directory, wanted)):
        present = [k for k, f in TOKENIZER_FILES.items() if os.path.isfile(os.path.join(directory, f))]
        hint = f"; it holds a {present[0]} tokenizer" if present else ""
        raise input_error(
            f"tokenizer directory {directory!r} has no {wanted} (needed for type {kind}){hint}",
            where=f"{where}.type" if present else f"{where}.dir",
            fix=f"set {where}.type to {present[0]}" if present else f"give a directory made by {make}",
        )
    if kind == "bpe":
        import sentencepiece as spm

        try:
            spm.SentencePieceProcessor(model_file=os.path.join(directory, wanted))
        except Exception as e:  # sentencepiece raises RuntimeError / OSError
            raise input_error(f"{os.path.join(directory, wanted)} is not a readable SentencePiece model: {e}",
                              where=f"{where}.dir", fix=f"train the tokenizer again with {make}") from e
    return directory, kind


def _without_dummy_prefix(processor: Any) -> Any:
    """A copy of a SentencePiece processor that does not add the word-boundary mark before the text."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(processor.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def compose_sources(base_tokenizer: Any, base_tokens: Sequence[str], new_tokens: Sequence[str]) -> dict[int, list[int]]:
    """For each new token the base lacks: the base token indices whose rows ``compose`` averages.

    The token's text (its '▁' stripped) is split by the base SentencePiece tokenizer, with the
    dummy prefix for a word-initial piece ('▁x') and without it for a continuation piece; standalone
    '▁' and ``<unk>`` pieces are dropped. An empty list means the row starts at zero.

    Raises:
        ValueError: ``base_tokenizer`` is not a SentencePiece tokenizer.
    """
    initial = _sentencepiece(base_tokenizer)
    if initial is None:
        raise ValueError(f"compose needs a SentencePiece base tokenizer, got {type(base_tokenizer).__name__}")
    continuation = _without_dummy_prefix(initial)
    index = {token: i for i, token in enumerate(base_tokens)}
    unk = initial.id_to_piece(initial.unk_id()) if initial.unk_id() >= 0 else "<unk>"
    out: dict[int, list[int]] = {}
    for i, token in enumerate(new_tokens):
        if token in index:
            continue
        text = token.replace(WORD_BOUNDARY, "")
        processor = initial if token.startswith(WORD_BOUNDARY) else continuation
        pieces = processor.encode(text, out_type=str) if text else []
        out[i] = [index[p] for p in pieces if p not in (WORD_BOUNDARY, unk) and p in index]
    return out


@dataclass(frozen=True)
class VocabularyReport:
    """What ``keep_shared`` kept: target tokens found in the base vocabulary, and the new ones."""

    vocabulary: str  # the transfer mode: keep_shared | same | reinit
    target_tokens: int
    found: int
    new_tokens: tuple[str, ...]
    new_label_init: str

    @classmethod
    def build(cls, base_tokens: Sequence[str], new_tokens: Sequence[str], vocabulary: str, new_label_init: str):
        base_set = set(base_tokens)
        new = tuple(t for t in new_tokens if t not in base_set)
        return cls(vocabulary, len(new_tokens), len(new_tokens) - len(new), new, new_label_init)

    def __str__(self) -> str:
        shown = ", ".join(repr(t) for t in self.new_tokens[:20]) + (" ..." if len(self.new_tokens) > 20 else "")
        kept = {"keep_shared": "rows copied", "same": "decoder copied whole", "reinit": "rows not copied (reinit)"}
        return (
            f"vocabulary transfer ({self.vocabulary}): {self.found} of {self.target_tokens} target tokens are in "
            f"the base vocabulary ({kept[self.vocabulary]}); {len(self.new_tokens)} new "
            f"(new_label_init: {self.new_label_init}): [{shown}]"
        )
