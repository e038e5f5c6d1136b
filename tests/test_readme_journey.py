"""The README's walkthrough, run the way a user runs it: every command as written there, in its order.

The commands come from the README itself (the bash block after ``<!-- walkthrough -->``), so the
README cannot drift from what works. Only sizes and steps are made tiny: each override below
replaces a value the README gives or adds a size key; nothing else about a command changes.
Each step asserts what a user looks at: the file it wrote parses, its table has the rows, the
umlauts survive.
"""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import soundfile as sf
import torch

from tests.conftest import ROOT
from tests.forked_commands import run_python_commands
from tests.helpers import strict_json

README = os.path.join(ROOT, "README.md")

_TINY_TRAIN = {
    "trainer.max_steps": "3",
    "trainer.accelerator": "cpu",
    "model.train_ds.batch_size": "16",
    "model.validation_ds.batch_size": "8",
    "exp_manager.create_checkpoint_callback": "false",
}
# Per command (the script or module it runs): Hydra keys and argparse options to set.
TINY = {
    "nemo_tl.data.synth_corpus": {"--utterances": "40", "--jobs": "2"},
    "examples/finetune_ctc.py": _TINY_TRAIN,
    "examples/distill_ctc.py": _TINY_TRAIN,
    "examples/train_multisoftmax_rnnt.py": {
        **_TINY_TRAIN,
        "model.train_ds.num_workers": "0",
        "model.validation_ds.num_workers": "0",
        "model.encoder.n_layers": "1",
        "model.model_defaults.enc_hidden": "64",
        "model.model_defaults.pred_hidden": "32",
        "model.model_defaults.joint_hidden": "32",
        "model.decoding.greedy.max_symbols": "3",
    },
    "examples/evaluate_multilingual.py": {"batch_size": "8"},
}


def walkthrough() -> list[list[str]]:
    """The README walkthrough's commands, each split as bash would split it (comments dropped)."""
    text = open(README, encoding="utf-8").read()
    block = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its walkthrough block"
    joined = re.sub(r"\\\n\s*", " ", block.group(1))
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def tiny(argv: list[str]) -> list[str]:
    """``argv`` with the sizes of :data:`TINY` for its script or module."""
    target = argv[2] if argv[1] == "-m" else argv[1]
    sizes = dict(TINY.get(target, {}))
    out = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in sizes and arg.startswith("--"):  # argparse: "--option value"
            out += [arg, sizes.pop(arg)]
            i += 2
            continue
        key = arg.split("=", 1)[0]
        out.append(f"{key}={sizes.pop(key)}" if "=" in arg and key in sizes else arg)
        i += 1
    for key, value in sizes.items():
        out += [key, value] if key.startswith("--") else [f"{key}={value}"]
    return out


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """Runs every command in order in one working directory (the repository's files linked in), each in its
    own process (forked from one that imported NeMo once: :mod:`tests.forked_commands`); returns the
    directory and ``{the command's first three words: CompletedProcess}``."""
    work = tmp_path_factory.mktemp("journey")
    for name in ("examples", "conf", "nemo_tl"):
        os.symlink(os.path.join(ROOT, name), work / name)
    env = {**os.environ, "PYTHONPATH": ROOT, "HYDRA_FULL_ERROR": "1"}
    commands = []
    for i, argv in enumerate(walkthrough()):
        if argv[0] == ".":
            continue  # activating the virtual environment: the test's interpreter is it
        assert argv[0] == "python", f"README walkthrough command {i} is not a python command: {argv}"
        commands.append(tiny(argv))
    ran = run_python_commands(commands, cwd=str(work), env=env)
    for proc in ran:
        assert proc.returncode == 0, f"{shlex.join(proc.args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert len(ran) == len(commands), "the walkthrough stopped early"
    return work, {" ".join(proc.args[:3]): proc for proc in ran}


def output(done: dict, start: str) -> str:
    (proc,) = [p for command, p in done.items() if command.startswith(start)]
    return proc.stdout


def test_corpus_has_distinct_manifests_per_language(journey):
    work, _ = journey
    for lang in ("en", "de", "hi"):
        for split in ("train", "dev", "test"):
            lines = [json.loads(x) for x in open(work / "corpus" / lang / f"{lang}_{split}.json", encoding="utf-8")]
            assert lines and all(x["lang"] == lang for x in lines)
            assert sf.info(lines[0]["audio_filepath"]).channels == 1


def test_validate_reports_ok(journey):
    _, done = journey
    assert "OK: 0 error(s)" in output(done, "python -m nemo_tl.data.validate")


def test_finetuned_german_model_keeps_the_german_alphabet(journey):
    work, done = journey
    from nemo.collections.asr.models import ASRModel

    from nemo_tl.data.texts import labels_for

    model = ASRModel.restore_from(str(work / "de.nemo"), map_location="cpu")
    assert list(model.decoder.vocabulary) == labels_for("de")  # ä ö ü ß are labels
    text = output(done, "python examples/finetune_ctc.py")
    assert "final greedy WER and CER per validation set" in text
    assert "| de_dev |" in text and "| en_dev |" in text  # one row per dev set, named by its manifest


def test_evaluate_writes_strict_json_and_the_forgetting_table(journey):
    work, done = journey
    result = strict_json(work / "de_eval.json")
    assert set(result) == {"tuned", "base", "comparison"}
    assert {os.path.basename(m) for m in result["comparison"]} == {"de_dev.json", "en_dev.json"}
    assert "rel. change" in output(done, "python examples/evaluate_ctc.py")


def test_transcribe_writes_a_prediction_per_test_line(journey):
    work, done = journey
    refs = (work / "corpus" / "de" / "de_test.json").read_text(encoding="utf-8").splitlines()
    preds = [json.loads(x) for x in (work / "de_test_pred.json").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == len(refs) and all("pred_text" in p for p in preds)
    assert "CER:" in output(done, "python -m nemo_tl.transcribe")


def test_introspection_writes_its_table_and_figures(journey):
    work, _ = journey
    rows = json.loads((work / "introspect" / "layers.json").read_text(encoding="utf-8"))
    assert any(r["layer"].startswith("decoder.") for r in rows)
    for png in ("weights.png", "weight_changes.png"):
        assert (work / "introspect" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_distilled_student_restores_without_its_teacher(journey):
    work, done = journey
    from nemo.collections.asr.models import ASRModel

    student = ASRModel.restore_from(str(work / "de_student.nemo"), map_location="cpu")
    assert type(student).__name__ == "DistillCTCModel" and student.teachers == []
    assert student.decoder.num_classes_with_blank == 32  # 31 German labels + blank, from model.labels=de
    assert (work / "kd_cache" / "teacher_0" / "fingerprint.json").is_file()
    assert "| de_dev |" in output(done, "python examples/distill_ctc.py")


def test_multilingual_model_evaluates_and_cuts_down_to_hindi(journey):
    work, done = journey
    from nemo.collections.asr.models import ASRModel, EncDecRNNTModel

    from nemo_tl.data.texts import labels_for

    rows = json.loads((work / "en_hi_eval.json").read_text(encoding="utf-8"))
    assert rows  # one entry per decoding mode
    hindi = ASRModel.restore_from(str(work / "hi.nemo"), map_location="cpu")
    assert type(hindi) is EncDecRNNTModel and list(hindi.cfg.labels) == labels_for("hi")
    assert torch.is_tensor(next(hindi.parameters()))
