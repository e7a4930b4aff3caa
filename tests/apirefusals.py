"""Find the API server's refusals in a capinfer process's log.

A refusal is recognised only by what the client and kopf really print, never by a bare
``403`` or ``forbidden`` anywhere on a line: a timestamp's milliseconds (``,403``), a port,
a namespace or an object name must never count. What counts:

* a request line of the official client (urllib3, at DEBUG) answered 401 or 403, the
  status code read from its place after the request: ``"PATCH /apis/... HTTP/1.1" 403``;
* the API server's own RBAC wording, as carried by any error message: ``... is forbidden:
  User "..." cannot ...``, or an answer of ``Unauthorized``;
* kopf's permission warnings (``Not enough permissions ...``) and its typed errors
  (``APIForbiddenError``, ``APIUnauthorizedError``);
* the operator's own report of a refusal (``not permitted (...)``), and a status code
  with its reason phrase (``403 Forbidden``), as the sidecar reports one.

A namespace being deleted refuses new content with a 403 that says nothing about anyone's
permissions (``unable to create new content in namespace X because it is being
terminated``). Such answers are not refusals; a request line answered 403 is excused only
when the log says, somewhere, that its namespace is being terminated.
"""

from __future__ import annotations

import re

REQUEST_LINE = re.compile(
    r'"(?:GET|HEAD|POST|PUT|PATCH|DELETE) (?P<path>/\S*) HTTP/[\d.]+" (?P<status>\d{3})\b'
)
REQUEST_NAMESPACE = re.compile(r"/namespaces/(?P<namespace>[a-z0-9][-a-z0-9]*)/")
TERMINATING = re.compile(
    r"namespace (?P<namespace>[a-z0-9][-a-z0-9]*) (?:because it )?is being (?:terminated|deleted)"
)
REFUSAL_WORDS = re.compile(
    r'is forbidden: User "'
    r"|\bNot enough (?:RBAC )?permissions\b"
    r"|\bAPI(?:Forbidden|Unauthorized)Error\b"
    r"|\bnot permitted \("
    r"|\b(?:401 Unauthorized|403 Forbidden)\b"
    r'|"reason":\s*"Unauthorized"'
)


def terminating_namespaces(text: str) -> set[str]:
    """Namespaces the log says are being deleted."""
    return {match["namespace"] for match in TERMINATING.finditer(text)}


def refusals_in(text: str) -> list[str]:
    """The log lines that report a refusal by the API server."""
    going = terminating_namespaces(text)
    found = []
    for line in text.splitlines():
        if TERMINATING.search(line) or "NamespaceTerminating" in line:
            continue
        request = REQUEST_LINE.search(line)
        if request is not None:
            status = int(request["status"])
            namespace = REQUEST_NAMESPACE.search(request["path"])
            excused = status == 403 and namespace is not None and namespace["namespace"] in going
            if status in (401, 403) and not excused:
                found.append(line)
            continue
        if REFUSAL_WORDS.search(line):
            found.append(line)
    return found
