"""The heatmap's colour function on extremes and ties: a token at or above its probe's threshold is
always painted in the "above" hue (orange to deep red), never blue, and the strongest shade goes to
the generation's highest token (issue 21 item 1: the one hot token used to be the palest blue)."""

from __future__ import annotations

import math
import re

import pytest

from probewatch.server.review.view import ABOVE_FROM, ABOVE_TO, BELOW_RGB, colour, colour_scale, probe_views
from probewatch.server.store import Incident

STRONGEST = f"background-color: rgb{ABOVE_TO}; color: #fff"
LIGHTEST_ABOVE = f"background-color: rgb{ABOVE_FROM}; color: #1f2328"
RGB = re.compile(r"background-color: rgb\((\d+), (\d+), (\d+)\)")
RGBA = re.compile(r"background-color: rgba\((\d+), (\d+), (\d+), ([0-9.]+)\)")


def paint(scores: dict[int, float | None], threshold: float) -> dict[int, str]:
    scale = colour_scale(scores, threshold)
    return {p: colour(s, threshold, scale) for p, s in scores.items()}


def is_above(style: str) -> bool:
    """An "above" shade: opaque, red channel dominant (the orange..red ramp)."""
    m = RGB.match(style)
    return bool(m) and int(m[1]) > int(m[2]) and int(m[1]) > int(m[3])


def below_alpha(style: str) -> float:
    m = RGBA.match(style)
    assert m and tuple(int(x) for x in m.groups()[:3]) == BELOW_RGB, style
    return float(m[4])


def test_one_hot_token_far_above_is_the_strongest_red():
    # the generation: one token 11.3 logits over the threshold, one far below
    styles = paint({80: 9.89, 79: -7.2}, -1.409)
    assert styles[80] == STRONGEST
    assert below_alpha(styles[79]) == 0.55  # saturated blue: 5.8 below (the scale's own extreme)


def test_single_token():
    assert paint({3: 0.7}, 0.2) == {3: STRONGEST}  # above: the max is the strongest
    assert paint({3: 0.2}, 0.2) == {3: STRONGEST}  # exactly at the threshold counts as above
    assert below_alpha(paint({3: -0.3}, 0.2)[3]) == pytest.approx(
        0.08 + 0.47 * 0.5, abs=0.006
    )  # 0.5 below, 1-logit floor


def test_all_equal_scores():
    assert set(paint(dict.fromkeys(range(5), 2.5), 1.0).values()) == {STRONGEST}  # ties above: all the max
    assert set(paint(dict.fromkeys(range(5), 9.0), -90.0).values()) == {STRONGEST}  # ties far above
    below = set(paint(dict.fromkeys(range(5), -3.0), 1.0).values())
    assert len(below) == 1 and below_alpha(below.pop()) == 0.55


def test_exactly_at_threshold_among_others_is_the_lightest_above_shade():
    styles = paint({1: 1.0, 2: 3.0, 3: -1.0, 4: -5.0}, 1.0)
    assert styles[1] == LIGHTEST_ABOVE and styles[2] == STRONGEST
    assert 0.08 < below_alpha(styles[3]) < below_alpha(styles[4]) == 0.55


def test_above_shades_grow_with_the_score():
    styles = paint({i: 1.0 + 0.5 * i for i in range(8)}, 1.0)
    reds = [tuple(map(int, RGB.match(styles[i]).groups())) for i in range(8)]
    assert all(is_above(styles[i]) for i in range(8))
    assert [r[1] for r in reds] == sorted((r[1] for r in reds), reverse=True)  # darker (less green) upwards
    assert styles[7] == STRONGEST


def test_threshold_above_every_score_paints_only_blues():
    styles = paint({1: -4.0, 2: -1.0, 3: 0.5}, 1.0)
    alphas = [below_alpha(styles[p]) for p in (1, 2, 3)]
    assert alphas == sorted(alphas, reverse=True) and alphas[0] == 0.55  # deeper the further below


def test_threshold_below_every_score_paints_only_reds_spread_over_their_range():
    styles = paint({1: -0.3, 2: 0.6, 3: 1.5}, -100.0)
    assert styles[1] == LIGHTEST_ABOVE and styles[3] == STRONGEST and is_above(styles[2])
    assert styles[2] not in (styles[1], styles[3])


@pytest.mark.parametrize(
    ("scores", "threshold"),
    [
        ({1: 1e308, 2: -1e308}, 0.0),
        ({1: 1e300, 2: 1e300 + 1e285}, -1e300),
        ({1: 1e-300, 2: 2e-300, 3: -1e-300}, 0.0),
        ({1: 5e-324, 2: 0.0}, 0.0),
        ({1: math.inf, 2: -math.inf, 3: 0.0, 4: None, 5: math.nan}, 0.0),
        ({1: 1e308}, -1e308),
    ],
)
def test_extreme_magnitudes_never_give_nan_and_above_stays_above(scores, threshold):
    styles = paint(scores, threshold)
    for pos, s in scores.items():
        style = styles[pos]
        assert "nan" not in style.lower() and "inf" not in style.lower()
        if s is None or math.isnan(s):
            assert style == ""
        elif s >= threshold:
            assert is_above(style), (s, style)
        else:
            assert 0.08 <= below_alpha(style) <= 0.55
    top = max((s for s in scores.values() if s is not None and not math.isnan(s)), default=None)
    if top is not None and top >= threshold:
        assert colour(top, threshold, colour_scale(scores, threshold)) == STRONGEST


def test_no_threshold_or_a_non_finite_one_paints_nothing():
    assert colour(1.0, None) == "" and colour(1.0, math.nan) == "" and colour(1.0, math.inf) == ""
    assert colour_scale({1: 1.0}, None) == colour_scale({}, 1.0)  # the default scale


def test_probe_views_paint_the_fired_token_above():
    """Through the view model: the incident page cell of the token that fired is the strongest red."""
    incident = Incident(
        generation_id="g",
        probe="dec",
        behaviour="deception",
        score=9.89,
        threshold=-1.409,
        model_fingerprint="pwfp1:" + "ab" * 16,
        bundle_version="1",
        token_scores=[[79, -7.2], [80, 9.89]],
        tokens=[[79, 5], [80, 6]],
    )
    (view,) = probe_views(incident, {}, None)
    cells = {c.pos: c for c in view.cells}
    assert cells[80].hot and cells[80].style == STRONGEST
    assert not cells[79].hot and below_alpha(cells[79].style) == 0.55


def test_an_answer_probe_shows_the_option_it_read():
    """An `answer` probe that read the prompt's option (B): its heatmap is that option's prompt tokens, and
    the panel says which option it read and why (the reply names it)."""
    from probewatch.server.review.state import make_templates
    from probewatch.server.store import probe_context

    def heatmaps(view) -> str:
        template = make_templates().env.get_template("_heatmaps.html")
        return template.render(views=[view], selected="ea", tab_link=lambda p: f"?probe={p}", decoded=True)

    texts = [[p, t] for p, t in enumerate(["Q?", "\n", "(A)", " yes", "\n", "(B)", " no", "\n", "(B)"])]
    context = {
        "ea": probe_context(
            behaviour="eval_awareness",
            score=2.0,
            threshold=1.0,
            n_tokens=1,
            aggregation="mean",
            token_selection="answer",
            layer=21,
            version="3",
            token_scores=[[6, 2.0]],
            answer_option="B",
        )
    }
    incident = Incident(
        generation_id="g",
        probe="ea",
        behaviour="eval_awareness",
        score=2.0,
        threshold=1.0,
        model_fingerprint="pwfp1:" + "ab" * 16,
        bundle_version="3",
        token_scores=[[6, 2.0]],
        prompt_length=8,
        context=context,
        token_texts=texts,
    )
    (view,) = probe_views(incident, {}, None)
    assert view.answer_option == "B"
    scored = [c for c in view.cells if c.score is not None]
    assert [(c.pos, c.text, c.prompt, c.hot) for c in scored] == [(6, " no", True, True)]
    html = heatmaps(view)
    assert "mean of 1 answer token(s) (the prompt's option (B), which the reply names)" in html
    context["ea"]["answer_option"] = None  # the same probe reading the reply: no option named
    (reply_view,) = probe_views(incident, {}, None)
    html = heatmaps(reply_view)
    assert reply_view.answer_option is None and "mean of 1 answer token(s) = " in html and "option (" not in html
