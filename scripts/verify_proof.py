#!/usr/bin/env python3
"""An independent keyraft lookup-proof verifier, written from docs/protocol.md alone.

It shares no code with the Rust implementation: Ed25519 and ECVRF-EDWARDS25519-SHA512-TAI are
implemented here from RFC 8032 and RFC 9381 in plain Python (slow, but clear). It exists to show
that the specification is complete, and the test suite runs it against proofs made by the Rust
server code.

usage: verify_proof.py REALM_CONFIG_HEX_FILE PROOF_FILE USER_ID NOW_MS
                       [--verifier-threshold T] [--ttl-ms MS] [--skew-ms MS] [--last-seen-epoch E]
       verify_proof.py --ed25519-vectors docs/vectors/ed25519.json

REALM_CONFIG_HEX_FILE holds the hex of the canonical RealmConfig bytes (section 2.6);
PROOF_FILE holds the canonical LookupProof bytes (section 5). Exit status 0 and "OK ..." on
success; 1 and the failing check otherwise.
"""
import argparse
import hashlib
import sys

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


class Reject(Exception):
    pass


# ---- edwards25519 (RFC 8032 section 5.1) -------------------------------------------------
def point_add(a, b):
    (x1, y1, z1, t1), (x2, y2, z2, t2) = a, b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_mul(s, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = point_add(q, pt)
        pt = point_add(pt, pt)
        s >>= 1
    return q


def point_equal(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def point_neg(a):
    return ((-a[0]) % P, a[1], a[2], (-a[3]) % P)


def encode_point(pt):
    zinv = pow(pt[2], P - 2, P)
    x, y = pt[0] * zinv % P, pt[1] * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode_point(b):
    """RFC 8032 5.1.3, rejecting non-canonical encodings; None if invalid."""
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        if sign:
            return None
        x = 0
    else:
        x = pow(x2, (P + 3) // 8, P)
        if (x * x - x2) % P != 0:
            x = x * SQRT_M1 % P
        if (x * x - x2) % P != 0:
            return None
        if (x & 1) != sign:
            x = P - x
    return (x, y, 1, x * y % P)


IDENTITY = (0, 1, 1, 0)
GY = 4 * pow(5, P - 2, P) % P
B = decode_point(GY.to_bytes(32, "little"))


def small_order(pt):
    return point_equal(point_mul(8, pt), IDENTITY)


def ed25519_reject_reason(public, message, signature):
    """The Ed25519 rule of docs/protocol.md section 1: None if the signature is valid, else the
    first failed check's reason code (as in docs/vectors/ed25519.json).

    Cofactored verification with canonical encodings: A and R canonical, on the curve, not of
    small order; S < L; k = SHA-512(R_b || A_b || M) mod L; valid iff [8]([S]B - R - [k]A) = 0.
    """
    if len(public) != 32 or len(signature) != 64:
        return "length"
    a = decode_point(public)
    if a is None:
        return "key-encoding"
    if small_order(a):
        return "key-small-order"
    r = decode_point(signature[:32])
    if r is None:
        return "r-encoding"
    if small_order(r):
        return "r-small-order"
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return "s-non-canonical"
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    residue = point_add(point_mul(s, B), point_neg(point_add(r, point_mul(k, a))))
    return None if small_order(residue) else "equation"


def ed25519_verify_strict(public, message, signature):
    """True iff the signature is valid under the protocol's rule ("strict" about encodings;
    the equation is the cofactored one, see ed25519_reject_reason)."""
    return ed25519_reject_reason(public, message, signature) is None


def check_ed25519_vectors(path):
    """--ed25519-vectors: prints this implementation's verdict on every vector ("INDEX accept"
    or "INDEX reject REASON") and fails unless each matches the file's."""
    import json
    vectors = json.load(open(path))["vectors"]
    disagreements = 0
    for i, v in enumerate(vectors):
        reason = ed25519_reject_reason(bytes.fromhex(v["public_key"]), bytes.fromhex(v["message"]),
                                       bytes.fromhex(v["signature"]))
        ours = "accept" if reason is None else f"reject {reason}"
        expected = "accept" if v["valid"] else f"reject {v['reason']}"
        print(f"{i} {ours}")
        if ours != expected:
            print(f"vector {i} ({v['name']}): expected {expected}, got {ours}", file=sys.stderr)
            disagreements += 1
    print(f"{len(vectors) - disagreements} of {len(vectors)} Ed25519 vectors agree")
    return 1 if disagreements else 0


# ---- ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381) ------------------------------------------
SUITE = b"\x03"


def vrf_verify(public, alpha, pi):
    y = decode_point(public)
    if y is None or small_order(y):
        raise Reject("VRF public key invalid")
    if len(pi) != 80:
        raise Reject("VRF proof length")
    gamma = decode_point(pi[:32])
    if gamma is None:
        raise Reject("VRF proof: Gamma invalid")
    c = int.from_bytes(pi[32:48], "little")
    s = int.from_bytes(pi[48:], "little")
    if s >= L:
        raise Reject("VRF proof: s not canonical")
    h = None
    for ctr in range(256):
        cand = hashlib.sha512(SUITE + b"\x01" + public + alpha + bytes([ctr, 0])).digest()[:32]
        pt = decode_point(cand)
        if pt is not None:
            h = point_mul(8, pt)
            break
    if h is None:
        raise Reject("VRF encode_to_curve failed")
    u = point_add(point_mul(s, B), point_neg(point_mul(c, y)))
    v = point_add(point_mul(s, h), point_neg(point_mul(c, gamma)))
    data = SUITE + b"\x02" + b"".join(encode_point(p) for p in (y, h, gamma, u, v)) + b"\x00"
    if hashlib.sha512(data).digest()[:16] != pi[32:48]:
        raise Reject("VRF proof does not verify")
    return hashlib.sha512(SUITE + b"\x03" + encode_point(point_mul(8, gamma)) + b"\x00").digest()


# ---- canonical encoding (section 2) ------------------------------------------------------
class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        if self.i + n > len(self.b):
            raise Reject("truncated")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return int.from_bytes(self.take(2), "big")

    def u64(self):
        return int.from_bytes(self.take(8), "big")

    def var(self, lo, hi):
        n = self.u16()
        if not lo <= n <= hi:
            raise Reject("length out of range")
        return self.take(n)

    def done(self):
        if self.i != len(self.b):
            raise Reject("trailing bytes")


def hl(label, *parts):
    return hashlib.sha256(bytes([len(label)]) + label.encode() + b"".join(parts)).digest()


def framed(label):
    return bytes([len(label)]) + label.encode()


def parse_realm_config(b):
    r = Reader(b)
    realm = r.var(1, 64).decode()
    vrf_key = r.take(32)
    replicas = [r.take(32) for _ in range(r.u16())]
    verifiers = [r.take(32) for _ in range(r.u16())]
    r.done()
    return {"realm": realm, "vrf": vrf_key, "replicas": replicas, "verifiers": verifiers,
            "hash": hl("keyraft/v1/realm-config", b)}


def parse_head(b):
    r = Reader(b)
    head = {"realm": r.var(1, 64).decode(), "epoch": r.u64(), "root": r.take(32), "previous": r.take(32),
            "issue_time_ms": r.u64(), "update_count": r.u64(), "config_hash": r.take(32), "bytes": b}
    r.done()
    return head


def parse_positional(r, limit):
    n = r.u16()
    if n > limit:
        raise Reject("too many signatures")
    out, last = [], -1
    for _ in range(n):
        pos = r.u8()
        if pos <= last:
            raise Reject("signature positions not strictly increasing")
        last = pos
        out.append((pos, r.take(64)))
    return out


def parse_tree_proof(r):
    tag = r.u8()
    if tag == 0:
        terminal = ("empty",)
    elif tag == 1:
        terminal = ("leaf", r.take(32))
    elif tag == 2:
        terminal = ("other", r.take(32), r.take(32))
    else:
        raise Reject("unknown tree terminal")
    depth = r.u16()
    if depth > 256:
        raise Reject("tree proof too deep")
    bitmap = r.take((depth + 7) // 8)
    if depth % 8 and bitmap[depth // 8] & (0xff >> (depth % 8)):
        raise Reject("tree proof bitmap padding set")
    siblings = [r.take(32) if bitmap[k // 8] & (0x80 >> (k % 8)) else None for k in range(depth)]
    return terminal, siblings


def bit(index, k):
    return (index[k // 8] >> (7 - k % 8)) & 1


def tree_root(terminal, siblings, index):
    """Section 4.1: the root the proof leads to, and the leaf value if it proves inclusion."""
    depth = len(siblings)
    if depth > 0 and siblings[depth - 1] is None:
        raise Reject("tree proof: not a compressed tree")
    empty = hl("keyraft/v1/tree-empty")
    value = None
    if terminal[0] == "empty":
        h = empty
    elif terminal[0] == "leaf":
        value = terminal[1]
        h = hl("keyraft/v1/tree-leaf", depth.to_bytes(2, "big"), index, value)
    else:
        other, v = terminal[1], terminal[2]
        if other == index or any(bit(other, k) != bit(index, k) for k in range(depth)):
            raise Reject("tree proof: other leaf not on the path")
        h = hl("keyraft/v1/tree-leaf", depth.to_bytes(2, "big"), other, v)
    for k in range(depth - 1, -1, -1):
        sib = siblings[k] if siblings[k] is not None else empty
        h = hl("keyraft/v1/tree-node", sib, h) if bit(index, k) else hl("keyraft/v1/tree-node", h, sib)
    return h, value


def verify(config, proof_bytes, user_id, now_ms, threshold, ttl_ms, skew_ms, last_seen):
    r = Reader(proof_bytes)
    proof_user = r.var(1, 256).decode()
    pi = r.take(80)
    head = parse_head(r.var(1, 512))
    replica_sigs = parse_positional(r, 9)
    verifier_sigs = parse_positional(r, 32)
    terminal, siblings = parse_tree_proof(r)
    present = r.u8()
    entry = profile = None
    if present == 1:
        entry, profile = r.var(1, 2048), r.var(1, 16384)
    elif present != 0:
        raise Reject("bad presence byte")
    r.done()
    if proof_user != user_id:
        raise Reject("0: proof is about another user id")
    # 1. Realm (before the VRF: a proof from another realm fails here, named as such).
    if head["realm"] != config["realm"] or head["config_hash"] != config["hash"]:
        raise Reject(f"1: the proof is for a different realm: realm {head['realm']!r} (config hash "
                     f"{head['config_hash'][:8].hex()}), expected {config['realm']!r} (config hash {config['hash'][:8].hex()})")
    # 2. VRF.
    alpha = framed("keyraft/v1/vrf-index") + len(config["realm"]).to_bytes(2, "big") + config["realm"].encode() + user_id.encode()
    try:
        index = vrf_verify(config["vrf"], alpha, pi)[:32]
    except Reject as e:
        raise Reject(f"2: {e}") from None
    # 3. Freshness.
    if head["issue_time_ms"] + ttl_ms < now_ms or head["issue_time_ms"] > now_ms + skew_ms:
        raise Reject("3: head too old or from the future")
    # 4. Quorum.
    head_msg = framed("keyraft/v1/epoch-head") + head["bytes"]
    for pos, sig in replica_sigs:
        if pos >= len(config["replicas"]) or not ed25519_verify_strict(config["replicas"][pos], head_msg, sig):
            raise Reject("4: bad replica signature")
    if len(replica_sigs) < len(config["replicas"]) // 2 + 1:
        raise Reject("4: no replica majority")
    rat_msg = framed("keyraft/v1/verifier-ratification") + head["bytes"]
    for pos, sig in verifier_sigs:
        if pos >= len(config["verifiers"]) or not ed25519_verify_strict(config["verifiers"][pos], rat_msg, sig):
            raise Reject("4: bad verifier signature")
    if len(verifier_sigs) < threshold:
        raise Reject("4: too few verifier ratifications")
    # 5. Tree.
    root, value = tree_root(terminal, siblings, index)
    if root != head["root"]:
        raise Reject("5: tree proof does not lead to the signed root")
    # 6, 7. Entry and profile.
    if (value is None) != (entry is None):
        raise Reject("6: entry presence does not match the tree")
    if entry is not None:
        if hl("keyraft/v1/entry", entry) != value or entry[:32] != index:
            raise Reject("6: entry does not match the leaf")
        if hl("keyraft/v1/profile-commitment", profile) != entry[40:72]:
            raise Reject("7: profile does not match the commitment")
    # 8. Rollback.
    if last_seen is not None and head["epoch"] < last_seen:
        raise Reject("8: rollback")
    return head["epoch"], entry is not None


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--ed25519-vectors":
        return check_ed25519_vectors(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("realm_config_hex_file")
    ap.add_argument("proof_file")
    ap.add_argument("user_id")
    ap.add_argument("now_ms", type=int)
    ap.add_argument("--verifier-threshold", type=int, default=0)
    ap.add_argument("--ttl-ms", type=int, default=60_000)
    ap.add_argument("--skew-ms", type=int, default=5_000)
    ap.add_argument("--last-seen-epoch", type=int)
    a = ap.parse_args()
    config = parse_realm_config(bytes.fromhex(open(a.realm_config_hex_file).read().strip()))
    proof = open(a.proof_file, "rb").read()
    try:
        epoch, present = verify(config, proof, a.user_id, a.now_ms, a.verifier_threshold, a.ttl_ms, a.skew_ms, a.last_seen_epoch)
    except Reject as e:
        print(f"REJECTED: {e}")
        return 1
    print(f"OK epoch {epoch}: {a.user_id} is {'present' if present else 'absent'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
