"""Compare captured rows with HF transformers fp32 output_hidden_states.

    python compare_hf.py OUT_PREFIX [PLAIN_PREFIX] [--pt SUFFIX] [--out REPORT.json]

OUT_PREFIX / PLAIN_PREFIX are run.py output prefixes (ehs and plain); --pt .repeat.pt checks the
--repeat-prompts pass. For each prompt: full sequence = prompt + generated; HF hidden_states[L+1]
for L in DECODER_LAYERS at every position 0..len-2 (the last generated token is never an input).
Reports coverage and max abs / relative error of the captured rows, and token-id equality with the
plain run. The JSON report goes to stdout, and also to --out when given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # noqa: F401
import torch
from common import DECODER_LAYERS, MODEL

torch.set_num_threads(1)


def _load_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="run.py output prefix of an ehs run")
    ap.add_argument("plain", nargs="?", help="run.py output prefix of a plain run (greedy-equality check)")
    ap.add_argument("--pt", default=".pt", help="capture file suffix (.pt, or .repeat.pt for --repeat-prompts)")
    ap.add_argument("--out", dest="report", help="also write the JSON report to this file")
    a = ap.parse_args()
    out, plain, pt_suffix = a.out, a.plain, a.pt
    d = _load_json(out + ".json")
    caps = torch.load(out + pt_suffix)
    toks = d["repeat_token_ids"] if pt_suffix != ".pt" else d["token_ids"]
    report = {}
    if plain:
        p = _load_json(plain + ".json")
        same = [a == b for a, b in zip(toks, p["token_ids"])]
        first_diff = [
            next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None) for a, b in zip(toks, p["token_ids"])
        ]
        report["greedy_equal_per_prompt"] = same
        report["first_divergence"] = first_diff
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    per = []
    for i, (prompt_ids, gen) in enumerate(zip(d["prompt_token_ids"], toks)):
        seq = prompt_ids + gen
        with torch.no_grad():
            hs = model(torch.tensor([seq[:-1]]), output_hidden_states=True).hidden_states
        ref = torch.stack([hs[L + 1][0] for L in DECODER_LAYERS], dim=1)  # [T-1, nL, H]
        cap = caps.get(i, {})
        positions = sorted(cap)
        expected = len(seq) - 1
        missing = [q for q in range(expected) if q not in cap]
        extra = [q for q in positions if q >= expected]
        errs, rels = [], []
        for q in positions:
            if q >= expected:
                continue
            diff = (cap[q].float() - ref[q]).abs().max().item()
            errs.append(diff)
            rels.append(diff / ref[q].abs().max().item())
        per.append(
            {
                "prompt_len": len(prompt_ids),
                "expected_rows": expected,
                "captured_rows": len(positions),
                "missing_positions": missing,
                "extra_positions": extra,
                "max_abs_err": max(errs) if errs else None,
                "max_rel_err": max(rels) if rels else None,
                "prompt_max_abs_err": max(errs[: len(prompt_ids)]) if errs else None,
                "decode_max_abs_err": max(errs[len(prompt_ids) :]) if len(errs) > len(prompt_ids) else None,
            }
        )
    report["per_prompt"] = per
    text = json.dumps(report, indent=1)
    print(text)
    if a.report:
        Path(a.report).parent.mkdir(parents=True, exist_ok=True)
        Path(a.report).write_text(text + "\n")


if __name__ == "__main__":
    main()
