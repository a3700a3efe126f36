"""An object store's refusal or absence, read out of a LanceDB error and said in one line.

LanceDB reports an S3 answer (403 SignatureDoesNotMatch, 404 NoSuchBucket) or a refused connection as
a long debug dump of its Rust error. The status, the S3 error code and the kind of connection failure
are all that a user needs, with the store named and no secret repeated.
"""

from __future__ import annotations

import re

from mvh.errors import StoreError, StoreUnreachableError, StoreUnusableError
from mvh.store.location import StoreLocation

_STATUS = re.compile(r"\bstatus: (\d{3})\b")
_CODE = re.compile(r"<Code>(\w+)</Code>")
_UNREACHABLE = re.compile(
    r"connect|error sending request|connection closed|timed out|dns error", re.IGNORECASE
)


def remote_failure(exc: BaseException, location: StoreLocation) -> StoreError | None:
    """The one-line error for an object store's refusal (exit 2) or silence (exit 1); None otherwise."""
    if not location.is_remote:
        return None
    text = str(exc)
    store = location.describe()
    code_match, status_match = _CODE.search(text), _STATUS.search(text)
    code = code_match.group(1) if code_match else None
    status = int(status_match.group(1)) if status_match else None
    if code in ("NoSuchBucket",):
        return StoreUnusableError(f"bucket not found: {store} ({status} {code}); create it, or fix the URI")
    if status in (401, 403):
        return StoreUnusableError(
            f"{location.scheme.upper()} refused the credentials ({status} {code or 'Forbidden'}) for "
            f"{store}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or --storage-option) and the endpoint"
        )
    if status is None and _UNREACHABLE.search(text):
        return StoreUnreachableError(
            f"the object store of {store} does not answer (connection failed): check that it runs and "
            "AWS_ENDPOINT_URL (or --storage-option endpoint=...); slides committed before are kept, and a "
            "rerun resumes"
        )
    return None
