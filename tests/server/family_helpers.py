"""A probe family for the tiny model: three member bundles on layers 1, 2 and 3 and its family.json
(live tests of the sidecar and the clients)."""

from __future__ import annotations

import json

from tests.probes.helpers import make_bundle
from tests.server.conftest import D_TINY

MEMBER_TYPES = ("sandbagging", "denial", "omission")

#: members on layers 1, 2 and 3 (3 is read by no other tiny probe); a mean member makes the family alert at close
MEMBERS = (("fam-sand", 1, "max"), ("fam-deny", 3, "max"), ("fam-omit", 2, "max"))


def family_folder(root, fingerprint, threshold: float, members=MEMBERS, aggregation=None):
    folder = root / "fam"
    for i, (mid, layer, agg) in enumerate(members):
        make_bundle(
            folder,
            mid,
            layer=layer,
            d=D_TINY,
            seed=20 + i,
            aggregation=aggregation or agg,
            fingerprint=fingerprint,
            threshold=-100.0,
        )  # fmt: skip  (a member alone would always alert)
    family = {
        "kind": "family",
        "id": "fam",
        "behaviour": "deception",
        "members": [{"id": m, "type": t} for (m, _, _), t in zip(members, MEMBER_TYPES)],
        "threshold": {"value": threshold, "method": "fixed", "fpr": None},
        "model": {"id": "tiny", "fingerprint": fingerprint},
    }
    (folder / "family.json").write_text(json.dumps(family))
    return folder
