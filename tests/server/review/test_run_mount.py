"""`probewatch run --review`: the review app mounted at /review of the inference server, on the
in-process sidecar's incident store."""

from __future__ import annotations

import re

import httpx

from probewatch.server.review.auth import AuthConfig
from tests.server.inference.conftest import chat_folder  # noqa: F401 - the fixture is used by name
from tests.server.inference.helpers import MESSAGES


def test_review_is_served_next_to_the_chat_endpoint(chat_folder, tmp_path):  # noqa: F811
    from probewatch.server.local.stack import LocalStack, StackOptions

    folder, bundles = chat_folder
    options = StackOptions(
        model=str(folder),
        bundles=[str(p) for p in bundles],
        port=0,
        incident_db=tmp_path / "incidents.sqlite3",
        max_tokens=4,
        review=AuthConfig(local_reviewer="alice"),
    )
    with LocalStack(options) as stack, httpx.Client(base_url=stack.url, timeout=120) as c:
        body = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4}).json()
        incident_id = body["probewatch"]["alerts"][0]["incident_id"]
        queue = c.get("/review/")
        assert queue.status_code == 200 and f'href="/review/incidents/{incident_id}"' in queue.text
        page = c.get(f"/review/incidents/{incident_id}").text
        heatmap = page.split('data-probe="dec"')[1].split('<div class="heatmap')[0]
        cells = re.findall(r'<span class="tok[^"]*" data-pos="(\d+)" data-score=', heatmap)
        assert len(cells) == body["probewatch"]["tokens_scored"] > 0  # one heatmap cell per scored token
        assert "capital of france" in page and 'id="control-set"' in page  # conversation + the bundle's facts
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        saved = c.post(f"/review/incidents/{incident_id}", data={"action": "label", "label": "unsure", "csrf": csrf})
        assert saved.status_code == 303
        assert 'probewatch_review_labels{probe="dec",verdict="unsure"} 1.0' in c.get("/review/metrics").text
