"""The query log-invocation stores: every parameter named like a key is gone, however the client spelled it."""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import upgrade_request
from support import PORT, api_yaml, gw_url, logged, recording_backend, run, running_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.common.redaction import credential_like, forwarded_query, redact_query
from gateway.policies.base import parse_query
from gateway.policies.identify import presented_keys

MARK = "qmark" + secrets.token_hex(6)

# Spellings identify does not read (it takes exactly `x-Gateway-APIKey`, any case, `&`-separated).
ODD_QUERIES = [
    f"a=1;x-Gateway-APIKey={MARK}&b=2",
    f"a=1&X-GATEWAY-APIKEY+={MARK}&b=2",
    f"a=1&x%2DGateway%2DAPIKey={MARK}&b=2",
    f"a=1&%2578-gateway-apikey={MARK}&b=2",
    f"a=1&x_gateway_apikey={MARK}&b=2",
    f"a=1&b=2;api_key={MARK}",
    f"a=1&access%5Ftoken={MARK}&b=2",
    f"a=1&x-Gateway-APIKey:{MARK}&b=2",
]


def test_refused_requests_store_their_query_without_the_key(tmp_path):
    """A 401 for each odd spelling of the key: the stored records hold `a=1` and `b=2` but never the key."""

    async def scenario():
        async with recording_backend() as backend:
            identify = "  - type: identify\n    by: [api_key]\n"
            logged = "  - type: log-invocation\n    file: transactions.jsonl\n"
            config = write_config(
                tmp_path, PORT, api_yaml("A", "/a", backend.url + "/", extra="policies:\n" + identify + logged),
                "kind: Application\nname: app\nidentifiers:\n  api_keys: [{env: NOT_SET_ANYWHERE}]\napis: [A]\n",
            )
            async with running_gateway(config, env={}) as gw:
                for query in ODD_QUERIES:
                    with pytest.raises(InvalidStatus) as info:
                        async with connect(gw_url(gw, "/a") + "?" + query):
                            pass
                    assert info.value.response.status_code == 401

    run(scenario())
    records = [json.loads(line) for line in (tmp_path / "config" / "transactions.jsonl").read_text().splitlines()]
    upgrades = [r for r in records if r.get("record") == "upgrade"]
    assert [r["status"] for r in upgrades] == [401] * len(ODD_QUERIES)
    for record in upgrades:
        assert "a=1" in record["query"] and "b=2" in record["query"], record
    assert MARK not in json.dumps(records)


def test_redact_query_keeps_other_parameters_and_separators():
    """Plain parameters survive verbatim with the separators the client used."""
    assert redact_query("a=1;token=x&b=%20&c") == "a=1&b=%20&c"
    assert redact_query("room=7&Access_Token=x") == "room=7"
    assert redact_query("") == ""


NAME_SPELLINGS = st.sampled_from(["x-Gateway-APIKey", "api_key", "apikey", "access_token", "token", "password"])


@st.composite
def disguised(draw: st.DrawFn) -> str:
    """A credential parameter name in random case, with `+`, `_`, `-` inserted and some letters %-encoded."""
    out = []
    for ch in draw(NAME_SPELLINGS):
        ch = ch.upper() if draw(st.booleans()) else ch.lower()
        out.append(f"%{ord(ch):02X}" if draw(st.integers(0, 4)) == 0 else ch)
        if draw(st.integers(0, 6)) == 0:
            out.append(draw(st.sampled_from(["+", "_", "-", "%2B", "%20"])))
    return "".join(out)


@settings(max_examples=200, deadline=None)
@given(name=disguised(), separator=st.sampled_from(["&", ";"]), before=st.booleans())
def test_no_spelling_of_a_key_name_survives(name, separator, before):
    """Random case, `+`, percent escapes and either separator: the value never survives redaction; a parameter
    after the key and `;` goes too (to the gateway's `&`-only parser it is part of the key's value)."""
    parameter = f"{name}={MARK}"
    query = f"{parameter}{separator}room=1" if before else f"room=1{separator}{parameter}"
    redacted = redact_query(query)
    assert MARK not in redacted
    assert ("room=1" in redacted) == (not before or separator == "&")


# The three forms (#21, defect 6), and their neighbours: a key cut off from its name by `;` or `&`, or
# split by `;` (the gateway's `&`-only parser reads `AB;CD` as the key).
def test_malformed_key_forms_leave_nothing_in_either_query():
    """`k;=KEY`, `apikey&=KEY`, `k=AB;CD` and kin: no part of KEY in the stored query nor the forwarded one."""
    for query, stored, forwarded in [
        ("a=1&x-Gateway-APIKey;=KEYKEY&b=2", "a=1&b=2", "a=1&b=2"),
        ("a=1&apikey&=KEYKEY&b=2", "a=1&b=2", "a=1&apikey&=KEYKEY&b=2"),  # the upstream's own parameter
        ("a=1&x-Gateway-APIKey=ABAB;CDCD&b=2", "a=1&b=2", "a=1&b=2"),
        ("a=1&x-Gateway-APIKey&=KEYKEY&b=2", "a=1&b=2", "a=1&b=2"),
        ("a=1&x-Gateway-APIKey=&KEYKEY&b=2", "a=1&b=2", "a=1&b=2"),
        ("a=1&x-Gateway-APIKey=ABAB&CDCD&b=2", "a=1&b=2", "a=1&b=2"),
        ("a=1;access_token=KEYKEY;c=3&b=2", "a=1&b=2", "a=1&b=2"),
        ("a=1&x-Gateway-APIKey%3DKEYKEY&b=2", "a=1&b=2", "a=1&b=2"),
    ]:
        assert redact_query(query) == stored, query
        assert forwarded_query(query) == forwarded, query


KEY_NAMES = st.sampled_from(["x-Gateway-APIKey", "access_token"])  # what the gateway consumes
OTHER_KEY_NAMES = st.sampled_from(["apikey", "api_key", "token", "password", "secret", "auth"])


@st.composite
def misspelled(draw: st.DrawFn, names: st.SearchStrategy[str]) -> str:
    """A credential name in random case, separators dropped or swapped, letters %-encoded once or twice, and
    junk (`+`, `%20`, `[]`, `.`) around it."""
    out = [draw(st.sampled_from(["", "+", "%20", "_"]))]
    for ch in draw(names):
        if ch in "-_" and draw(st.booleans()):
            ch = draw(st.sampled_from(["", "-", "_", ".", "+", "%2D", "%5F"]))
        else:
            ch = ch.upper() if draw(st.booleans()) else ch.lower()
            encode = draw(st.integers(0, 5))
            if encode == 0:
                ch = f"%{ord(ch):02X}"
            elif encode == 1:
                ch = f"%25{ord(ch):02X}"
        out.append(ch)
    out.append(draw(st.sampled_from(["", "+", "%20", "[]", ":", "%00"])))
    return "".join(out)


FORMS = ["{n}={k}", "{n};={k}", "{n}&={k}", "{n}=&{k}", "{n}&{k}", "{n}={a};{b}", "{n}={a}&{b}", "{n}={k};z=1",
         "y=1;{n}={k}", "{n}+={k}", "{n}%3D{k}", "{n}=={k}", "{n}&&={k}", "{n}:{k}", "{n}={a};{b}=", "{n};{k}"]
BENIGN = st.lists(st.tuples(st.sampled_from(["room", "a", "b", "lang", "v"]),
                            st.text(alphabet="abcdefghij", max_size=6)), max_size=3)


def _query(before: list[tuple[str, str]], form: str, after: list[tuple[str, str]]) -> str:
    return "&".join([*(f"{k}={v}" for k, v in before), form, *(f"{k}={v}" for k, v in after)])


@settings(max_examples=400, deadline=None)
@given(name=misspelled(KEY_NAMES), form=st.sampled_from(FORMS), key=st.text(alphabet="0123456789ABCDEF",
       min_size=12, max_size=16), before=BENIGN, after=BENIGN)
def test_no_malformed_form_of_a_gateway_key_is_forwarded_or_stored(name, form, key, before, after):
    """Any spelling of the gateway's key name in any malformed form: neither half of the key reaches the
    forwarded or the stored query, and the named parameters around it are kept."""
    key = "Z" + key  # uppercase: the lowercase benign values and the names' hex escapes cannot hold 6 of it
    a, b = key[: len(key) // 2], key[len(key) // 2:]
    query = _query(before, form.format(n=name, k=key, a=a, b=b), after)
    for out in (forwarded_query(query), redact_query(query)):
        assert a not in out and b not in out, (query, out)
        for k, v in [*before, *after]:
            assert f"{k}={v}" in out.split("&"), (query, out)


@settings(max_examples=300, deadline=None)
@given(name=misspelled(OTHER_KEY_NAMES), form=st.sampled_from(FORMS), key=st.text(alphabet="0123456789ABCDEF",
       min_size=12, max_size=16), before=BENIGN)
def test_no_malformed_form_of_any_credential_is_stored(name, form, key, before):
    """Names like `apikey` or `token` are the upstream's to read (forwarded), but never stored or logged."""
    key = "Z" + key
    a, b = key[: len(key) // 2], key[len(key) // 2:]
    out = redact_query(_query(before, form.format(n=name, k=key, a=a, b=b), []))
    assert a not in out and b not in out


QUERY_PIECES = st.sampled_from(["x-Gateway-APIKey", "X-GATEWAY-APIKEY", "x%2Dgateway%2Dapikey", "access_token",
                                "access%5Ftoken", "=", "&", ";", "+", "%", "%3D", "%26", "%3B", "a", "b=1", "KEY"])


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(QUERY_PIECES, max_size=12))
def test_the_gateways_own_parser_finds_no_credential_in_what_is_kept(pieces):
    """Arbitrary queries built from key-name fragments and separators: the parser policies read the key with
    (`parse_query`, `presented_keys`) finds no API key or access_token in the forwarded query, and neither it
    nor a `;`-splitting parser finds any credential-like name in the stored one."""
    query = "".join(pieces)
    forwarded = forwarded_query(query)
    parsed = parse_query(forwarded)
    assert presented_keys(upgrade_request(forwarded), use_header=False) == []
    assert not any(name.lower() == "access_token" for name in parsed)
    stored = redact_query(query)
    for separator in "&;":
        for name in parse_qs(stored, keep_blank_values=True, separator=separator):
            assert not credential_like(name), (query, stored)
    if any(credential_like(n) for n in parse_query(query)):  # the input did hold one: something was dropped
        assert len(stored) < len(query)


def test_malformed_keys_reach_neither_the_upstream_nor_the_logs(tmp_path):
    """Through a live gateway (no identify, so it forwards) with log-invocation: the upstream's recorded request
    path, the stored records and every log event hold no part of a key sent in the issue's malformed forms."""
    half_a, half_b = "QKEYA" + secrets.token_hex(4).upper(), "QKEYB" + secrets.token_hex(4).upper()
    key = half_a + half_b
    queries = [f"a=1&x-Gateway-APIKey;={key}&b=2", f"a=1&x-Gateway-APIKey={half_a};{half_b}&b=2",
               f"a=1&x-Gateway-APIKey&={key}&b=2", f"a=1&X_GATEWAY_APIKEY={key}&b=2",
               f"a=1&access_token={half_a}&{half_b}&b=2", f"a=1;x-gateway-apikey%3D{key}&b=2"]

    async def scenario():
        async with recording_backend() as backend:
            policies = "policies:\n  - type: log-invocation\n    file: transactions.jsonl\n"
            config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/up", extra=policies))
            async with running_gateway(config, env={}) as gw:
                for query in queries:
                    async with connect(gw_url(gw, "/a") + "?" + query) as ws:
                        await ws.send("hi")
                        assert await ws.recv() == "hi"
        return [request.path for request in backend.requests]

    with logged() as events:
        paths = run(scenario())
    assert len(paths) == len(queries)
    for path in paths:
        assert path.startswith("/up?a=1") and path.endswith("&b=2"), path
    records = (tmp_path / "config" / "transactions.jsonl").read_text()
    for text in (" ".join(paths), records, repr(events.entries)):
        assert half_a not in text and half_b not in text
