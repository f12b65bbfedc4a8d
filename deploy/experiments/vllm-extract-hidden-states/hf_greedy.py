"""HF greedy continuation (fp32) of the prompts vs the tokens vLLM + extract_hidden_states generated.

    python hf_greedy.py OUT_PREFIX

OUT_PREFIX is a run.py ehs output prefix from a --repeat-prompts run (the long-prompt test:
EHS_LONG=1 EHS_MAX_TOKENS=16). Prompt and generated token ids are read from OUT_PREFIX.json; both
token_ids and repeat_token_ids are checked against HF generate(do_sample=False).
"""

import argparse
import json

import common  # noqa: F401
import torch
from common import MODEL
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="run.py output prefix of an ehs --repeat-prompts run")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with open(a.out + ".json") as fh:
        d = json.load(fh)
    m = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    for key in ("token_ids", "repeat_token_ids"):
        res = []
        for p, g in zip(d["prompt_token_ids"], d[key]):
            out = m.generate(torch.tensor([p]), max_new_tokens=len(g), do_sample=False, min_new_tokens=len(g))
            res.append(out[0, len(p) :].tolist() == g)
        print(key, "equal to HF greedy:", res)


if __name__ == "__main__":
    main()
