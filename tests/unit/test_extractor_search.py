"""ExtractorSearch: which extractor takes a url_template's URLs, found by trying every URL pattern
over two processes (the forkserver and a forked helper), must be exactly what yt-dlp itself
would pick, whichever half holds the answer, and whatever becomes of the helper.

Each case runs in a fresh interpreter, as in the forkserver: the search forks, which a pytest
process with its threads is no place for. yt-dlp is the real one; its own choice is the first
extractor in its order whose ``suitable`` takes the URL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from yt_dlp.extractor import gen_extractor_classes
    from videofetchd.workers import warmup

    template, mode = sys.argv[1], sys.argv[2]
    if mode == "one-core":
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    search = warmup.ExtractorSearch(template, None)
    helper = search._helper[0] if search._helper else None
    if mode == "helper-killed" and helper is not None:
        os.kill(helper, signal.SIGKILL)
    key = search.result()
    url = template.replace("{id}", warmup.SAMPLE_ID)
    index, expected = next((i, ie.ie_key()) for i, ie in enumerate(gen_extractor_classes()) if ie.suitable(url))
    try:
        os.waitpid(-1, os.WNOHANG)
        leftover = True  # a child of ours still exists (running, or a zombie nobody reaped)
    except ChildProcessError:
        leftover = False
    print(json.dumps({"key": key, "expected": expected, "index": index, "helper": helper, "leftover": leftover,
                      "split": search.split, "count": len(search.classes)}))
""")

# the answer in the first half, in the second half, and the generic extractor (the last class)
TEMPLATES = {
    "youtube": "https://www.youtube.com/watch?v={id}",
    "vimeo": "https://vimeo.com/{id}",
    "generic": "http://127.0.0.1:8000/v/{id}.mp4",
}


def _search(template: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, template, mode], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("site", sorted(TEMPLATES))
def test_the_split_search_picks_what_ytdlp_picks(site: str) -> None:
    got = _search(TEMPLATES[site], "two-cores")
    assert got["key"] == got["expected"], got
    assert got["leftover"] is False, "the helper was not reaped"


def test_the_answers_lie_in_both_halves() -> None:
    # the cases above are only worth something if the halves differ: YouTube's answer is found by
    # this process, Vimeo's and the generic one's by the helper
    found = {site: _search(template, "two-cores") for site, template in TEMPLATES.items()}
    assert found["youtube"]["index"] < found["youtube"]["split"]
    assert found["youtube"]["split"] <= found["vimeo"]["index"] < found["generic"]["index"]
    assert found["generic"]["index"] == found["generic"]["count"] - 1


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs two cores to fork a helper")
def test_a_helper_killed_before_it_answers_costs_time_not_the_answer() -> None:
    got = _search(TEMPLATES["vimeo"], "helper-killed")
    assert got["helper"] is not None, "no helper was forked"
    assert got["key"] == got["expected"], got
    assert got["index"] >= got["split"], "the answer is the helper's to find"
    assert got["leftover"] is False


def test_on_one_core_there_is_no_helper() -> None:
    got = _search(TEMPLATES["generic"], "one-core")
    assert got["helper"] is None
    assert got["key"] == got["expected"] == "Generic", got
