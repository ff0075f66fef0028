"""Felix's rule IDs: the ``cali:<16 chars>`` comment on every rule we write.

A running SHA-224: start from SHA-224(chain name); for each rule, hash the previous digest
followed by the rule rendered with the placeholder ``HASH`` where the comment will go; keep the
first 16 characters of the unpadded base64url digest. A rule's ID therefore depends on its
chain, its position and every rule above it, which lets a driver compare a chain by IDs alone
(``iptables-save`` / ``nft list`` read-back) without parsing rules back.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable

HASH_LENGTH = 16
PLACEHOLDER = "HASH"


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def rule_hashes(chain: str, rendered_for_hash: Iterable[str]) -> list[str]:
    """IDs for rules whose hash-form renderings are given in order."""
    sha224 = hashlib.sha224
    b64 = binascii.b2a_base64
    digest = sha224(chain.encode()).digest()
    out = []
    for text in rendered_for_hash:
        digest = sha224(digest + text.encode()).digest()
        out.append(b64(digest, newline=False)[:HASH_LENGTH].translate(_URLSAFE).decode())
    return out
