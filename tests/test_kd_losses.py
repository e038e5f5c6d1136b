"""KD losses and the teacher-student objective against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_tl.distill.objective import (
    KDWeights,
    distillation_loss,
    greedy_ctc_matches,
    mean_max_probability,
    teacher_weights,
)
from nemo_tl.distill.teachers import TeacherOutputs
from nemo_tl.errors import InputError
from nemo_tl.losses import frame_mask, hidden_kd_loss, token_kd_loss, uncertainty_kd_loss

# B=2 utterances, T=3 frames, V=2 classes; utterance 1 has a single valid frame and garbage padding.
STUDENT = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], [[2.0, 1.0], [99.0, -99.0], [-50.0, 70.0]]])
TEACHER = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [3.0, 0.0]], [[0.0, 0.0], [-80.0, 80.0], [5.0, -5.0]]])
LENGTHS = torch.tensor([3, 1])


def _softmax(row, t=1.0):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def _hand_token_kd(student, teacher, lengths, t=1.0):
    per_utt = []
    for b in range(len(lengths)):
        total = 0.0
        for i in range(int(lengths[b])):
            p_hat = _softmax(teacher[b][i].tolist(), t)
            p = _softmax(student[b][i].tolist(), t)
            total += -sum(ph * math.log(pc) for ph, pc in zip(p_hat, p)) * t * t
        per_utt.append(total)
    return sum(per_utt) / len(per_utt), per_utt


def _hand_unc_kd(student_lv, teacher_lv, lengths):
    def unit_sigma(row):
        s = [math.exp(0.5 * x) for x in row]
        n = math.sqrt(sum(x * x for x in s))
        return [x / n for x in s]

    per_utt = []
    for b in range(len(lengths)):
        total = 0.0
        for i in range(int(lengths[b])):
            sh, s = unit_sigma(teacher_lv[b][i].tolist()), unit_sigma(student_lv[b][i].tolist())
            total += sum((x - y) ** 2 for x, y in zip(sh, s))
        per_utt.append(total)
    return sum(per_utt) / len(per_utt), per_utt


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_kd_matches_hand_computation_and_ignores_padding(temperature):
    expected, per_utt = _hand_token_kd(STUDENT, TEACHER, LENGTHS, temperature)
    got = token_kd_loss(STUDENT, TEACHER, LENGTHS, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    none = token_kd_loss(STUDENT, TEACHER, LENGTHS, temperature=temperature, reduction="none")
    assert none.tolist() == pytest.approx(per_utt, rel=1e-5)


def test_token_kd_same_for_logits_and_log_probs():
    from_logits = token_kd_loss(STUDENT, TEACHER, LENGTHS, temperature=2.0)
    from_log_probs = token_kd_loss(STUDENT.log_softmax(-1), TEACHER.log_softmax(-1), LENGTHS, temperature=2.0)
    assert from_log_probs.item() == pytest.approx(from_logits.item(), rel=1e-6)


def test_token_kd_gradient_reaches_only_the_student_and_only_valid_frames():
    student = STUDENT.clone().requires_grad_(True)
    teacher = TEACHER.clone().requires_grad_(True)
    token_kd_loss(student, teacher, LENGTHS).backward()
    assert teacher.grad is None
    assert student.grad[1, 1:].abs().sum() == 0  # padding of utterance 1
    assert student.grad[0].abs().sum() > 0


def test_uncertainty_kd_matches_hand_computation_and_ignores_padding():
    student_lv = torch.tensor([[[0.0, 1.0], [-1.0, 2.0], [0.3, 0.3]], [[1.0, -2.0], [50.0, -50.0], [9.0, 9.0]]])
    teacher_lv = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [2.0, -2.0]], [[0.5, 0.5], [-9.0, 9.0], [0.0, 7.0]]])
    expected, per_utt = _hand_unc_kd(student_lv, teacher_lv, LENGTHS)
    assert uncertainty_kd_loss(student_lv, teacher_lv, LENGTHS).item() == pytest.approx(expected, rel=1e-5)
    none = uncertainty_kd_loss(student_lv, teacher_lv, LENGTHS, reduction="none")
    assert none.tolist() == pytest.approx(per_utt, rel=1e-5)


def test_uncertainty_kd_compares_normalized_sigmas():
    """Scaling every σ of a frame by the same factor (adding a constant to log σ²) changes nothing."""
    lv = torch.randn(2, 4, 5)
    assert uncertainty_kd_loss(lv + 3.0, lv, torch.tensor([4, 2])).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_kd_matches_hand_computation_and_ignores_padding():
    # B=2, D=2, T=2 (NeMo layout); utterance 1 has one valid frame.
    student = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[3.0, 100.0], [1.0, -100.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [1.0, 0.0]]])
    lengths = torch.tensor([2, 1])
    # utt 0: frame 0 ((1-0)² + 0)/2 = 0.5, frame 1 ((2-0)² + (1-3)²)/2 = 4 -> 4.5; utt 1: ((3-1)² + 0)/2 = 2
    assert hidden_kd_loss(student, teacher, lengths).item() == pytest.approx((4.5 + 2.0) / 2)


def test_hidden_kd_projects_student_width_to_teacher_width():
    student = torch.randn(2, 3, 4)
    teacher = torch.randn(2, 5, 4)
    proj = torch.nn.Conv1d(3, 5, kernel_size=1, bias=False)
    expected = hidden_kd_loss(proj(student), teacher, torch.tensor([4, 4]))
    assert hidden_kd_loss(student, teacher, torch.tensor([4, 4]), projection=proj).item() == pytest.approx(
        expected.item()
    )
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 5, 4\).*projection"):
        hidden_kd_loss(student, teacher, torch.tensor([4, 4]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: token_kd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.tensor([3, 3])),
         r"\(2, 3, 4\).*\(2, 3, 5\)"),
        (lambda: token_kd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.tensor([3])), r"lengths \(1,\).*B = 2"),
        (lambda: token_kd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.tensor([3, 3]), temperature=0.0),
         "temperature"),
        (lambda: token_kd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.tensor([3, 3]), reduction="sum"),
         "'sum'"),
        (lambda: uncertainty_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([3, 3])), r"\(2, 3\)"),
    ],
)
def test_bad_loss_inputs_raise_plain_value_error_with_the_shapes(call, match):
    """Pure tensor functions raise ValueError, as torch.nn.functional does; InputError is the config layer's."""
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert not isinstance(info.value, InputError)


def test_frame_mask_marks_the_valid_frames_of_each_utterance():
    """The one padded-frame mask (KD losses, LID loss, LID-free decoding): any length dtype, zero lengths."""
    expected = [[True, True, True, False], [False, False, False, False], [True, False, False, False]]
    for lengths in (torch.tensor([3, 0, 1]), torch.tensor([3.0, 0.0, 1.0]), torch.tensor([3, 0, 1], dtype=torch.int32)):
        assert frame_mask(lengths, 4).tolist() == expected
    assert frame_mask(torch.tensor([5]), 3).tolist() == [[True, True, True]]  # longer than T: every frame


# ---------------------------------------------------------------------------- objective
BLANK = 2


def _one_hot_log_probs(paths, frames=4, classes=3):
    lp = torch.full((len(paths), frames, classes), -10.0)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            lp[b, t, c] = 0.0
    return lp


def test_greedy_ctc_matches_collapses_repeats_and_blanks():
    # utt 0: 0 0 blank 1 -> [0, 1]; utt 1: 1 blank 1 (4th frame padding: 0) -> [1, 1]
    log_probs = _one_hot_log_probs([[0, 0, BLANK, 1], [1, BLANK, 1, 0]])
    lengths = torch.tensor([4, 3])
    targets = torch.tensor([[0, 1], [1, 0]])
    assert greedy_ctc_matches(log_probs, lengths, targets, torch.tensor([2, 2]), BLANK).tolist() == [True, False]
    assert greedy_ctc_matches(
        log_probs, lengths, torch.tensor([[0, 1], [1, 1]]), torch.tensor([2, 2]), BLANK
    ).tolist() == [
        True,
        True,
    ]


def test_conditional_weights_drop_a_wrong_teacher_per_utterance():
    keep = [torch.tensor([True, False]), torch.tensor([True, True])]
    weights = teacher_weights([1.0, 0.5], 2, keep=keep)
    assert weights.tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_confidence_weights_follow_confidence_and_sum_to_the_fixed_total():
    conf = [torch.tensor([0.9, 0.2]), torch.tensor([0.3, 0.8])]
    weights = teacher_weights([1.0, 1.0], 2, confidences=conf)
    assert weights[:, 0].tolist() == pytest.approx([2 * 0.9 / 1.2, 2 * 0.3 / 1.2])
    assert weights[:, 1].tolist() == pytest.approx([2 * 0.2 / 1.0, 2 * 0.8 / 1.0])
    assert weights.sum(0).tolist() == pytest.approx([2.0, 2.0])
    # with conditional dropping, the kept teacher takes the kept total
    weights = teacher_weights(
        [1.0, 1.0], 2, keep=[torch.tensor([True, False]), torch.tensor([True, True])], confidences=conf
    )
    assert weights[:, 1].tolist() == pytest.approx([0.0, 1.0])


def test_mean_max_probability_over_valid_frames():
    lp = torch.log(torch.tensor([[[0.9, 0.1], [0.6, 0.4]], [[0.5, 0.5], [0.0001, 0.9999]]]))
    assert mean_max_probability(lp, torch.tensor([2, 1])).tolist() == pytest.approx([0.75, 0.5], rel=1e-5)


def test_distillation_loss_combines_two_weighted_teachers():
    torch.manual_seed(0)
    b, t, v = 2, 5, 4
    lengths = torch.tensor([5, 3])
    student = torch.randn(b, t, v, requires_grad=True)
    s_lv = torch.randn(b, t, v)
    s_h = {1: torch.randn(b, 3, t)}
    outs = [
        TeacherOutputs(torch.randn(b, t, v).log_softmax(-1), lengths, torch.randn(b, t, v), {2: torch.randn(b, 3, t)})
        for _ in range(2)
    ]
    weights = torch.tensor([[1.0, 1.0], [0.5, 0.0]])
    hp = KDWeights(hard_label_weight=0.3, alpha=2.5, beta=0.7, temperature=2.0, hidden_weight=0.1)
    ctc = torch.tensor(10.0)
    parts = distillation_loss(
        ctc, student, lengths, outs, weights, hp, student_logvar=s_lv, student_hidden=s_h, hidden_pairs=[(1, 2)]
    )

    def weighted(k, per_utt):
        return (weights[k] * per_utt).mean()

    tok = sum(
        weighted(k, token_kd_loss(student, o.log_probs, lengths, temperature=2.0, reduction="none"))
        for k, o in enumerate(outs)
    )
    unc = sum(weighted(k, uncertainty_kd_loss(s_lv, o.logvar, lengths, reduction="none")) for k, o in enumerate(outs))
    hid = sum(weighted(k, hidden_kd_loss(s_h[1], o.hidden[2], lengths, reduction="none")) for k, o in enumerate(outs))
    assert parts["tok_kd_loss"].item() == pytest.approx(tok.item(), rel=1e-6)
    assert parts["unc_kd_loss"].item() == pytest.approx(unc.item(), rel=1e-6)
    assert parts["hidden_kd_loss"].item() == pytest.approx(hid.item(), rel=1e-6)
    expected = 0.3 * 10.0 + 2.5 * (tok + 0.7 * unc) + 0.1 * hid
    assert parts["train_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the student's gradient flows through the total
    parts["train_loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_terms_refuses_weights_of_the_wrong_shape_with_the_shapes():
    """A pure tensor function: a plain ValueError naming both shapes (not a config error)."""
    from nemo_tl.distill.objective import distillation_terms

    teacher = TeacherOutputs(torch.randn(2, 5, 4).log_softmax(-1), torch.tensor([5, 4]))
    with pytest.raises(ValueError, match=r"shape \(1, 3\), expected \(K, B\) = \(1, 2\)"):
        distillation_terms(torch.randn(2, 5, 4), torch.tensor([5, 4]), [teacher], torch.ones(1, 3), KDWeights())
