"""HTTP Basic passwords stored as bcrypt or argon2 hashes: verified in a thread, remembered briefly, warned
about when stored as a fast SHA-256 digest."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading

import bcrypt
import pytest
from argon2 import PasswordHasher
from support import PORT, api_yaml, gw_url, run, running_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import gateway.build.apps
from gateway.config import check

BCRYPT_PASSWORD = "bcrypt pass phrase"
ARGON_PASSWORD = "argon2 pass phrase"
BCRYPT_HASH = bcrypt.hashpw(BCRYPT_PASSWORD.encode(), bcrypt.gensalt(12)).decode()  # ~0.25-1 s per check
ARGON_HASH = PasswordHasher().hash(ARGON_PASSWORD)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


IDENTIFY_BASIC = "policies:\n  - type: identify\n    by: [basic]\n"


def basic_app(users: dict[str, str], apis: str = "[Slow]") -> str:
    """An Application named ``app`` whose basic users are ``users`` (username -> stored password)."""
    lines = "".join(f'    - {{username: {name}, password: "{stored}"}}\n' for name, stored in users.items())
    return f"kind: Application\nname: app\nidentifiers:\n  basic:\n{lines}apis: {apis}\n"


def config_docs(url: str) -> tuple[str, ...]:
    app = basic_app({"bee": BCRYPT_HASH, "argo": ARGON_HASH}, apis="[Slow, Open]")
    return (PORT, api_yaml("Slow", "/slow", url, extra=IDENTIFY_BASIC), api_yaml("Open", "/open", url), app)


def test_bcrypt_and_argon2_users_log_in_off_the_event_loop(tmp_path, monkeypatch):
    """Right passwords get in and wrong ones get 401, for both hash kinds; the first bcrypt check is held until
    another connection's echo has come back through the gateway (impossible if the check ran on the event
    loop); a reconnect within the cache's lifetime verifies nothing again."""
    from support import TIMEOUT, echo_backend, eventually

    checks: list[str] = []
    real = gateway.build.apps.verify_slow_hash
    echoed = threading.Event()

    def counting(stored: str, password: str) -> bool:
        checks.append(stored[:4])
        if len(checks) == 1:
            assert echoed.wait(TIMEOUT), "the echo never came back while the password was being checked"
        return real(stored, password)

    monkeypatch.setattr(gateway.build.apps, "verify_slow_hash", counting)

    async def scenario():
        async with echo_backend() as backend:
            config = write_config(tmp_path, *config_docs(backend.url("/echo/")))
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/open")) as other:
                    async def log_in():
                        return await connect(gw_url(gw, "/slow"), additional_headers=basic("bee", BCRYPT_PASSWORD))

                    login = asyncio.create_task(log_in())
                    await eventually(lambda: bool(checks))  # the check has started, in its thread
                    await other.send("while bcrypt runs")
                    assert await other.recv() == "while bcrypt runs"
                    echoed.set()
                    ws = await login
                    await ws.close()
                assert checks == ["$2b$"]
                async with connect(gw_url(gw, "/slow"), additional_headers=basic("bee", BCRYPT_PASSWORD)):
                    pass
                assert checks == ["$2b$"]  # remembered: no second slow check
                async with connect(gw_url(gw, "/slow"), additional_headers=basic("argo", ARGON_PASSWORD)):
                    pass
                for user, password in (("bee", "wrong"), ("argo", "wrong"), ("bee", ARGON_PASSWORD)):
                    with pytest.raises(InvalidStatus) as info:
                        async with connect(gw_url(gw, "/slow"), additional_headers=basic(user, password)):
                            pass
                    assert info.value.response.status_code == 401
                assert checks == ["$2b$", "$arg", "$2b$", "$arg", "$2b$"]

    run(scenario())


def test_validate_warns_about_fast_digests_and_refuses_broken_hashes(tmp_path):
    """A `sha256:` basic password is WSG251 (a fast hash); a truncated bcrypt hash is WSG181; good bcrypt and
    argon2 hashes are neither, nor WSG200 (plain text)."""
    digest = "sha256:" + hashlib.sha256(b"pw").hexdigest()
    app = basic_app({"a": digest, "b": BCRYPT_HASH[:-5], "c": BCRYPT_HASH, "d": ARGON_HASH})
    root = tmp_path / "config"
    root.mkdir()
    (root / "g.yaml").write_text(PORT + "---\n" + api_yaml("Slow", "/slow", "ws://127.0.0.1:9/") + "---\n" + app)
    found = [(d.code, d.location.line) for d in check([root], env={}).diagnostics if d.code.startswith("WSG2")
             or d.code == "WSG181"]
    line = 5 + (PORT + api_yaml("Slow", "/slow", "ws://127.0.0.1:9/")).count("\n") + 2
    assert ("WSG251", line) in found and ("WSG181", line + 1) in found
    assert not any(line + 2 <= at for code, at in found if code in ("WSG200", "WSG251", "WSG181")), found


def test_unknown_and_fast_hashed_users_cost_one_slow_verification_like_known_ones(tmp_path, monkeypatch):
    """With a bcrypt user configured, every basic upgrade that is not remembered costs exactly one bcrypt
    verification of that cost: a known user's against their hash; an unknown user's, and a user's whose
    password is a sha256 digest, against a dummy hash (which no password matches), so timing tells no names."""
    from support import echo_backend

    quick_hash = bcrypt.hashpw(BCRYPT_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    fast_password = "digest pass phrase"
    checks: list[str] = []
    real = gateway.build.apps.verify_slow_hash

    def counting(stored: str, password: str) -> bool:
        checks.append(stored)
        return real(stored, password)

    monkeypatch.setattr(gateway.build.apps, "verify_slow_hash", counting)
    app = basic_app({"bee": quick_hash, "fast": f"sha256:{hashlib.sha256(fast_password.encode()).hexdigest()}"})

    async def status(gw, user: str, password: str) -> int:
        try:
            async with connect(gw_url(gw, "/slow"), additional_headers=basic(user, password)):
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    async def scenario() -> list[tuple[str, int, list[str]]]:
        out = []
        async with echo_backend() as backend:
            url = backend.url("/echo/")
            config = write_config(tmp_path, PORT, api_yaml("Slow", "/slow", url, extra=IDENTIFY_BASIC), app)
            async with running_gateway(config) as gw:
                for label, user, password in (("unknown", "nobody", "guess"), ("known, wrong", "bee", "guess"),
                                              ("known", "bee", BCRYPT_PASSWORD), ("fast, wrong", "fast", "guess"),
                                              ("fast", "fast", fast_password), ("fast again", "fast", fast_password),
                                              ("unknown again", "nobody", "guess")):
                    checks.clear()
                    out.append((label, await status(gw, user, password), list(checks)))
        return out

    results = {label: (code, stored) for label, code, stored in run(scenario())}
    assert {label: code for label, (code, _) in results.items()} == {
        "unknown": 401, "known, wrong": 401, "known": 101, "fast, wrong": 401, "fast": 101, "fast again": 101,
        "unknown again": 401}
    assert results["known, wrong"][1] == [quick_hash] and results["known"][1] == [quick_hash]
    assert results["fast again"][1] == []  # a success is remembered, as for a bcrypt user
    for label in ("unknown", "fast, wrong", "fast", "unknown again"):
        [dummy] = results[label][1]  # exactly one verification, of bee's scheme and cost, against no real hash
        assert dummy.startswith("$2b$04$") and dummy != quick_hash, label


def test_the_dummy_hash_takes_the_most_common_scheme_and_cost():
    """The dummy an unknown user is checked against has the scheme and cost most configured hashes use, is well
    formed, and matches no password; with no slow hash configured there is none."""
    from gateway.build.hashes import cost_of, dummy_hash, slow_hash_problem, verify_slow_hash

    quick = [bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode() for _ in range(2)]
    dummy = dummy_hash([ARGON_HASH, *quick, "sha256:" + "0" * 64])
    assert dummy is not None and cost_of(dummy) == "$2b$04$" and slow_hash_problem(dummy) is None
    assert not verify_slow_hash(dummy, "x")
    argon = dummy_hash([ARGON_HASH])
    assert argon is not None and cost_of(argon) == cost_of(ARGON_HASH) and slow_hash_problem(argon) is None
    assert len(argon) == len(ARGON_HASH) and not verify_slow_hash(argon, ARGON_PASSWORD)
    assert dummy_hash(["sha256:" + "0" * 64]) is None
