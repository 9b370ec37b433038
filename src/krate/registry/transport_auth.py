"""The registry transport's authentication: a small state machine driven by 401 challenges.

anonymous -> basic (the job's user and password), or anonymous -> bearer (a token
from the realm the registry announces, one per scope asked, renewed when it
expires). It opens no connection itself: the transport fetches what `token_url`
names and hands the answer to `take_token`. Part of the transport helper, loaded by
exact file like transport_http.py; standard library only.
"""

from __future__ import annotations

import base64
import json
import threading
from urllib.parse import urlencode, urlsplit

from krate.registry.transport_hosts import is_loopback
from krate.registry.transport_http import Failure, Response, destination, emit


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y",scope="a,b"` -> ("bearer", {...}); quoted commas kept."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


class Asker:
    """The job's credentials, asked of krate only when the registry first wants them.

    A pull's job comes without them (`"credentials": "ask"`): an anonymous registry never
    makes krate load keyring, and an authenticated one lets the transport start its
    connection while krate still reads the keychain. Asked once (a `credentials` line
    out, one JSON line `{"username", "password"}` or `{}` in, on stdin), shared by the
    download threads.
    """

    def __init__(self, stdin) -> None:
        self.stdin = stdin
        self.lock = threading.Lock()
        self.answer: tuple[str | None, str | None] | None = None

    def __call__(self) -> tuple[str | None, str | None]:
        with self.lock:
            if self.answer is None:
                emit("credentials")
                try:
                    doc = json.loads(self.stdin.readline() or b"{}")
                except ValueError:
                    doc = {}
                user, password = (doc.get(k) for k in ("username", "password"))
                ok = isinstance(user, str) and isinstance(password, str)
                self.answer = (user, password) if ok else (None, None)
            return self.answer


class Auth:
    """Which credentials go with the next request; `scheme` is "none", "basic" or "bearer"."""

    def __init__(
        self, registry: str, job: dict, allowed: set[tuple[str, int]], ask: Asker | None = None
    ) -> None:
        self.registry = registry
        self.username = job.get("username")
        self.password = job.get("password")
        self.ask = ask if job.get("credentials") == "ask" else None
        self.allowed = allowed  # the pool's destinations: the token service joins them
        self.scheme = "none"
        self.realm: str | None = None
        self.service: str | None = None
        self.token: str | None = None
        self.scope: str | None = None  # what a push needs: pull and push on its repository
        self.asked: set[str | None] = set()
        self.renewals = 0

    def _take(self) -> None:
        """The credentials krate holds back until they are needed (Asker), once."""
        if self.ask is not None:
            self.username, self.password = self.ask()
            self.ask = None

    def basic(self) -> str | None:
        self._take()
        if self.username is None or self.password is None:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def header(self) -> str | None:
        """The Authorization header for the registry, if any."""
        if self.scheme == "basic":
            return self.basic()
        if self.scheme == "bearer":
            return f"Bearer {self.token}" if self.token else None
        return None

    def learn(self, challenge: str, registry_scheme: str) -> str:
        """Take up a 401's challenge: Basic, or Bearer with its token realm. Returns the scheme."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            self.scheme = "basic"
        elif scheme == "bearer":
            self.realm = self._realm(params.get("realm", ""), registry_scheme)
            self.service = params.get("service")
            self.scheme = "bearer"
        else:
            raise Failure(
                "protocol", f"{self.registry} asks for an unsupported authentication {scheme!r}"
            )
        return scheme

    def _realm(self, realm: str, registry_scheme: str) -> str:
        """A usable token realm, allowed as a destination; plain HTTP only beside loopback HTTP."""
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Failure("protocol", f"{self.registry} announced an unusable token realm")
        host, port = destination(parts.netloc, parts.scheme)
        if parts.scheme == "http" and not (registry_scheme == "http" and is_loopback(host)):
            raise Failure(
                "protocol",
                f"{self.registry} announced a plain-HTTP token service {host}:{port}; "
                "refused (credentials would travel unencrypted)",
            )
        self.allowed.add((host, port))
        return realm

    def first_challenge(self, challenge: str, registry_scheme: str) -> tuple[bool, str | None]:
        """The answer to the first `GET /v2/`: (whether a token is needed, for which scope)."""
        if self.learn(challenge, registry_scheme) == "bearer":
            scope = self.scope or parse_challenge(challenge)[1].get("scope")
            self.asked.add(scope)
            return True, scope
        if self.basic() is None:
            raise self.refused()
        return False, None

    def challenged(self, challenge: str, registry_scheme: str) -> tuple[bool, str | None]:
        """A later 401: (whether a token is needed, for which scope); Basic is tried once."""
        self._take()
        scheme, params = parse_challenge(challenge)
        who = f" for user {self.username}" if self.username else ""
        if scheme == "bearer":
            if self.scheme != "bearer":
                self.learn(challenge, registry_scheme)
            scope = params.get("scope") or self.scope
            if scope in self.asked:
                if params.get("error") == "insufficient_scope":
                    need = "push" if str(scope).endswith("push") else "pull"
                    raise Failure(
                        "denied",
                        f"{self.registry} did not grant the access needed ({scope}){who}: the "
                        f"token has too little scope; ask for {need} permission on the repository",
                    )
                if self.renewals >= 2:  # an expired token is renewed; a refused one is not
                    raise Failure(
                        "unauthorized",
                        f"{self.registry} refused the token{who}; "
                        f"run `krate login {self.registry}`",
                    )
                self.renewals += 1
            self.asked.add(scope)
            return True, scope
        if scheme == "basic":
            if self.scheme != "basic":
                self.scheme = "basic"
                if self.basic() is not None:
                    return False, None
            raise self.refused()
        raise Failure("unauthorized", f"{self.registry} refused the request (401)")

    def token_url(self, scope: str | None) -> str:
        if self.realm is None:
            raise Failure("protocol", f"{self.registry} asked for a token but named no realm")
        query = {}
        if self.service:
            query["service"] = self.service
        if scope:
            query["scope"] = scope
        return self.realm + ("&" if urlsplit(self.realm).query else "?") + urlencode(query)

    def take_token(self, resp: Response) -> None:
        """The token service's answer: keep its token, or say what went wrong."""
        if resp.status in (401, 403):
            raise self.refused(f" (token service answered {resp.status})")
        if resp.status != 200:
            raise Failure(
                "protocol", f"the token service of {self.registry} answered {resp.status}"
            )
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Failure("protocol", f"the token service of {self.registry} sent no token")
        self.token = token

    def refused(self, detail: str = "") -> Failure:
        """No credentials: say to log in; refused ones: say so and to log in again."""
        self._take()
        if self.username is None:
            return Failure(
                "unauthorized",
                f"{self.registry} requires a login: run `krate login {self.registry}`",
            )
        return Failure(
            "unauthorized",
            f"{self.registry} refused the user name or password for user {self.username}"
            f"{detail}; run `krate login {self.registry}` again",
        )
