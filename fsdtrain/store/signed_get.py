"""S3 GETs signed and sent by hand, for the loader's range reads: botocore's signer without a client
call's per-request machinery.

A loader worker reads every clip with one range GET from a thread beside its decoder. Through a
boto3 client call (event hooks, parameter validation, endpoint rules, response parsing) each GET
costs 1.6-2.1 ms of CPU whatever its size, held under the GIL the decoder needs between FFmpeg calls;
signed here with the same signer (SigV4) and sent through botocore's HTTP session, 0.8-1.0 ms (timed
by hand; docs/data-loading.md, "Measured"). To a plain-HTTP endpoint without a proxy (an object
store inside the cluster) the request goes over fsdtrain's own connections instead
(:mod:`fsdtrain.store.plain_http`: the body received in one call, not one per 64 KB); TLS and
proxies keep botocore's session.

What the client decides once is asked of the client once: the object URL (endpoint, addressing
style, key encoding) comes from a presigned URL of the bucket, and the endpoint's region, TLS
verification and proxies are the ones the client uses. An error answer becomes the botocore
``ClientError`` a client call raises (code and message from its XML body, else the HTTP status as
code), so retries and messages are the same; a redirect or a wrong-region answer, which the client
follows by itself, is left to it (:meth:`SignedGets.get` returns None), as is an answer the plain
connections do not read (no ``Content-Length``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit
from xml.etree import ElementTree

from fsdtrain.store.plain_http import PlainHttp

__all__ = ["SignedGets"]

_PROBE_KEY = "fsdtrain-url-probe"  # a key to presign: the bucket's URL is what comes before it
_WRONG_REGION = ("AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "PermanentRedirect")


class SignedGets:
    """Signed GETs for one process (it holds connections: like a client, not shared over a fork).

    Args:
        client: returns this process's boto3 S3 client (endpoint, region and bucket URLs come from it);
            called only when one of them is needed, so a client made on first use is made then.
        session: the boto3 session it was made from (credentials, refreshed as the client's are).
        timeout_s: (connect, read) seconds per try.
        known: the signed GETs of the process this one was forked from: its endpoint, region and
            bucket URLs are taken (the same settings, inherited), so that a loader worker which only
            reads buckets its parent read makes no client of its own (16 ms of CPU and the first GET's
            presigning at every worker start, on the path to its first clip; timed by hand).
    """

    def __init__(
        self, client: Callable[[], object], session, *, timeout_s: tuple[float, float], known: SignedGets | None = None
    ) -> None:
        self._client, self._session = client, session
        if known is not None:
            self._endpoint, self._region = known._endpoint, known._region
            self._buckets: dict[str, str | None] = dict(known._buckets)  # bucket -> its objects' URL prefix
        else:
            meta = client().meta
            self._endpoint, self._region = meta.endpoint_url, meta.region_name
            self._buckets = {}
        self._timeout_s = timeout_s
        self._http = None  # botocore's HTTP session, made when a URL needs it (TLS, a proxy)
        self._plain: dict[str, PlainHttp | None] = {}  # plain-HTTP connections by scheme://host:port (None: TLS or a proxy)
        self._credentials = None

    @property
    def endpoint(self) -> str:
        """The endpoint URL of the client the GETs stand in for."""
        return self._endpoint

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None) -> bytes | None:
        """The object's bytes (``[start, end)`` of them), or None where the client must ask (a redirect,
        a wrong region, or a bucket URL the client builds some other way).

        Raises:
            botocore.exceptions.ClientError: the store answered an error.
            botocore.exceptions.BotoCoreError: no credentials, the connection failed or timed out, or
                the body ended before its Content-Length (as a client call would raise them).
        """
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import IncompleteReadError, NoCredentialsError
        from botocore.utils import percent_encode

        if self._credentials is None:
            self._credentials = self._session.get_credentials()
            if self._credentials is None:
                raise NoCredentialsError()
        prefix = self._prefix(bucket)
        if prefix is None:
            return None
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range is not None else {}
        url = prefix + percent_encode(key, safe="/~")
        plain, host, target = self._plain_http(url)
        if plain is not None:
            headers["Host"] = host  # signed as sent (the signer would take it from the URL the same way)
        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        if plain is not None:
            answer = plain.get(target, dict(request.headers.items()))
            if answer is None:  # an answer the plain transport does not read: the client asks again
                return None
            status, data = answer.status, answer.body
        else:
            response = self._session_http().send(request.prepare())
            status, data = response.status_code, response.content
            expected = response.headers.get("content-length")
            if expected is not None and expected.isdigit() and len(data) != int(expected):
                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=int(expected))
        if status not in (200, 206):
            error = _client_error(status, data)
            if 300 <= status < 400 or error.response["Error"]["Code"] in _WRONG_REGION:
                return None
            raise error
        if byte_range is not None and status == 200:  # the store sent the whole object
            data = data[byte_range[0] : byte_range[1]]
        return data

    def _plain_http(self, url: str) -> tuple[PlainHttp | None, str, str]:
        """The plain-HTTP connections for ``url``, its Host header and request target; no connections
        (None) for TLS or a proxy, which botocore's session handles (decided once per scheme and host)."""
        from botocore.utils import get_environ_proxies

        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._plain:
            plain = parts.scheme == "http" and parts.hostname is not None and not get_environ_proxies(url)
            self._plain.setdefault(  # one set of connections per origin, whichever thread asks first
                origin, PlainHttp(self._endpoint, parts.hostname, parts.port or 80, timeout_s=self._timeout_s) if plain else None
            )  # fmt: skip
        host = parts.netloc.rpartition("@")[2].removesuffix(":80")
        return self._plain[origin], host, parts.path + (f"?{parts.query}" if parts.query else "")

    def close(self) -> None:
        """Closes the kept plain-HTTP connections (botocore's session closes its own when collected)."""
        for plain in list(self._plain.values()):
            if plain is not None:
                plain.close()

    def _session_http(self):
        """botocore's HTTP session, with the TLS verification and proxies a client of the endpoint uses."""
        if self._http is None:
            from botocore.httpsession import URLLib3Session
            from botocore.utils import get_environ_proxies

            # as botocore verifies TLS for a client: the ca_bundle setting (AWS_CA_BUNDLE or the config
            # file, read by the botocore session under boto3's), else REQUESTS_CA_BUNDLE, else its own CAs
            verify = self._session._session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE", True)
            self._http = URLLib3Session(
                verify=verify, proxies=get_environ_proxies(self._endpoint), timeout=self._timeout_s, max_pool_connections=16
            )
        return self._http

    def _prefix(self, bucket: str) -> str | None:
        """What comes before a key in the URL of ``bucket``'s objects (path or virtual-host style, as
        the client addresses them); None if the client's URL does not end in the key (left to it)."""
        if bucket not in self._buckets:
            url = self._client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
            path = url.split("?", 1)[0]
            self._buckets[bucket] = path[: -len(_PROBE_KEY)] if path.endswith("/" + _PROBE_KEY) else None
        return self._buckets[bucket]


def _client_error(status: int, body: bytes):
    """The ClientError a client call raises for this answer: code and message from the S3 error XML,
    else the HTTP status as the code (as botocore does for a body without one)."""
    from botocore.exceptions import ClientError

    code = message = ""
    try:
        root = ElementTree.fromstring(body)
        code, message = root.findtext("Code") or "", root.findtext("Message") or ""
    except ElementTree.ParseError:
        pass
    parsed = {"Error": {"Code": code or str(status), "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(parsed, "GetObject")
