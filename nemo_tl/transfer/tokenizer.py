"""Train the target tokenizer from the target manifests: ``python -m nemo_tl.transfer.tokenizer``.

    python -m nemo_tl.transfer.tokenizer de_train.json [more.json ...] --out tokenizers/de_bpe128 \\
        --vocab-size 128 [--type bpe|unigram] [--lower-case]

The transcripts (``text`` of every line) go through NeMo's ``create_spt_model``, as NeMo's
``scripts/tokenizers/process_asr_text_tokenizer.py --tokenizer=spe`` does, and ``--out`` gets the
layout ``model.tokenizer.dir`` expects: ``tokenizer.model``, ``tokenizer.vocab`` and ``vocab.txt``
(use it with ``model.tokenizer.type: bpe``, the NeMo name of every SentencePiece tokenizer, BPE or
unigram). An existing, non-empty ``--out`` is refused: ``create_spt_model`` would silently keep the
tokenizer already there. The directory appears only once training has finished.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from nemo_tl.data.manifest import read_numbered_manifest
from nemo_tl.errors import InputError, input_error

__all__ = ["TOKENIZER_LAYOUT", "train_tokenizer", "transcripts"]

TOKENIZER_LAYOUT = ("tokenizer.model", "tokenizer.vocab", "vocab.txt")


def transcripts(manifests: Sequence[str]) -> list[str]:
    """The ``text`` of every line of ``manifests``, in order.

    Raises:
        InputError: a missing manifest, a malformed line, or a line without a string ``text``
            (named by file and line).
    """
    texts = []
    for path in manifests:
        if not os.path.isfile(path):
            raise input_error(f"manifest {path!r} does not exist", where="MANIFEST",
                              fix="give the target training manifests (NeMo JSON lines)")
        entries = read_numbered_manifest(path)
        if not entries:
            raise input_error("the manifest has no lines", where=path, fix="give a manifest with transcripts")
        for number, entry in entries:
            text = entry.get("text")
            if not isinstance(text, str):
                raise input_error(
                    f"no string `text` (got {text!r})",
                    where=f"{path}:{number}",
                    fix="every line needs the transcript in `text`; check with `python -m nemo_tl.data.validate`",
                )
            texts.append(text)
    if not any(t.strip() for t in texts):
        raise input_error("every transcript is empty", where=", ".join(manifests), fix="give manifests with text")
    return texts


def train_tokenizer(
    manifests: Sequence[str],
    out: str,
    *,
    vocab_size: int = 128,
    tokenizer_type: str = "bpe",
    lower_case: bool = False,
    character_coverage: float = 1.0,
) -> str:
    """Train a SentencePiece tokenizer on the transcripts of ``manifests`` into the new directory ``out``.

    Returns ``out``, holding ``tokenizer.model``, ``tokenizer.vocab`` and ``vocab.txt``.

    Raises:
        InputError: ``out`` exists and is not empty, a bad ``--type`` or ``--vocab-size``, or a bad manifest.
    """
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    if tokenizer_type not in ("bpe", "unigram"):
        raise input_error(f"must be bpe or unigram, got {tokenizer_type!r}", where="--type",
                          fix="use --type bpe (NeMo's FastConformer recipes) or --type unigram")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise input_error(f"must be an integer of at least 2, got {vocab_size!r}", where="--vocab-size",
                          fix="e.g. --vocab-size 128 for a small model, 1024 for a FastConformer large")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise input_error(
            f"{out!r} already exists" + (" and is not empty" if os.path.isdir(out) else " (a file)")
            + "; NeMo's create_spt_model would keep the tokenizer there instead of training a new one",
            where="--out",
            fix="give a new directory, or remove the old one yourself",
        )
    texts = transcripts(manifests)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".tokenizer-") as work:
        document = os.path.join(work, "document.txt")
        with open(document, "w", encoding="utf-8") as f:
            for text in texts:
                f.write(text + "\n")
        staged = os.path.join(work, "tokenizer")
        create_spt_model(
            document, vocab_size, sample_size=-1, do_lower_case=lower_case, tokenizer_type=tokenizer_type,
            output_dir=staged, character_coverage=character_coverage,
        )
        missing = [name for name in TOKENIZER_LAYOUT if not os.path.isfile(os.path.join(staged, name))]
        if missing:  # not a user error: NeMo changed what it writes
            raise RuntimeError(f"create_spt_model wrote no {missing} in {staged}")
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        shutil.move(staged, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="target training manifests (JSON lines)")
    parser.add_argument("--out", required=True, help="new tokenizer directory (model.tokenizer.dir)")
    parser.add_argument("--vocab-size", type=int, default=128, help="number of pieces (default 128)")
    parser.add_argument("--type", default="bpe", choices=("bpe", "unigram"), help="SentencePiece model type")
    parser.add_argument("--lower-case", action="store_true",
                        help="lower-case the text (SentencePiece's nmt_nfkc_cf rule); default: as written")
    parser.add_argument("--character-coverage", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        out = train_tokenizer(
            args.manifests, args.out, vocab_size=args.vocab_size, tokenizer_type=args.type,
            lower_case=args.lower_case, character_coverage=args.character_coverage,
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        size = sum(1 for _ in f)
    print(f"wrote {out} ({', '.join(TOKENIZER_LAYOUT)}; {size} pieces in vocab.txt)")
    print(f"use it with: model.tokenizer.dir={out} model.tokenizer.type=bpe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
