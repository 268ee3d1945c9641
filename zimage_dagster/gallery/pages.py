"""The gallery's HTML: every value from the store goes through :func:`html.escape`.

Prompts and review notes are user data: they are escaped in text and in attributes, and the pages
carry no inline script (the app's Content-Security-Policy allows only the gallery's own
``/-/review.js``), so an injection prompt shows as text. Every page works without that script:
the keyboard shortcuts click the links and form buttons the page holds anyway.

>>> from zimage_dagster.engine.provenance import ImageRecord
>>> from zimage_dagster.gallery.index import GalleryItem
>>> record = ImageRecord(seed=7, task_id="t1", prompt="<script>alert(1)</script> a fox")
>>> page = partition_page(GalleryItem(("hero",), "fox", "stored", record))
>>> "&lt;script&gt;alert(1)&lt;/script&gt; a fox" in page, "<script>" in page
(True, False)
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from urllib.parse import urlencode

from zimage_dagster.engine.ledger import LedgerEntry
from zimage_dagster.engine.reviews import REVIEW_STATES, ReviewRecord, Verdict, review_state
from zimage_dagster.gallery import links
from zimage_dagster.gallery.access import Visitor
from zimage_dagster.gallery.candidates import Candidate, candidates_of
from zimage_dagster.gallery.index import (
    ORDERS,
    STATUSES,
    AssetIndex,
    GalleryItem,
    Page,
    Query,
    Snapshot,
)
from zimage_dagster.gallery.keyboard import KEYS

__all__ = [
    "CSS",
    "asset_page",
    "home_page",
    "message_page",
    "not_found_page",
    "partition_page",
    "sign_in_page",
]

#: Where a reproduced request goes (the real API; the key comes from the environment).
API_CREATE_URL = "https://api.evolink.ai/v1/images/generations"

CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa;
  --accent: #4f43dd; --bad: #b42318; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
  background: #fff; }
header.top { display: flex; gap: 16px; align-items: baseline; padding: 12px 24px;
  border-bottom: 1px solid var(--line); background: var(--bg); }
header.top a.brand { font-weight: 700; color: var(--ink); text-decoration: none; }
main { padding: 16px 24px 48px; }
a { color: var(--accent); }
h1 { font-size: 22px; margin: 4px 0 12px; word-break: break-word; }
h2 { font-size: 17px; margin: 24px 0 8px; }
.muted { color: var(--muted); }
.counts span { margin-right: 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
  border: 1px solid var(--line); background: #fff; }
.badge.stored { border-color: #1a7f37; color: #1a7f37; }
.badge.failed { border-color: var(--bad); color: var(--bad); }
.badge.pending { border-color: var(--warn); color: var(--warn); }
.badge.expired { border-color: var(--muted); color: var(--muted); }
.strip { display: flex; gap: 8px; overflow-x: auto; padding: 4px 0 12px; }
.strip img { height: 120px; width: auto; border-radius: 4px; background: var(--bg); }
.asset { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin-bottom: 16px; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin-bottom: 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input, form.filters select, form.filters button { font: inherit; padding: 4px 8px; }
form.filters input[name=q] { width: 280px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; overflow: hidden; background: #fff; }
.card a.pic { display: flex; align-items: center; justify-content: center; height: 220px;
  background: var(--bg); text-decoration: none; color: var(--muted); }
.card a.pic img { max-width: 100%; max-height: 220px; width: auto; height: auto; }
.card .nopic { padding: 12px; text-align: center; overflow-wrap: anywhere; }
.card .caption { padding: 8px 10px; font-size: 13px; }
.card .key { font-weight: 600; overflow-wrap: anywhere; }
.card .prompt { color: var(--muted); display: -webkit-box; -webkit-line-clamp: 3;
  -webkit-box-orient: vertical; overflow: hidden; overflow-wrap: anywhere; }
.pager { display: flex; gap: 16px; margin: 16px 0; align-items: center; }
.full { display: inline-block; overflow: auto; max-width: 100%; border: 1px solid var(--line); background: var(--bg); }
.full img { display: block; }
table.facts { border-collapse: collapse; margin: 8px 0; }
table.facts th { text-align: left; color: var(--muted); font-weight: 500; padding: 3px 16px 3px 0;
  vertical-align: top; white-space: nowrap; }
table.facts td { padding: 3px 0; overflow-wrap: anywhere; }
.prompt-text { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 16px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.error { border: 1px solid var(--bad); border-radius: 8px; padding: 12px 16px; background: #fff5f5; }
.error .code { font-family: ui-monospace, monospace; color: var(--bad); }
.note { border-left: 3px solid var(--warn); padding: 4px 12px; background: #fffbea; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
.counts .bad, .bad { color: var(--bad); font-weight: 600; }
.badge.picked { border-color: #1a7f37; background: #dafbe1; color: #116329; }
.badge.rejected { border-color: var(--bad); background: #ffebe9; color: var(--bad); }
.who { margin-left: auto; font-size: 13px; color: var(--muted); }
.who form { display: inline; }
.review { display: grid; grid-template-columns: minmax(0, 1fr) 400px; gap: 18px;
  align-items: start; }
.candidates { display: grid; gap: 10px; }
.candidates.n2 { grid-template-columns: repeat(2, minmax(0, 1fr)); }
.candidates.n3 { grid-template-columns: repeat(3, minmax(0, 1fr)); }
.candidates.n4, .candidates.n5, .candidates.n6, .candidates.n7, .candidates.n8 {
  grid-template-columns: repeat(4, minmax(0, 1fr)); }
.candidate { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 6px;
  background: var(--bg); display: flex; flex-direction: column; align-items: center; }
.candidate.picked { border: 3px solid #1a7f37; }
.candidate img { display: block; max-width: 100%; max-height: calc(100vh - 150px); width: auto;
  height: auto; }
.candidates.n5 img, .candidates.n6 img, .candidates.n7 img, .candidates.n8 img {
  max-height: calc(50vh - 110px); }
.candidate figcaption { display: flex; flex-wrap: wrap; gap: 8px; align-items: center;
  font-size: 13px; padding-top: 6px; }
.side { font-size: 13px; }
.side h1 { font-size: 18px; margin: 0 0 6px; }
.side .prompt-text { font-size: 14px; margin: 4px 0; display: -webkit-box; -webkit-line-clamp: 5;
  -webkit-box-orient: vertical; overflow: hidden; }
.side table.facts { margin: 4px 0; }
.side table.facts th, .side table.facts td { padding: 1px 10px 1px 0; }
.side .error { padding: 6px 10px; }
nav.around { display: flex; gap: 12px; margin-bottom: 6px; }
.verdict { border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px; margin: 6px 0; }
.verdict.picked { border-color: #1a7f37; background: #f0fff4; }
.verdict.rejected { border-color: var(--bad); background: #fff5f5; }
.verdict .note-text { white-space: pre-wrap; overflow-wrap: anywhere; }
form.act { display: flex; gap: 6px; align-items: start; margin: 4px 0; }
form.act textarea { font: inherit; flex: 1; height: 2.2em; resize: vertical; }
form.act button, .candidate button { font: inherit; padding: 2px 10px; }
#history td, #history th { padding-right: 16px; }
.keys { color: var(--muted); font-size: 12px; }
.keys kbd { border: 1px solid var(--line); border-radius: 3px; padding: 0 4px; background: #fff; }
"""


def _text(value: object) -> str:
    if isinstance(value, bool):
        value = "yes" if value else "no"
    return escape(str(value), quote=True)


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _who(visitor: Visitor) -> str:
    if not visitor.review:
        return "<span class='who' id='who'>read-only</span>"
    if visitor.signed_in:
        return (
            f"<span class='who' id='who'>reviewing as {_text(visitor.reviewer)} "
            f"<form method='post' action='{links.SIGN_OUT_PATH}'>"
            f"{_hidden('csrf', visitor.csrf or '')}<button type='submit'>sign out</button></form>"
            "</span>"
        )
    return f"<span class='who' id='who'><a href='{links.SIGN_IN_PATH}'>sign in to review</a></span>"


def _layout(
    title: str,
    body: str,
    crumbs: Sequence[tuple[str, str]] = (),
    visitor: Visitor | None = None,
) -> str:
    trail = "".join(f' / <a href="{_text(href)}">{_text(label)}</a>' for href, label in crumbs)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_text(title)} · zimage gallery</title>"
        "<link rel='stylesheet' href='/-/gallery.css'><link rel='icon' href='data:,'>"
        "<script src='/-/review.js' defer></script></head><body>"
        f"<header class='top'><a class='brand' href='/'>zimage gallery</a><span>{trail}</span>"
        f"{_who(visitor or Visitor())}</header><main>{body}</main></body></html>"
    )


def _hidden(name: str, value: object) -> str:
    return f"<input type='hidden' name='{_text(name)}' value='{_text(value)}'>"


def _badge(status: str) -> str:
    return (
        f"<span class='badge {_text(status)}' data-status='{_text(status)}'>{_text(status)}</span>"
    )


def _thumb(item: GalleryItem, *, lazy: bool = True, candidate: int = 0) -> str:
    """The thumbnail of candidate ``candidate`` (0: the partition's first image)."""
    record = item.record
    version = (record.sha256 or record.task_id)[:16] if record else ""
    src = links.thumbnail_url("", item.asset, item.partition_key) + f"?v={_text(version)}"
    if candidate:
        src += f"&amp;candidate={candidate}"
    loading = " loading='lazy'" if lazy else ""
    return f"<img src='{src}'{loading} alt='{_text(item.prompt[:200])}'>"


def _counts(index: AssetIndex) -> str:
    counts = index.counts()
    shown = [
        f"<span{' class=bad' if s == 'failed' else ''}>{counts[s]} {_text(s)}</span>"
        for s in STATUSES
        if counts[s]
    ]
    return f"<div class='counts muted'>{''.join(shown) or 'nothing yet'}</div>"


def home_page(
    snapshot: Snapshot, strip: int = 8, *, store: str = "", visitor: Visitor | None = None
) -> str:
    """Every asset of the store (named ``store`` in the empty state), with a strip of its latest
    thumbnails."""
    blocks = []
    for index in snapshot.assets.values():
        grid = links.asset_path(index.asset)
        thumbs = "".join(
            f"<a href='{links.partition_url('', i.asset, i.partition_key)}'>{_thumb(i)}</a>"
            for i in index.latest(strip)
        )
        blocks.append(
            f"<section class='asset' data-asset='{_text(index.name)}'>"
            f"<h2><a href='{grid}'>{_text(index.name)}</a></h2>{_counts(index)}"
            f"<div class='strip'>{thumbs}</div></section>"
        )
    where = f"<code>{_text(store)}</code>" if store else "this store"
    empty = (
        f"<p class='muted' id='empty'>No image in {where} yet: materialize an image asset "
        "writing there, or start the gallery with the <code>--storage</code> it writes to.</p>"
    )
    if snapshot.indexing:
        empty = ""  # not known yet
    body = "<h1>Assets</h1>" + _indexing(snapshot.images if snapshot.indexing else None)
    body += "".join(blocks) or empty
    return _layout("Assets", body, visitor=visitor)


def _indexing(so_far: int | None) -> str:
    """The note of a page served while the index is being built (``so_far``: partitions)."""
    if so_far is None:
        return ""
    return (
        f"<p class='note' id='indexing'>indexing: {so_far:,} so far (the gallery is reading the "
        "store; reload to see more)</p>"
    )


def _select(name: str, label: str, current: str, options: Iterable[tuple[str, str]]) -> str:
    opts = "".join(
        f"<option value='{_text(v)}'{' selected' if v == current else ''}>{_text(t)}</option>"
        for v, t in options
    )
    return f"<label>{_text(label)}<select name='{name}'>{opts}</select></label>"


def _filters(index: AssetIndex, query: Query) -> str:
    dates = index.dates()
    date = (
        _select("date", "Date", query.date, [("", "any"), *((d, d) for d in dates)])
        if dates
        else ""
    )
    return (
        f"<form class='filters' method='get' action='{links.asset_path(index.asset)}' role='search'>"
        f"<label>Search prompts<input type='search' name='q' value='{_text(query.q)}'"
        " placeholder='words in the prompt'></label>"
        f"<label>Partition<input name='partition' value='{_text(query.partition)}'"
        " placeholder='part of the key'></label>"
        f"{date}"
        + _select("status", "Status", query.status, [("", "any"), *((s, s) for s in STATUSES)])
        + _select("size", "Size", query.size, [("", "any"), *((s, s) for s in index.sizes())])
        + _select("review", "Review", query.review, [("", "any"), *((r, r) for r in REVIEW_STATES)])
        + _select("order", "Order", query.order, [(o, o) for o in ORDERS])
        + "<button type='submit'>Show</button></form>"
    )


def _with_query(url: str, query: Query) -> str:
    params = query.params(page=1)
    return url + ("?" + urlencode(params) if params else "")


def _verdict_badge(verdict: Verdict | None) -> str:
    state = review_state(verdict)
    if verdict is None:
        return ""
    label = f"picked #{(verdict.candidate or 0) + 1}" if verdict.verdict == "pick" else state
    return f" <span class='badge {state}' data-review='{state}'>{_text(label)}</span>"


def _card(item: GalleryItem, query: Query, verdict: Verdict | None = None) -> str:
    href = _with_query(links.partition_url("", item.asset, item.partition_key), query)
    if item.has_image:
        picked = verdict.candidate if verdict is not None and verdict.verdict == "pick" else None
        pic = _thumb(item, candidate=picked or 0)  # the current candidate: the pick, else 0
    else:
        detail = item.error_code or item.status
        pic = f"<div class='nopic'>{_text(detail)}</div>"
    seed = f"seed {item.seed} · " if item.seed is not None else ""
    return (
        f"<article class='card' data-key='{_text(item.partition_key)}' data-status='{_text(item.status)}'>"
        f"<a class='pic' href='{_text(href)}'>{pic}</a><div class='caption'>"
        f"<div class='key' title='{_text(item.partition_key)}'>{_text(item.partition_key)}</div>"
        f"<div class='muted'>{_text(seed)}{_text(item.size)} {_badge(item.status)}"
        f"{_verdict_badge(verdict)}</div>"
        f"<div class='prompt' title='{_text(item.prompt[:500])}'>{_text(item.prompt)}</div>"
        "</div></article>"
    )


def asset_page(
    index: AssetIndex,
    query: Query,
    page: Page,
    verdicts: Mapping[str, Verdict] | None = None,
    visitor: Visitor | None = None,
    *,
    indexing: int | None = None,
) -> str:
    """The asset's grid: filters, one card per partition (with its verdict), and a pager
    (``indexing``: the partitions indexed so far, while the index is being built)."""
    verdicts = verdicts or {}
    base = links.asset_path(index.asset)

    def to(n: int, **cursor: str) -> str:
        # From the page's cursor when it has one (keyset: a deep page is read as fast as the
        # first); the first page needs none.
        cursor = {k: v for k, v in cursor.items() if v and n > 1}
        return base + "?" + urlencode(query.params(page=n, **cursor))

    prev = to(page.page - 1, before=page.before)
    pager = (
        "<nav class='pager'>"
        + (f"<a rel='prev' href='{_text(prev)}'>← newer</a>" if page.page > 1 else "")
        + f"<span class='muted'>page {page.page} of {page.pages}</span>"
        + (
            f"<a rel='next' href='{_text(to(page.page + 1, after=page.after))}'>next →</a>"
            if page.page < page.pages
            else ""
        )
        + "</nav>"
    )
    cards = "".join(_card(i, query, verdicts.get(i.partition_key)) for i in page.items)
    picks = sum(1 for v in verdicts.values() if v.verdict == "pick")
    body = (
        f"<h1>{_text(index.name)}</h1>{_counts(index)}{_filters(index, query)}"
        f"{_indexing(indexing)}<p class='muted' id='found'>{page.total}"
        f"{'+' if page.capped else ''} of {index.count()} partitions</p>"
        f"<div class='grid'>{cards or '<p class=muted>Nothing matches.</p>'}</div>{pager}"
        f"<p><a id='export' href='{links.export_url('', index.asset)}' download>"
        f"Download the {picks} picks as a zip</a> (images and a manifest.csv)</p>"
    )
    return _layout(index.name, body, [(base, index.name)], visitor)


def _rows(rows: Iterable[tuple[str, object]]) -> str:
    return "".join(
        f"<tr data-fact='{_text(k)}'><th>{_text(k)}</th><td>{_text(v)}</td></tr>"
        for k, v in rows
        if v is not None and v != ""
    )


def request_json(item: GalleryItem) -> dict[str, object]:
    """The create request that reproduces the partition's image (same prompt, size and seed)."""
    record, entry = item.record, item.entry
    if record is not None and item.status == "stored":
        return {
            "model": record.model,
            "prompt": record.prompt,
            "size": record.size_requested,
            "seed": record.seed,
            "nsfw_check": record.nsfw_check,
        }
    request = dict(entry.request) if entry is not None else {}
    return {"model": request.pop("model", "z-image-turbo"), **request}


def _earlier(item: GalleryItem) -> str:
    rows = []
    if item.entry is not None:
        for p in item.entry.previous:
            message = f"{p.error_code or ''} {p.error_message or ''}".strip()
            rows.append(
                f"<tr><td class='mono'>{_text(p.task_id)}</td><td>{_badge(p.status.value)}</td>"
                f"<td>{_text(_when(p.submitted_at))}</td><td>{_text(message)}</td></tr>"
            )
    known = {p.task_id for p in item.entry.previous} if item.entry else set()
    if item.record is not None:
        for task_id in item.record.previous_task_ids:
            if task_id not in known:
                rows.append(
                    f"<tr><td class='mono'>{_text(task_id)}</td><td></td><td></td><td></td></tr>"
                )
    if not rows:
        return ""
    return (
        "<h2>Earlier tasks</h2><table class='facts' id='earlier'><tr><th>task ID</th><th>status</th>"
        f"<th>submitted</th><th>message</th></tr>{''.join(rows)}</table>"
    )


def _failed_candidates(failed: Sequence[tuple[int, LedgerEntry]]) -> str:
    """The candidates that failed for good, numbered as the reviewer numbers them (from 1)."""
    if not failed:
        return ""
    rows = "".join(
        f"<tr data-candidate='{index}'><td>candidate {index + 1}</td>"
        f"<td class='mono'>{_text(entry.task_id)}</td><td class='bad'>{_text(entry.error_code or '')}</td>"
        f"<td>{_text(entry.error_message or '')}</td></tr>"
        for index, entry in failed
    )
    return (
        "<h2>Failed candidates</h2><table class='facts' id='failed-candidates'><tr>"
        f"<th>candidate</th><th>task ID</th><th>code</th><th>message</th></tr>{rows}</table>"
    )


def _status_block(item: GalleryItem) -> str:
    entry = item.entry
    if item.status not in ("failed", "pending", "expired") or (entry is None and not item.failure):
        return ""
    code = entry.error_code if entry is not None else item.error_code
    message = entry.error_message if entry is not None else item.error_message
    what = {
        "failed": "The provider could not make this image.",
        "pending": "The task is not finished (or not collected) yet.",
        "expired": "The task's result link expired before it was collected: "
        "the next run regenerates it with the same seed.",
    }[item.status]
    return (
        f"<section class='error' id='status'><p>{_text(what)}</p>"
        + (f"<p class='code'>{_text(code)}</p>" if code else "")
        + (f"<p class='message' id='provider-message'>{_text(message)}</p>" if message else "")
        + (
            "<table class='facts'>"
            + _rows(
                [
                    ("task ID", entry.task_id),
                    ("attempt", entry.attempt),
                    ("submitted", _when(entry.submitted_at)),
                    ("updated", _when(entry.updated_at)),
                ]
            )
            + "</table>"
            if entry is not None
            else ""
        )
        + "</section>"
    )


def _verdict_form(item: GalleryItem, visitor: Visitor, back: str, fields: str, button: str) -> str:
    return (
        f"<form class='act' method='post' action='{links.verdict_url('', item.asset, item.partition_key)}'>"
        f"{_hidden('csrf', visitor.csrf or '')}{_hidden('back', back)}{fields}{button}</form>"
    )


def _figure(candidate: Candidate, verdict: Verdict | None, visitor: Visitor, back: str) -> str:
    item, record = candidate.item, candidate.record
    version = (record.sha256 or record.task_id)[:16]
    src = links.image_url("", item.asset, item.partition_key)
    which = f"candidate={candidate.index}&" if candidate.index else ""
    size = f" width='{record.width}' height='{record.height}'" if record.width else ""
    ident = " id='image'" if candidate.index == 0 else ""
    picked = (
        verdict is not None and verdict.verdict == "pick" and verdict.candidate == candidate.index
    )
    pick = ""
    if visitor.signed_in:
        pick = _verdict_form(
            item,
            visitor,
            back,
            _hidden("verdict", "pick") + _hidden("candidate", candidate.index),
            f"<button type='submit' data-key='{candidate.number}'>Pick {candidate.number}</button>",
        )
    return (
        f"<figure class='candidate{' picked' if picked else ''}' data-candidate='{candidate.index}'>"
        f"<img{ident} src='{src}?{which}v={_text(version)}'{size} alt='{_text(item.prompt[:200])}'>"
        f"<figcaption><strong>#{candidate.number}</strong>"
        f"<span class='muted'>seed {_text(record.seed)}</span>"
        f"<a id='original-{candidate.index}' href='{src}{'?' + which.rstrip('&') if which else ''}' target='_blank' rel='noopener'>open original</a>"
        f"<a id='download-{candidate.index}' href='{links.download_url('', item.asset, item.partition_key)}{'&' + which.rstrip('&') if which else ''}'"
        f" download>download</a>{pick}</figcaption></figure>"
    )


def _verdict_box(verdict: Verdict | None) -> str:
    state = review_state(verdict)
    if verdict is None:
        said = "Unreviewed."
    elif verdict.verdict == "pick":
        said = f"Picked #{(verdict.candidate or 0) + 1} by {_text(verdict.reviewer)}, {_text(_when(verdict.at))}."
    else:
        said = f"Rejected by {_text(verdict.reviewer)}, {_text(_when(verdict.at))}."
    note = (
        f"<div class='note-text' id='verdict-note'>{_text(verdict.note)}</div>"
        if verdict is not None and verdict.note
        else ""
    )
    return f"<div class='verdict {state}' id='verdict' data-review='{state}'>{said}{note}</div>"


def _review_controls(item: GalleryItem, visitor: Visitor, back: str) -> str:
    if not visitor.review:
        return ""
    if not visitor.signed_in:
        target = links.partition_url("", item.asset, item.partition_key)
        href = links.SIGN_IN_PATH + "?" + urlencode({"next": target})
        return f"<p><a id='sign-in' href='{_text(href)}'>Sign in to review</a></p>"
    reject = _verdict_form(
        item,
        visitor,
        back,
        _hidden("verdict", "reject")
        + "<textarea name='note' maxlength='2000' placeholder='note (optional)'"
        " aria-label='note'></textarea>",
        "<button type='submit' data-key='x'>Reject (x)</button>",
    )
    undo = _verdict_form(
        item,
        visitor,
        back,
        _hidden("verdict", "undo"),
        "<button type='submit' data-key='u'>Undo my last verdict (u)</button>",
    )
    return reject + undo


def _history(history: Sequence[ReviewRecord]) -> str:
    if not history:
        return ""
    rows = "".join(
        f"<tr><td>{_text(_when(r.at))}</td><td>{_text(r.reviewer)}</td><td>{_text(r.verdict)}"
        f"{'' if r.candidate is None else ' #' + str(r.candidate + 1)}</td>"
        f"<td class='note-text'>{_text(r.note)}</td></tr>"
        for r in reversed(history)
    )
    return (
        "<h2>Review history</h2><table class='facts' id='history'><tr><th>when</th><th>who</th>"
        f"<th>verdict</th><th>note</th></tr>{rows}</table>"
    )


def _keys_help(visitor: Visitor) -> str:
    shown = KEYS if visitor.signed_in else [(k, w) for k, w in KEYS if w in ("next", "previous")]
    keys = " · ".join(f"<kbd>{_text(k)}</kbd> {_text(what)}" for k, what in shown)
    return f"<p class='keys' id='keys'>{keys}</p>"


def partition_page(
    item: GalleryItem,
    wanted_task: str | None = None,
    *,
    query: Query | None = None,
    around: tuple[GalleryItem | None, GalleryItem | None] = (None, None),
    verdict: Verdict | None = None,
    history: Sequence[ReviewRecord] = (),
    visitor: Visitor | None = None,
    candidates: Sequence[Candidate] | None = None,
    failed: Sequence[tuple[int, LedgerEntry]] = (),
) -> str:
    """A partition's review page: its candidates side by side, fitted to the screen, with the
    verdict, the review forms (``--review``), the prompt and the facts beside them; then the
    review history, earlier tasks and the request that reproduces the image. ``around``: the
    previous and next partitions under the grid's ``query``; ``candidates``: the partition's
    images (default: :func:`~zimage_dagster.gallery.candidates.candidates_of`); ``failed``: its
    candidates whose task failed for good, ``(index, ledger entry)``, listed with their number."""
    record = item.record
    query = query or Query()
    visitor = visitor or Visitor()
    back = urlencode(query.params(page=1))
    grid = links.asset_path(item.asset)
    before, after = around
    nav = (
        "<nav class='around'>"
        + (
            f"<a rel='prev' href='{_text(_with_query(links.partition_url('', before.asset, before.partition_key), query))}'>← previous</a>"
            if before
            else ""
        )
        + f"<a href='{_text(_with_query(grid, query))}'>grid</a>"
        + (
            f"<a rel='next' href='{_text(_with_query(links.partition_url('', after.asset, after.partition_key), query))}'>next →</a>"
            if after
            else ""
        )
        + "</nav>"
    )
    side = [nav, f"<h1>{_text(item.partition_key)} {_badge(item.status)}</h1>"]
    if wanted_task and record is not None and wanted_task != record.task_id:
        side.append(
            f"<p class='note' id='replaced'>This link was made for task {_text(wanted_task)}; "
            f"the partition's stored image is now from task {_text(record.task_id)}.</p>"
        )
    side += [_verdict_box(verdict), _review_controls(item, visitor, back)]
    side.append(
        f"<p class='prompt-text' id='prompt' title='{_text(item.prompt[:2000])}'>{_text(item.prompt)}</p>"
    )
    if record is not None:
        timings = [
            (f"{name} (s)", getattr(record, f"{name}_s"))
            for name in ("queued", "generating", "downloading")
        ]
        side.append(
            "<table class='facts' id='facts'>"
            + _rows(
                [
                    ("partition key", item.partition_key),
                    ("seed", record.seed),
                    ("task ID", record.task_id),
                    ("model", record.model),
                    ("size requested", record.size_requested),
                    ("size", f"{record.width}x{record.height}" if record.width else None),
                    ("format", record.format),
                    ("bytes", record.bytes),
                    ("sha256", record.sha256),
                    ("created", _when(record.created_at)),
                    *timings,
                    ("polls", record.polls),
                    ("attempts", record.attempts),
                    ("credits reserved", record.credits_reserved),
                    ("reused", record.reused),
                    ("regenerated", record.regenerated),
                    ("nsfw check", record.nsfw_check),
                    *((str(k), v) for k, v in record.extra.items()),
                ]
            )
            + "</table>"
        )
    side.append(_keys_help(visitor))
    if candidates is None:
        candidates = candidates_of(item)
    figures = "".join(_figure(c, verdict, visitor, back) for c in candidates)
    view = (
        f"<section class='candidates n{max(1, len(candidates))}' id='candidates'>"
        f"{figures or _status_block(item)}</section>"
    )
    parts = [f"<div class='review'>{view}<aside class='side'>{''.join(side)}</aside></div>"]
    if figures:
        parts.append(_status_block(item))
    parts += [_failed_candidates(failed), _history(history), _earlier(item)]
    request = request_json(item)
    body = json.dumps(request, indent=2, ensure_ascii=False)
    curl = (
        f"curl -s {API_CREATE_URL} -H 'Authorization: Bearer '\"$ZIMAGE_API_KEY\" "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(request, ensure_ascii=False))}"
    )
    parts.append(
        "<h2>Reproduce</h2><p class='muted'>The same request (prompt, size, seed) makes the same "
        f"image.</p><pre id='request'>{_text(body)}</pre><pre id='curl'>{_text(curl)}</pre>"
    )
    return _layout(
        item.partition_key,
        "".join(parts),
        [
            (grid, item.asset_name),
            (links.partition_url("", item.asset, item.partition_key), item.partition_key),
        ],
        visitor,
    )


def sign_in_page(next_path: str = "/", problem: str = "") -> str:
    """Where a reviewer pastes the review token (it is never shown back)."""
    said = f"<p class='error' id='problem'>{_text(problem)}</p>" if problem else ""
    body = (
        f"<h1>Sign in to review</h1>{said}<p>Paste the review token the gallery printed when it "
        "started (or the one in its <code>--review-token-file</code>).</p>"
        f"<form method='post' action='{links.SIGN_IN_PATH}'>{_hidden('next', next_path)}"
        "<label>Review token <input type='password' name='token' autocomplete='off' required "
        "autofocus></label> <button type='submit'>Sign in</button></form>"
    )
    return _layout("Sign in", body, visitor=Visitor(review=True))


def message_page(title: str, message: str, visitor: Visitor | None = None) -> str:
    """A short answer (a refused or failed verdict)."""
    body = f"<h1>{_text(title)}</h1><p id='message'>{_text(message)}</p>"
    return _layout(title, body, visitor=visitor)


def not_found_page(what: str) -> str:
    """404."""
    return _layout("Not found", f"<h1>Not found</h1><p>{_text(what)}</p>")
