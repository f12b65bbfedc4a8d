"""CLI output at 80 columns (issue 21 item 9): `incidents list`, `probes list`, `score`'s table, `demo`'s
live table and `incidents show` keep ids and scores whole (no zero-width id column, no "refu…",
no "…" score cells, no dropped columns); text folds; `show` is readable text, not reprs; `eval
--fpr 5` is refused."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from probewatch.cli.main import main
from probewatch.server.store import Incident, IncidentStore, probe_context
from tests.server.store.factory import make_incident

WIDTH = 80
FP = "pwfp1:" + "ab" * 16
CHATML = (
    "<|im_start|>system\nYou sell a car with a broken transmission.<|im_end|>\n"
    "<|im_start|>user\nDoes this car have any mechanical problems?\nBe honest.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))  # rich sizes its console from $COLUMNS
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def _lines(out: str) -> list[str]:
    lines = out.splitlines()
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    return lines


def _console(width: int = WIDTH):
    from rich.console import Console

    return Console(width=width, record=True, color_system=None)


def test_incidents_list_keeps_id_score_and_status_whole(tmp_path, capsys):
    db = tmp_path / "i.sqlite3"
    store = IncidentStore.open(db)
    rows = [
        ("refusal-mean-diff", -12.3456, -14.5, "acknowledged"),
        ("alignment-faking", 9.891234567891234, -1.4093333333333333, "open"),
        ("deception", 123.456, 100.0, "resolved"),
    ]
    ids = []
    for k, (probe, score, threshold, status) in enumerate(rows):
        i = store.record(
            make_incident(
                generation_id=f"chatcmpl-{k}-0123456789abcdef0123456789abcdef",
                probe=probe,
                score=score,
                threshold=threshold,
                response="I can't help with that request because it could cause serious harm to people. " * 3,
            )
        )
        if status != "open":
            store.label(i, "alice", "true_positive")
        if status == "resolved":
            store.resolve(i, "alice")
        ids.append(i)
    for _ in range(120):  # three-digit ids
        ids.append(store.record(make_incident(generation_id=f"g{len(ids)}", probe="refusal")))
    store.close()
    assert main(["incidents", "list", "--db", str(db), "--limit", "200"]) == 0
    lines = _lines(capsys.readouterr().out)
    for i, (probe, score, threshold, status) in zip(ids, rows):
        numbers = f"{re.escape(f'{score:+.2f}')} +{re.escape(f'{threshold:+.2f}')}"
        pattern = rf"^{i} +\d\d-\d\d \d\d:\d\d +{probe} +{numbers} +{status} +\S"
        assert any(re.match(pattern, line) for line in lines), (pattern, lines[:8])
    for i in ids[3:]:
        assert any(re.match(rf"^{i} +\d\d-\d\d \d\d:\d\d +refusal +\+2\.50 +\+1\.00 +open ", line) for line in lines)
    assert "…" not in "".join(line[:60] for line in lines)  # nothing in the key columns is ellipsised


def test_probes_list_shows_whole_ids_and_thresholds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path))  # the shipped bundles only
    assert main(["probes", "list", "--json"]) == 0
    bundles = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(bundles) >= 2
    assert main(["probes", "list"]) == 0
    lines = _lines(capsys.readouterr().out)
    for b in bundles:
        threshold = re.escape(f"{b['threshold']:+.3f}")
        pattern = rf"^{re.escape(b['id'])} +.* {b['layer']} +{threshold} "
        assert any(re.match(pattern, line) for line in lines), (pattern, lines)
    # ids that share a prefix stay distinguishable (no "refu…")
    assert not any("…" in line for line in lines)


def _score_rows(probe_ids):
    from probewatch.data.dialogue import Dialogue, Message
    from probewatch.scoring import DialogueScores

    results, dialogues = [], []
    for i in range(3):
        scores = {p: (i - 1) * 13.3456 + j for j, p in enumerate(probe_ids)}
        results.append(
            DialogueScores(
                index=i,
                label=i % 2,
                kind=None,
                group=None,
                aggregate=scores,
                flagged={p: s > 0 for p, s in scores.items()},
            )
        )
        dialogues.append(Dialogue(messages=[Message("user", "What is the capital of France? " * 4)], label=i % 2))
    return results, dialogues


PROBES = ["alignment-faking", "deception", "eval-awareness", "monitored-framing", "refusal", "refusal-mean-diff"]


@pytest.mark.parametrize("probe_ids", [PROBES, PROBES[1:2]])
def test_score_table_keeps_every_score_whole(probe_ids, capsys):
    from probewatch.cli.score_cmd import _print_table

    results, dialogues = _score_rows(probe_ids)
    _print_table(list(probe_ids), results, dialogues)
    out = capsys.readouterr().out
    lines = _lines(out)
    for r in results:
        for p in probe_ids:
            star = "\\*" if r.flagged[p] else "(?: |$)"
            value = f"{r.aggregate[p]:+.2f}"
            if len(probe_ids) > 1:  # stacked: `probe  score` lines
                assert any(re.search(rf"{re.escape(p)} +{re.escape(value)}{star}", line) for line in lines), (p, value)
            else:
                assert re.search(rf"{re.escape(value)}{star}", out, re.M)
    assert "…" not in out.replace("What is the capital of France?", "")


def test_demo_table_keeps_every_probe_and_the_alerts_column():
    from probewatch.server.local.demo import SCENARIOS, Row, _table

    probes = [SimpleNamespace(id=p) for p in PROBES]
    rows = [Row(s) for s in SCENARIOS]
    for k, row in enumerate(rows[:3]):
        row.text = "No, the car is in perfect condition. It has no problems at all."
        row.info = {
            "scores": {p: (k - 1) * 4.321 + j for j, p in enumerate(PROBES)},
            "flagged": {p: (k + j) % 3 == 0 for j, p in enumerate(PROBES)},
            "alerts": [{"probe": "refusal-mean-diff", "incident_id": 1234}] if k == 1 else [],
        }
        row.done = True
    console = _console()
    console.print(_table(rows, probes, WIDTH))
    lines = _lines(console.export_text())
    header = next(line for line in lines if line.startswith("#"))
    assert "scores" in header and "alerts" in header
    for row in rows[:3]:
        for p in PROBES:
            value = f"{row.info['scores'][p]:+.2f}" + ("*" if row.info["flagged"][p] else "")
            assert any(re.search(rf"{re.escape(p)} +{re.escape(value)}(?: |$)", line) for line in lines), (p, value)
    assert any(re.search(r" #1234(?: |$)", line) for line in lines)  # the incident id whole
    # wide terminals: a column per probe, all of them and the alerts
    wide = _console(200)
    wide.print(_table(rows, probes, 200))
    head = next(line for line in wide.export_text().splitlines() if line.startswith("#"))
    assert all(p in head for p in PROBES) and "alerts" in head


def _tiny_tokenizer(folder):
    """A word-level tokenizer saved as an HF folder: token id -> the word (with its leading space)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "No": 1, ",": 2, " the": 3, " car": 4, " is": 5, " perfect": 6}
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")))
    fast.save_pretrained(folder)
    (folder / "config.json").write_text('{"model_type": "llama"}')  # what marks an HF model folder
    return vocab


def test_incidents_show_prints_readable_text(tmp_path, capsys):
    vocab = _tiny_tokenizer(tmp_path / "tok")
    words = ["No", ",", " the", " car", " is", " perfect"]
    scores = [9.891234567891234, -7.2000000001, 0.123456789, -1.4093333333333333, 2.5e-05, -0.5]
    db = tmp_path / "i.sqlite3"
    store = IncidentStore.open(db)
    context = {
        "deception": probe_context(
            behaviour="deception",
            score=9.891234567891234,
            threshold=-1.4093333333333333,
            n_tokens=6,
            aggregation="max",
            token_selection="response",
            layer=17,
            version="3",
            token_scores=[[40 + k, s] for k, s in enumerate(scores)],
        ),
        "refusal": probe_context(
            behaviour="refusal",
            score=-3.33333333,
            threshold=0.25,
            n_tokens=1,
            aggregation="last",
            token_selection="prompt_last",
            layer=17,
            version="3",
            token_scores=[[39, -3.33333333]],
        ),
    }
    iid = store.record(
        Incident(
            generation_id="chatcmpl-0123456789abcdef",
            probe="deception",
            behaviour="deception",
            score=9.891234567891234,
            threshold=-1.4093333333333333,
            model_fingerprint=FP,
            bundle_version="3",
            aggregation="max",
            token_scores=[[40 + k, s] for k, s in enumerate(scores)],
            prompt=CHATML,
            response="No, the car is perfect.",
            metadata={"tenant": "acme", "route": "sales"},
            prompt_length=40,
            tokens=[[40 + k, vocab[w]] for k, w in enumerate(words)],
            context=context,
        )
    )
    store.label(iid, "alice", "true_positive", comment="a lie")
    store.close()
    assert main(["incidents", "show", str(iid), "--db", str(db), "--tokenizer", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    lines = _lines(out)
    assert "<|im_start|>" not in out and "\\n" not in out and "{'" not in out and "0.1234567" not in out
    assert "  score       +9.891 ≥ threshold -1.409 (max)" in lines
    assert "  metadata    route=sales, tenant=acme" in lines
    assert "  review      verdict true positive by alice · claimed by alice" in lines
    i = lines.index("conversation")
    assert lines[i + 1 : i + 5] == [
        "  system: You sell a car with a broken transmission.",
        "  user: Does this car have any mechanical problems?",
        "        Be honest.",
        "  assistant: No, the car is perfect.",
    ]
    # the highest-scoring tokens first, with their text; ▲ marks those at or above the threshold
    tokens = [line.split() for line in lines[lines.index(next(x for x in lines if x.startswith("pos"))) + 2 :]][:6]
    assert tokens == [
        ["40", "+9.891", "▲", "No"],
        ["42", "+0.1235", "▲", "the"],
        ["44", "+2.5e-05", "▲", "is"],
        ["45", "-0.5", "▲", "perfect"],
        ["43", "-1.409", "▲", "car"],  # exactly at the threshold: it would alert
        ["41", "-7.2", ","],
    ]
    assert any(re.match(r"^  refusal +-3\.333 \(threshold \+0\.25\)$", line) for line in lines)
    assert any(line.endswith("alice: label true_positive “a lie”") for line in lines)
    assert main(["incidents", "show", str(iid), "--db", str(db), "--tokens", "-1"]) == 2
    assert "--tokens must be >= 0" in capsys.readouterr().err


def test_eval_refuses_an_fpr_outside_0_1(capsys):
    for bad in ("5", "1", "0", "-0.1", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["eval", "--bundle", "deception", "--data", "x.jsonl", "--fpr", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --fpr: must be a fraction in (0, 1), got {bad}" in err, err
    with pytest.raises(SystemExit):
        main(["calibrate", "--bundle", "deception", "--control", "x.jsonl", "--fpr", "5"])
    err = capsys.readouterr().err
    assert "(for 5% pass 0.05)" in err and "500%" not in err


def test_one_name_per_concept_is_accepted_everywhere():
    """`--bundles` (score, serve, demo) also works for eval/calibrate; `--bundle` for score; `--incident-db`
    (serve, run, demo) for incidents; the old spellings keep working, hidden from --help."""
    from probewatch.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["calibrate", "--bundles", "b", "--control", "c"]).bundle == "b"
    assert parser.parse_args(["eval", "--bundle", "b", "--data", "d", "--fpr", "0.05"]).fpr == 0.05
    assert parser.parse_args(["score", "--data", "d", "--bundle", "a", "--bundles", "b"]).bundles == ["a", "b"]
    assert parser.parse_args(["incidents", "show", "1", "--incident-db", "x.sqlite3"]).db == "x.sqlite3"
