"""The query log-invocation stores: every parameter named like a key is gone, however the client spelled it."""

from __future__ import annotations

import json
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import PORT, api_yaml, gw_url, recording_backend, run, running_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.common.redaction import redact_query

MARK = "qmark" + secrets.token_hex(6)

# Spellings identify does not read (it takes exactly `x-Gateway-APIKey`, any case, `&`-separated).
ODD_QUERIES = [
    f"a=1;x-Gateway-APIKey={MARK};b=2",
    f"a=1&X-GATEWAY-APIKEY+={MARK}&b=2",
    f"a=1&x%2DGateway%2DAPIKey={MARK}&b=2",
    f"a=1&%2578-gateway-apikey={MARK}&b=2",
    f"a=1&x_gateway_apikey={MARK}&b=2",
    f"a=1&api_key={MARK};b=2",
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
    """Random case, `+`, percent escapes and either separator: the value never survives redaction."""
    parameter = f"{name}={MARK}"
    query = f"{parameter}{separator}room=1" if before else f"room=1{separator}{parameter}"
    redacted = redact_query(query)
    assert MARK not in redacted and "room=1" in redacted
