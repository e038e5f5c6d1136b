"""Early stopping, LID posteriors and the LID loss on hand-made tensors (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_tl.decoding import average_posteriors, choose_language, early_stopping
from nemo_tl.errors import InputError
from nemo_tl.losses.lid import frame_lid_loss


def _log(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_switch_off_frames_and_t_avg_exact():
    # Log-posteriors per frame (not normalized: the rule only uses sums). Language 0 leads by 0.5
    # per frame over language 1 and by 2 over language 2.
    log_post = _log([[0.0, -0.5, -2.0]] * 6)
    # τ = 1, s_th = 1.5: language 2 trails by 2 at t=1 but t > τ only from t=2 -> off at 2;
    # language 1 trails by 0.5 t: 1.5 at t=3 is not < 1.5 (strict), so off at t=4; language 0 stays on.
    t_off, active, t_avg = early_stopping(log_post, min_frames=1, threshold=1.5)
    assert t_off.tolist() == [6, 4, 2]
    assert active.tolist() == [True, False, False]
    assert float(t_avg) == pytest.approx((6 + 4 + 2) / 6)


def test_frames_are_counted_from_one_and_tau_is_strict():
    log_post = _log([[0.0, -10.0]] * 5)
    t_off, active, _ = early_stopping(log_post, min_frames=3, threshold=1.0)
    assert t_off.tolist() == [5, 4]  # frames 1..3 wait (t > τ), off at the first frame after τ
    t_off, _, _ = early_stopping(log_post, min_frames=0, threshold=1.0)
    assert t_off.tolist() == [5, 1]


def test_first_switch_off_is_final_even_if_the_language_recovers():
    log_post = _log([[0.0, -3.0], [-5.0, 0.0], [-5.0, 0.0], [-5.0, 0.0]])
    t_off, active, t_avg = early_stopping(log_post, min_frames=0, threshold=1.0)
    # t=1: s = (0, -3): language 1 trails by 3 -> off at 1. t=2: s = (-5, -3): language 0 trails by
    # 2, but it is the last decoder on, so it stays on. Language 1 leads from then on, but stays off.
    assert t_off.tolist() == [4, 1]
    assert active.tolist() == [True, False]
    assert float(t_avg) == pytest.approx(5 / 4)


def test_the_leader_changing_after_tau_keeps_one_decoder_on():
    """The issue's example: 3 languages, τ = 5, s_th = 0.5, language 2 takes the lead at frame 11."""
    post = torch.tensor([[0.8, 0.1, 0.1]] * 10 + [[0.05, 0.05, 0.9]] * 30, dtype=torch.float64)
    # t=6: languages 1 and 2 trail language 0 by 6·log 8 > 0.5 -> off. From t=18 language 0 trails
    # language 2 by more than 0.5, but it is the only decoder on: it stays on to the end.
    t_off, active, t_avg = early_stopping(post.log(), min_frames=5, threshold=0.5)
    assert t_off.tolist() == [40, 6, 6]
    assert active.tolist() == [True, False, False]
    assert float(t_avg) == pytest.approx(1.3)
    assert choose_language(average_posteriors(post.log()), active, t_off).item() == 0


def test_decoders_switched_off_together_keep_the_best_scoring_one_on():
    # Language 3 goes off at t=1, then recovers and leads, so every decoder still on would go off at t=2.
    log_post = _log([[0.0, 0.0, 0.0, -2.0], [-6.0, -5.0, -5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    t_off, active, t_avg = early_stopping(log_post, min_frames=0, threshold=1.0)
    # t=1: language 3 trails by 2 -> off. t=2: s = (-6, -5, -5, -2): 0, 1, 2 all trail by > 1; the best
    # of them, languages 1 and 2 at -5, tie: the lower index, 1, stays on.
    assert t_off.tolist() == [2, 3, 2, 1]
    assert active.tolist() == [False, True, False, False]
    assert float(t_avg) == pytest.approx(8 / 3)


def test_at_least_one_decoder_stays_on():
    torch.manual_seed(0)
    log_post = torch.log_softmax(3 * torch.randn(16, 50, 4), dim=-1)
    lengths = torch.randint(1, 51, (16,))
    for tau, s_th in ((0, 0.0), (2, 0.1), (10, 1.0)):
        t_off, active, t_avg = early_stopping(log_post, lengths, min_frames=tau, threshold=s_th)
        assert active.any(dim=1).all()
        assert (t_avg >= 1).all()
        assert (t_off.max(dim=1).values == lengths).all()


def test_s_max_is_over_all_languages_including_switched_off_ones():
    log_post = _log([[-3.0, 0.0, -0.5], [0.0, -2.0, -2.4], [0.0, -2.0, -1.6]])
    # t=1: s = (-3, 0, -0.5): language 0 off. t=3: s = (-3, -4, -4.5): s_max = -3 comes from the
    # switched-off language 0, so language 2 (-4.5 < -4) goes off and language 1 (-4, not < -4) stays.
    t_off, active, t_avg = early_stopping(log_post, min_frames=0, threshold=1.0)
    assert t_off.tolist() == [1, 3, 3]
    assert active.tolist() == [False, True, False]
    assert float(t_avg) == pytest.approx(7 / 3)


def test_batched_with_padding_equals_one_by_one():
    a = torch.log_softmax(torch.randn(7, 3, dtype=torch.float64), dim=-1)
    b = torch.log_softmax(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    padded = torch.full((2, 7, 3), 5.0, dtype=torch.float64)  # garbage in the padding
    padded[0], padded[1, :4] = a, b
    t_off, active, t_avg = early_stopping(padded, torch.tensor([7, 4]), min_frames=1, threshold=0.3)
    for i, (x, n) in enumerate(((a, 7), (b, 4))):
        t1, a1, avg1 = early_stopping(x, min_frames=1, threshold=0.3)
        assert t_off[i].tolist() == t1.tolist()
        assert active[i].tolist() == a1.tolist()
        assert float(t_avg[i]) == pytest.approx(float(avg1))
        assert int(t_off[i].max()) <= n


def test_infinite_settings_keep_every_decoder_on():
    log_post = torch.log_softmax(torch.randn(2, 9, 4), dim=-1)
    for tau, s_th in ((math.inf, 0.1), (0, math.inf)):
        t_off, active, t_avg = early_stopping(log_post, torch.tensor([9, 5]), min_frames=tau, threshold=s_th)
        assert active.all()
        assert t_off.tolist() == [[9] * 4, [5] * 4]
        assert t_avg.tolist() == [4.0, 4.0]


def test_negative_settings_are_value_errors():
    """A pure function: plain ValueError (the config layer turns bad model.lid_free into InputError)."""
    with pytest.raises(ValueError, match=r"s_th.*-0\.1") as info:
        early_stopping(torch.zeros(3, 2), min_frames=1, threshold=-0.1)
    assert not isinstance(info.value, InputError)
    with pytest.raises(ValueError, match=r"lengths \(3,\) must be \(B,\) with B = 2"):
        average_posteriors(torch.zeros(2, 4, 3), torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match=r"\(2, 4, 3\).*\(3,\)"):
        frame_lid_loss(torch.zeros(2, 4, 3), torch.tensor([4, 4, 4]), torch.tensor([0, 1]))


def test_average_posteriors_ignore_padding_and_choice_among_active():
    log_post = torch.log(torch.tensor([[[0.9, 0.1], [0.7, 0.3], [0.0001, 0.9999]]]))
    avg = average_posteriors(log_post, torch.tensor([2]))
    assert avg[0].tolist() == pytest.approx([0.8, 0.2])
    assert choose_language(avg, torch.tensor([[True, True]])).tolist() == [0]
    assert choose_language(avg, torch.tensor([[False, True]])).tolist() == [1]
    # Every decoder off: choose among those switched off last.
    none_on = torch.tensor([[False, False]])
    assert choose_language(avg, none_on, torch.tensor([[2, 5]])).tolist() == [1]
    assert choose_language(avg, none_on, torch.tensor([[5, 5]])).tolist() == [0]


def test_lid_loss_is_masked_by_lengths():
    logits = torch.randn(2, 5, 3, requires_grad=True)
    lengths, langs = torch.tensor([5, 2]), torch.tensor([1, 2])
    loss = frame_lid_loss(logits, lengths, langs)
    expected = torch.cat(
        [
            torch.nn.functional.cross_entropy(logits[0], torch.full((5,), 1), reduction="none"),
            torch.nn.functional.cross_entropy(logits[1, :2], torch.full((2,), 2), reduction="none"),
        ]
    ).mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert logits.grad[1, 2:].abs().sum() == 0  # padded frames get no gradient
    assert logits.grad[1, :2].abs().sum() > 0
    changed = logits.detach().clone()
    changed[1, 2:] = 100.0
    assert float(frame_lid_loss(changed, lengths, langs)) == pytest.approx(loss.item())
