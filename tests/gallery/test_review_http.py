"""Review through the gallery's HTTP interface, over a real run's store: verdicts, filters, the
picks' zip, and the security rules (read-only default, token, cross-site, escaping, traversal)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from html import unescape
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.gallery._support import ASSET, REVIEW_TOKEN, StoredRun, get, materialize_run
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.reviews import current_verdicts, read_records, record_verdict
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, cli, links, pages
from zimage_dagster.gallery.export import export_picks
from zimage_dagster.gallery.index import GalleryIndex

TOKEN = REVIEW_TOKEN
NOTE = "<script>document.title='pwned'</script><b>bold</b> & \"quoted\" 'single'"
GRID = links.asset_path(ASSET)
CSRF = re.compile(r"name='csrf' value='([^']+)'")
CARD = re.compile(r"<article class='card' data-key='([^']*)'")
METHODS = ("POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@pytest.fixture(scope="module")
def run(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    return materialize_run(emulator_server, tmp_path_factory.mktemp("review-store"))


@contextmanager
def _signed_in(gallery: Gallery) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gallery.url, timeout=30) as client:
        answer = client.post(links.SIGN_IN_PATH, data={"token": TOKEN, "next": GRID})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == GRID
        yield client


def _csrf(client: httpx.Client, key: str) -> str:
    found = CSRF.search(get(client, links.partition_url("", ASSET, key)).text)
    assert found is not None
    return unescape(found[1])


def _records(root: Path) -> list[Path]:
    return sorted((root / "_reviews").rglob("*.json")) if (root / "_reviews").exists() else []


def _bearer(client: httpx.Client, key: str, **form: str) -> httpx.Response:
    return client.post(
        links.verdict_url("", ASSET, key), data=form, headers={"authorization": f"Bearer {TOKEN}"}
    )


def test_the_read_only_default_answers_405_to_every_non_get(root: Path, tmp_path: Path) -> None:
    paths = [
        "/",
        GRID,
        links.partition_url("", ASSET, "fox"),
        links.verdict_url("", ASSET, "fox"),
        links.image_url("", ASSET, "fox"),
        links.export_url("", ASSET),
        links.SIGN_IN_PATH,
        links.SIGN_OUT_PATH,
        "/no/such/path",
    ]
    with (
        Gallery(root, cache_dir=tmp_path / "c", refresh_s=0) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for path in paths:
            for method in METHODS:
                answer = client.request(
                    method,
                    path,
                    data={"verdict": "reject"},
                    headers={"authorization": f"Bearer {TOKEN}"},
                )
                assert answer.status_code == 405, f"{method} {path}: {answer.status_code}"
                assert answer.headers["allow"] == "GET, HEAD"
            if path != links.SIGN_OUT_PATH:  # a POST-only route even with --review
                assert client.head(path).status_code != 405
        assert "read-only" in get(client, "/").text
        assert "name='csrf'" not in get(client, links.partition_url("", ASSET, "fox")).text
    # With --review, only the review's own POSTs are let through.
    with (
        Gallery(root, cache_dir=tmp_path / "c", review_token=TOKEN) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for path in ("/", GRID, links.image_url("", ASSET, "fox"), "/no/such/path"):
            assert client.post(path).status_code == 405
        assert client.put(links.verdict_url("", ASSET, "fox")).status_code == 405
    assert _records(root) == []


def test_a_verdict_without_the_token_is_refused_with_403(review: Gallery, root: Path) -> None:
    url = links.verdict_url("", ASSET, "fox")
    form = {"verdict": "pick", "candidate": "0"}
    with httpx.Client(base_url=review.url, timeout=30) as client:
        assert client.post(url, data=form).status_code == 403
        wrong = client.post(url, data=form, headers={"authorization": "Bearer not-the-token"})
        assert (wrong.status_code, wrong.json()) == (403, {"error": "the review token is wrong"})
        bad_sign_in = client.post(links.SIGN_IN_PATH, data={"token": TOKEN[:-1] + "x"})
        assert bad_sign_in.status_code == 403
        assert "set-cookie" not in bad_sign_in.headers
        assert client.post(url, data=form).status_code == 403
    with _signed_in(review) as client:
        # Signed in, but a form without its CSRF value (what another site would post) fails.
        assert client.post(url, data=form).status_code == 403
        assert client.post(url, data={**form, "csrf": "0" * 64}).status_code == 403
    assert _records(root) == []


def test_a_cross_origin_form_post_is_refused(review: Gallery, root: Path) -> None:
    url = links.verdict_url("", ASSET, "fox")
    with _signed_in(review) as client:
        form = {"verdict": "pick", "candidate": "0", "csrf": _csrf(client, "fox")}
        for headers in (
            {"origin": "https://evil.example"},
            {"origin": "null"},
            {"sec-fetch-site": "cross-site"},
            {"sec-fetch-site": "same-site"},
        ):
            answer = client.post(url, data=form, headers=headers)
            assert answer.status_code == 403, headers
            assert "cross-site request refused" in answer.text
        assert (
            client.post(
                links.SIGN_IN_PATH,
                data={"token": TOKEN},
                headers={"origin": "https://evil.example"},
            ).status_code
            == 403
        )
        assert _records(root) == []
        # The same form from the gallery's own page is taken.
        own = {"origin": review.url, "sec-fetch-site": "same-origin"}
        answer = client.post(url, data=form, headers=own)
        assert answer.status_code == 303
        assert answer.headers["location"] == links.partition_url("", ASSET, "fox")
    assert len(_records(root)) == 1


def test_the_session_cookie_is_strict_and_never_the_token(review: Gallery) -> None:
    with httpx.Client(base_url=review.url, timeout=30) as client:
        answer = client.post(links.SIGN_IN_PATH, data={"token": TOKEN, "next": "//evil.example/"})
        assert answer.headers["location"] == "/"  # never a redirect off the gallery
        cookie = answer.headers["set-cookie"]
        assert "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert TOKEN not in cookie


def test_pick_reject_undo_and_the_review_filters(review: Gallery, root: Path) -> None:
    with _signed_in(review) as client:
        fox = client.post(
            links.verdict_url("", ASSET, "fox"),
            data={
                "verdict": "pick",
                "candidate": "0",
                "csrf": _csrf(client, "fox"),
                "back": "review=unreviewed&q=red",
            },
        )
        assert fox.status_code == 303
        assert (
            fox.headers["location"]
            == links.partition_url("", ASSET, "fox") + "?q=red&review=unreviewed"
        )
        owl = _bearer(client, "owl", verdict="reject", note="too dark")
        assert owl.status_code == 201
        assert (owl.json()["verdict"], owl.json()["reviewer"], owl.json()["note"]) == (
            "reject",
            "ana",
            "too dark",
        )

        def shown(review_state: str) -> set[str]:
            return set(CARD.findall(get(client, f"{GRID}?review={review_state}").text))

        everything = set(CARD.findall(get(client, GRID).text))
        assert shown("picked") == {"fox"}
        assert shown("rejected") == {"owl"}
        assert shown("unreviewed") == everything - {"fox", "owl"}
        page = get(client, links.partition_url("", ASSET, "owl")).text
        assert "data-review='rejected'" in page
        assert "too dark" in page
        # Undo: the reviewer's own last verdict goes, and the partition is unreviewed again.
        assert _bearer(client, "fox", verdict="undo").status_code == 201
        assert shown("picked") == set()
        assert "fox" in shown("unreviewed")
        nothing = _bearer(client, "fox", verdict="undo")
        assert nothing.status_code == 409
        assert "no verdict to undo" in nothing.json()["error"]
        bad = _bearer(client, "fox", verdict="approve")
        assert bad.status_code == 400
        assert "verdict 'approve'" in bad.json()["error"]
    store = ImageStore(root)
    assert [r.verdict for r in read_records(store, ASSET, "fox")] == ["pick", "undo"]
    assert set(current_verdicts(store, ASSET)) == {"owl"}


def test_next_and_previous_follow_the_grids_filters(review: Gallery) -> None:
    with _signed_in(review) as client:
        ordered = list(CARD.findall(get(client, GRID + "?order=partition").text))
        assert ordered == sorted(ordered)
        middle = ordered[2]
        page = get(client, links.partition_url("", ASSET, middle) + "?order=partition").text
        prev_href = re.search(r"<a rel='prev' href='([^']+)'", page)
        next_href = re.search(r"<a rel='next' href='([^']+)'", page)
        assert prev_href
        assert next_href
        assert (
            unescape(prev_href[1])
            == links.partition_url("", ASSET, ordered[1]) + "?order=partition"
        )
        assert (
            unescape(next_href[1])
            == links.partition_url("", ASSET, ordered[3]) + "?order=partition"
        )
        # Under "unreviewed", a picked neighbour is skipped.
        assert _bearer(client, ordered[3], verdict="pick", candidate="0").status_code == 201
        page = get(
            client, links.partition_url("", ASSET, middle) + "?order=partition&review=unreviewed"
        ).text
        next_href = re.search(r"<a rel='next' href='([^']+)'", page)
        assert next_href
        assert unescape(next_href[1]).startswith(links.partition_url("", ASSET, ordered[4]) + "?")


def test_a_note_holding_html_and_script_is_escaped_everywhere(review: Gallery, root: Path) -> None:
    with _signed_in(review) as client:
        assert _bearer(client, "fox", verdict="reject", note=NOTE).status_code == 201
        for path in ("/", GRID, GRID + "?review=rejected", links.partition_url("", ASSET, "fox")):
            text = get(client, path).text
            assert "<script>" not in text
            assert "<b>bold</b>" not in text
        page = get(client, links.partition_url("", ASSET, "fox")).text
        assert page.count(pages._text(NOTE)) == 2  # the verdict box and the history
    stored = json.loads(_records(root)[0].read_text())
    assert stored["note"] == NOTE  # kept as written: it is data, escaped where it is shown


def test_traversal_in_keys_and_candidate_indexes_is_404(review: Gallery, root: Path) -> None:
    base = links.asset_path(ASSET)
    with _signed_in(review) as client:
        csrf = _csrf(client, "fox")
        for path in (
            f"{base}-/verdict/..%2F..%2Foutside",
            f"{base}-/verdict/fox%2F..%2Fowl",
            f"{base}-/verdict/",
            f"{base}-/verdict/night%2F..",
            "/assets/..%2F_reviews/-/verdict/fox",
            f"/assets/_reviews/{ASSET}/-/verdict/fox",
        ):
            answer = client.post(path, data={"verdict": "reject", "csrf": csrf})
            assert answer.status_code == 404, path
        for candidate in ("../0", "-1", "1", "7", "99", "0x0", " 0", "", "0/../1", "%30"):
            answer = _bearer(client, "fox", verdict="pick", candidate=candidate)
            assert answer.status_code == 404, candidate
        # The failed partition has no image: no candidate to pick.
        assert _bearer(client, "night", verdict="pick", candidate="0").status_code == 404
        assert client.get(f"{base}-/export/..%2F..%2Fpicks.zip").status_code == 404
    assert _records(root) == []


def _pick(client: httpx.Client, keys: list[str]) -> None:
    for key in keys:
        assert _bearer(client, key, verdict="pick", candidate="0").status_code == 201


def test_the_picks_zip_and_its_manifest_match_the_store(
    review: Gallery, root: Path, run: StoredRun
) -> None:
    picked = ["boat", "fox", "hen"]
    with _signed_in(review) as client:
        _pick(client, picked)
        assert _bearer(client, "owl", verdict="reject").status_code == 201
        grid = get(client, GRID).text
        assert f"href='{links.export_url('', ASSET)}'" in grid
        answer = get(client, links.export_url("", ASSET))
    assert answer.headers["content-type"] == "application/zip"
    assert "attachment" in answer.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [r["key"] for r in rows] == sorted(picked)
    store = ImageStore(root)
    for row in rows:
        found = store.find(ASSET, row["key"])
        assert found is not None
        record = found.provenance
        data = archive.read(row["file"])
        assert (
            hashlib.sha256(data).hexdigest()
            == row["sha256"]
            == record["sha256"]
            == run.sha256(row["key"])
        )
        assert (row["prompt"], row["seed"], row["task_id"]) == (
            record["prompt"],
            str(record["seed"]),
            record["task_id"],
        )
        assert (row["verdict"], row["candidate"], row["reviewer"]) == ("pick", "0", "ana")
    assert sorted(archive.namelist()) == sorted([*(r["file"] for r in rows), "manifest.csv"])


def test_the_export_holds_one_image_at_a_time(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    count, size = 40, 400_000
    for n in range(count):
        data = os.urandom(size)  # incompressible: the zip stores it as is
        record = ImageRecord(seed=n + 1, task_id=f"t{n}", prompt=f"p{n}")
        store.save("big", f"k{n:03d}", data, "png", to_provenance(record))
        record_verdict(store, "big", f"k{n:03d}", "pick", reviewer="ana", candidate=0)
    index = GalleryIndex(store).snapshot().assets["big"]
    verdicts = current_verdicts(store, "big")
    tracemalloc.start()
    try:
        total = 0
        chunks = 0
        for chunk in export_picks(store, index, verdicts):
            total += len(chunk)
            chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > count * size
    assert chunks == count + 1  # each image is over 256 KiB: handed on at once, then the rest
    print(f"export of {count} x {size} B: peak {peak / 1e6:.1f} MB for {total / 1e6:.1f} MB")
    assert peak < 5 * size  # a few copies of one image, never the archive


def _gallery_command(root: Path, cache: Path, *options: str) -> list[str]:
    """``zimage-gallery`` on a free port over ``root``, with ``options``."""
    script = Path(sys.executable).parent / "zimage-gallery"
    return [str(script), "--storage", str(root), "--port", "0", "--cache-dir", str(cache), *options]


def test_the_token_is_in_no_page_log_or_record(root: Path, tmp_path: Path) -> None:
    command = _gallery_command(
        root,
        tmp_path / "c",
        "--review",
        "--reviewer",
        "ana",
        "--log-level",
        "debug",
        "--refresh",
        "0",
    )
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    bodies: list[bytes] = []
    try:
        assert process.stderr is not None
        assert process.stdout is not None
        said = process.stderr.readline()
        token = said.rsplit(": ", 1)[1].strip()
        assert len(token) >= 32
        url = process.stdout.readline().strip()
        with httpx.Client(base_url=url, timeout=30) as client:
            signed = client.post(links.SIGN_IN_PATH, data={"token": token})
            assert signed.status_code == 303
            bodies.append(str(signed.headers).encode())
            answer = client.post(
                links.verdict_url("", ASSET, "fox"),
                data={"verdict": "reject", "note": "meh", "csrf": _csrf(client, "fox")},
            )
            assert answer.status_code == 303
            bearer = client.post(
                links.verdict_url("", ASSET, "owl"),
                data={"verdict": "pick", "candidate": "0"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert bearer.status_code == 201
            bodies.append(bearer.content)
            wrong = client.post(
                links.verdict_url("", ASSET, "owl"),
                data={"verdict": "undo"},
                headers={"authorization": f"Bearer {token}x"},
            )
            bodies.append(wrong.content)
            seen: set[str] = set()
            todo = ["/", GRID, links.SIGN_IN_PATH]
            while todo:
                path = todo.pop()
                if path in seen or not path.startswith("/") or path.startswith("//"):
                    continue
                seen.add(path)
                page = client.get(path)
                bodies += [page.content, str(page.headers).encode()]
                if page.headers.get("content-type", "").startswith("text/html"):
                    todo += [unescape(h) for h in re.findall(r"(?:href|src)='([^']+)'", page.text)]
            assert len(seen) > 20
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=30)
    for body in bodies:
        assert token.encode() not in body
    assert token not in rest  # nothing logged after the one line that showed it
    records = _records(root)
    assert len(records) == 2
    for record in records:
        assert token not in record.read_text()


def test_the_help_shows_every_default_and_an_example() -> None:
    script = Path(sys.executable).parent / "zimage-gallery"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    options = re.findall(r"^  (--[a-z-]+)", out, re.M)
    assert {"--storage", "--review", "--review-token-file", "--reviewer", "--refresh"} <= set(
        options
    )
    section = out.split("options:", 1)[1].split("example:", 1)[0]
    entries = [" ".join(e.split()) for e in re.split(r"\n  (?=-)", section) if e.strip()]
    assert len(entries) == len(options) + 1  # and -h
    for entry in entries:
        if entry.startswith(("-h", "--storage STORAGE ")):
            continue
        assert "(default:" in entry, entry
    assert "example:" in out
    assert "zimage-gallery --storage" in out.split("example:", 1)[1]


def test_small_fixes_yes_no_red_failures_and_the_store_named_when_empty(
    review: Gallery, tmp_path: Path
) -> None:
    with httpx.Client(base_url=review.url, timeout=30) as client:
        page = get(client, links.partition_url("", ASSET, "fox")).text
        assert re.search(r"data-fact='reused'><th>reused</th><td>(yes|no)</td>", page)
        assert "True" not in page
        assert "False" not in page
        assert "<span class=bad>1 failed</span>" in get(client, "/").text
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with Gallery(empty, cache_dir=tmp_path / "c") as server, httpx.Client() as client:
        home = get(client, server.url + "/").text
        assert f"No image in <code>{pages._text(str(empty))}</code> yet" in home


def test_a_thumbnail_of_the_store_is_still_served(review: Gallery) -> None:
    with httpx.Client(base_url=review.url, timeout=30) as client:
        thumb = get(client, links.thumbnail_url("", ASSET, "fox"))
        with Image.open(io.BytesIO(thumb.content)) as image:
            assert max(image.size) <= 320
        script = get(client, "/-/review.js")
        assert script.headers["content-type"].startswith("text/javascript")
        download = get(client, links.download_url("", ASSET, "fox"))
        assert download.headers["content-disposition"].startswith(
            "attachment; filename*=UTF-8''fox."
        )


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_gallery_commands_parse() -> None:
    text = README.read_text(encoding="utf-8")
    lines = [
        line.split("  #", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.startswith("zimage-gallery ")
    ]
    assert any("--review" in line for line in lines)
    for line in lines:
        args = cli.parse_args(shlex.split(line)[1:])
        assert args.storage


def test_the_readmes_verdict_reading_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = README.read_text(encoding="utf-8")
    (block,) = [
        b
        for b in re.findall(r"```python\n(.*?)```", text, re.S)
        if b.startswith("# Reading the verdicts")
    ]
    monkeypatch.chdir(tmp_path)
    store = ImageStore("zimage_output")
    record_verdict(store, "hero_images", "fox", "reject", reviewer="bo", note="blurry")
    record_verdict(store, "hero_images", "owl", "pick", reviewer="ana", candidate=0)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == [
        "fox rejected None bo blurry",
        "owl picked 0 ana ",
    ]


def test_a_verdict_form_too_large_or_not_a_form_is_refused(review: Gallery, root: Path) -> None:
    url = links.verdict_url("", ASSET, "fox")
    bearer = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=review.url, timeout=30) as client:
        big = client.post(url, data={"verdict": "reject", "note": "x" * 20_000}, headers=bearer)
        assert big.status_code == 413
        as_json = client.post(url, json={"verdict": "reject"}, headers=bearer)
        assert as_json.status_code == 415
        long_note = client.post(url, data={"verdict": "reject", "note": "x" * 2001}, headers=bearer)
        assert long_note.status_code == 400
        assert "note: must be text of at most 2000 characters" in long_note.json()["error"]
    assert _records(root) == []


def test_two_reviewers_in_two_gallery_processes_at_once_lose_nothing(
    root: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "review.token"
    token_file.write_text(TOKEN + "\n")
    processes = [
        subprocess.Popen(
            _gallery_command(
                root, tmp_path / who, "--review-token-file", str(token_file), "--reviewer", who
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in ("ana", "bo")
    ]
    keys = ["fox", "owl", "boat", "cliff"]
    rounds = 15
    try:
        urls = []
        for process in processes:
            assert process.stdout is not None
            urls.append(process.stdout.readline().strip())

        def review(url: str, who: str) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                for n in range(rounds):
                    for key in keys:
                        form = (
                            {"verdict": "pick", "candidate": "0"}
                            if who == "ana"
                            else {"verdict": "reject", "note": f"round {n}"}
                        )
                        answer = client.post(
                            links.verdict_url("", ASSET, key),
                            data=form,
                            headers={"authorization": f"Bearer {TOKEN}"},
                        )
                        assert answer.status_code == 201, answer.text

        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(review, urls[0], "ana"), pool.submit(review, urls[1], "bo")]:
                done.result()
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    store = ImageStore(root)
    records = read_records(store, ASSET)
    assert len(records) == 2 * rounds * len(keys)
    verdicts = current_verdicts(store, ASSET)
    for key in keys:
        mine = [r for r in records if r.partition_key == key]
        assert {r.reviewer for r in mine} == {"ana", "bo"}
        assert verdicts[key].record_id == max(mine, key=lambda r: r.order).id
