"""S3 GETs signed and sent by hand, for the loader's range reads: botocore's signer and HTTP session
without a client call's per-request machinery.

A loader worker reads every clip with one range GET from a thread beside its decoder. Through a
boto3 client call (event hooks, parameter validation, endpoint rules, response parsing) each GET
costs 1.6-2.1 ms of CPU whatever its size, held under the GIL the decoder needs between FFmpeg calls;
signed and sent here, with the same signer (SigV4) over the same kind of connection pool, 0.8-1.0 ms
(timed by hand; docs/data-loading.md, "Measured").

What the client decides once is asked of the client once: the object URL (endpoint, addressing
style, key encoding) comes from a presigned URL of the bucket, and the endpoint's region, TLS
verification and proxies are the ones the client uses. An error answer becomes the botocore
``ClientError`` a client call raises (code and message from its XML body, else the HTTP status as
code), so retries and messages are the same; a redirect or a wrong-region answer, which the client
follows by itself, is left to it (:meth:`SignedGets.get` returns None).
"""

from __future__ import annotations

import os
from xml.etree import ElementTree

__all__ = ["SignedGets"]

_PROBE_KEY = "fsdtrain-url-probe"  # a key to presign: the bucket's URL is what comes before it
_WRONG_REGION = ("AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "PermanentRedirect")


class SignedGets:
    """Signed GETs for one process (it holds a connection pool: like a client, not shared over a fork).

    Args:
        client: this process's boto3 S3 client (endpoint, region and object URLs come from it).
        session: the boto3 session it was made from (credentials, refreshed as the client's are).
        timeout_s: (connect, read) seconds per try.
    """

    def __init__(self, client, session, *, timeout_s: tuple[float, float]) -> None:
        from botocore.httpsession import URLLib3Session
        from botocore.utils import get_environ_proxies

        self._client, self._session = client, session
        self._endpoint, self._region = client.meta.endpoint_url, client.meta.region_name
        # as botocore verifies TLS for a client: the ca_bundle setting (AWS_CA_BUNDLE or the config
        # file, read by the botocore session under boto3's), else REQUESTS_CA_BUNDLE, else its own CAs
        verify = session._session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE", True)
        self._http = URLLib3Session(
            verify=verify, proxies=get_environ_proxies(self._endpoint), timeout=timeout_s, max_pool_connections=16
        )
        self._buckets: dict[str, str | None] = {}  # bucket -> its objects' URL prefix
        self._credentials = None

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
        request = AWSRequest(method="GET", url=prefix + percent_encode(key, safe="/~"), headers=headers)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        response = self._http.send(request.prepare())
        if response.status_code not in (200, 206):
            error = _client_error(response)
            if 300 <= response.status_code < 400 or error.response["Error"]["Code"] in _WRONG_REGION:
                return None
            raise error
        data = response.content
        expected = response.headers.get("content-length")
        if expected is not None and expected.isdigit() and len(data) != int(expected):
            raise IncompleteReadError(actual_bytes=len(data), expected_bytes=int(expected))
        if byte_range is not None and response.status_code == 200:  # the store sent the whole object
            data = data[byte_range[0] : byte_range[1]]
        return data

    def _prefix(self, bucket: str) -> str | None:
        """What comes before a key in the URL of ``bucket``'s objects (path or virtual-host style, as
        the client addresses them); None if the client's URL does not end in the key (left to it)."""
        if bucket not in self._buckets:
            url = self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
            path = url.split("?", 1)[0]
            self._buckets[bucket] = path[: -len(_PROBE_KEY)] if path.endswith("/" + _PROBE_KEY) else None
        return self._buckets[bucket]


def _client_error(response):
    """The ClientError a client call raises for this answer: code and message from the S3 error XML,
    else the HTTP status as the code (as botocore does for a body without one)."""
    from botocore.exceptions import ClientError

    code = message = ""
    try:
        root = ElementTree.fromstring(response.content)
        code, message = root.findtext("Code") or "", root.findtext("Message") or ""
    except ElementTree.ParseError:
        pass
    status = response.status_code
    parsed = {"Error": {"Code": code or str(status), "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(parsed, "GetObject")
