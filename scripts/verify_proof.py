#!/usr/bin/env python3
"""An independent keyraft lookup-proof verifier, written from docs/protocol.md alone.

It shares no code with the Rust implementation: Ed25519 and ECVRF-EDWARDS25519-SHA512-TAI are
implemented here from RFC 8032 and RFC 9381 in plain Python (slow, but clear). It exists to show
that the specification is complete, and the test suite runs it against the test vectors in
docs/vectors/ and against proofs made by the Rust server code.

usage: verify_proof.py REALM PROOF_FILE USER_ID NOW_MS
                       [--verifier-threshold T] [--ttl-ms MS] [--skew-ms MS] [--last-seen-epoch E]
                       [--past EPOCH] [--config-chain FILE]
       verify_proof.py --history REALM USER_ID CURRENT_PROOF VERSION_PROOF...
       verify_proof.py --vectors docs/vectors/lookup-v1.json
       verify_proof.py --ed25519-vectors docs/vectors/ed25519.json
       verify_proof.py --check-realm-vectors docs/vectors/realm-config-v2.json
       verify_proof.py --read-realm-files JSON...
       verify_proof.py --decode-entry HEX... | --decode-profile HEX... | --decode-realm-config HEX...

With --config-chain FILE (SignedConfigChange hex, one per line, section 2.8) the chain is
followed from REALM's configuration and the proof checked with the configuration its head
commits to; exit status 2 and "CHAIN REFUSED: ..." if a change does not follow.

REALM is a realm file (JSON, section 5.3, protocol version 1 or 2; its threshold, TTL and skew
are the defaults) or a file holding the hex of the canonical RealmConfig bytes of either
version (section 2.6); USER_ID is the id as it goes into the VRF (under version 2 the canonical
id of section 3.1, which the client computes: this script does not); PROOF_FILE holds the
canonical LookupProof bytes (section 5.2). Exit status 0 and "OK ..." on success; 1 and
"REJECTED (<check>): ..." naming the failing check otherwise (section 5.1 names the checks).

With --history it checks a whole History listing (section 8.1): CURRENT_PROOF is the first
page's proof of the current version, the VERSION_PROOFs are the listed versions' proofs newest
first (`keyraft history --all --save-proofs DIR` writes current-epoch-E.proof and
version-V-epoch-E.proof). "OK history ..." or "REJECTED (<check>): ..." with status 0 or 1.

With --vectors it checks every vector of the file and prints one line per vector, "VECTOR
<name>: accept ..." or "VECTOR <name>: reject <check>: ...", and one per refused realm file,
"REALM-FILE <name>: reject <field>: ..."; exit status 1 if any verdict differs from the file's.

With --check-realm-vectors it reads every realm file of the file and checks its RealmConfig
bytes and hash, and that each refused realm file is refused naming the expected field; one line
each, exit status 1 if any differs.

With --read-realm-files it reads each JSON argument as a realm file and prints one line each:
"accept <RealmConfig hex>" or "reject <field>: <why>".

With --decode-entry, --decode-profile or --decode-realm-config it only decodes each HEX
argument as an Entry (section 2.4), a Profile (section 2.3) or a RealmConfig of either version
(section 2.6) and prints one line each: "accept" or "reject: <why>".
"""
import argparse
import hashlib
import json
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


def ed25519_verify(public, message, signature):
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
class Failed(Reject):
    """A rejection by a named check of section 5.1 (decode, user_id, vrf, realm, ...)."""

    def __init__(self, check, message):
        super().__init__(message)
        self.check = check


def checked(check, f, *args):
    """Runs f; a plain Reject from it becomes a failure of `check`."""
    try:
        return f(*args)
    except Failed:
        raise
    except Reject as e:
        raise Failed(check, str(e)) from None


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


def realm_name(raw):
    """Section 2.1: 1 to 64 bytes of printable ASCII."""
    if not 1 <= len(raw) <= 64 or any(not 0x21 <= c <= 0x7e for c in raw):
        raise Reject("realm name must be 1 to 64 printable ASCII bytes")
    return raw.decode("ascii")


def user_id_text(raw):
    """Section 2.1: UTF-8 without control characters (category Cc)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("user id is not UTF-8") from None
    if any(ord(ch) <= 0x1f or 0x7f <= ord(ch) <= 0x9f for ch in text):
        raise Reject("user id contains a control character")
    return text


def valid_key(k):
    pt = decode_point(k)
    return pt is not None and not small_order(pt)


def check_key_list(what, keys):
    """Section 2.6: every key valid, sorted strictly ascending (so no duplicates)."""
    for i, k in enumerate(keys):
        if not valid_key(k):
            raise Reject(f"{what}[{i}] is not a valid Ed25519 public key")
        if i and keys[i - 1] == k:
            raise Reject(f"{what}[{i}]: duplicate of {what}[{i - 1}]")
        if i and keys[i - 1] > k:
            raise Reject(f"{what}[{i}]: keys must be sorted strictly ascending; this one sorts before {what}[{i - 1}]")


# ---- the registration policy of protocol version 2 (section 2.6) -------------------------
REGISTRAR_KEYS_MAX = 32
NAMESPACE_RULES_MAX = 64
NAMESPACE_BYTES_MAX = 256
METHODS_PER_RULE_MAX = 8
OIDC_FIELD_BYTES_MAX = 255
OIDC_CLAIM_BYTES_MAX = 64
LOCAL_PART_RULES = ("case_insensitive", "case_sensitive")  # encoded as their position
METHOD_TAGS = {"open": 1, "registrar": 2, "email": 3, "oidc": 4}
OIDC_FIELDS = (("issuer", OIDC_FIELD_BYTES_MAX), ("audience", OIDC_FIELD_BYTES_MAX), ("claim", OIDC_CLAIM_BYTES_MAX))


class PolicyError(Reject):
    """A registration policy breaking a rule of section 2.6; `field` says where."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def has_control(text):
    """General category Cc, as in the user id rule of section 2.1."""
    return any(ord(ch) <= 0x1f or 0x7f <= ord(ch) <= 0x9f for ch in text)


def encode_method(method):
    """Section 2.6: `Method`. A method is ("open",), ("registrar",), ("email",) or
    ("oidc", issuer, audience, claim)."""
    out = bytes([METHOD_TAGS[method[0]]])
    for text in method[1:]:
        raw = text.encode("utf-8")
        out += len(raw).to_bytes(2, "big") + raw
    return out


def check_text(field, text, max_bytes):
    """1 to max_bytes of UTF-8 without a control character."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(field, "not UTF-8 (a lone surrogate)") from None
    if not 1 <= len(raw) <= max_bytes:
        raise PolicyError(field, f"{len(raw)} bytes, must be 1 to {max_bytes}")
    if has_control(text):
        raise PolicyError(field, "contains a control character")


def check_policy(policy, replicas, verifiers):
    """Every rule of section 2.6 on a registration policy, whether read from bytes or from a
    realm file: {"local_part_rule": 0|1, "registrar_keys": [...], "rules": [(namespace, [method])],
    "recovery_window_ms": n},
    each rule's methods already in the order they are encoded."""
    keys = policy["registrar_keys"]
    if len(keys) > REGISTRAR_KEYS_MAX:
        raise PolicyError("registration.registrar_keys", f"{len(keys)} keys, at most {REGISTRAR_KEYS_MAX}")
    for i, k in enumerate(keys):
        if not valid_key(k):
            raise PolicyError(f"registration.registrar_keys[{i}]", "not a valid Ed25519 public key")
        if i and keys[i - 1] >= k:
            raise PolicyError(f"registration.registrar_keys[{i}]",
                              f"keys must be sorted strictly ascending; this one is not after registrar_keys[{i - 1}]")
        # A registrar is an outside party: a replica or verifier key signing attestations would
        # let one role vouch for another's checks.
        if k in replicas or k in verifiers:
            raise PolicyError(f"registration.registrar_keys[{i}]", "is also a replica or verifier key")
    rules = policy["rules"]
    if not 1 <= len(rules) <= NAMESPACE_RULES_MAX:
        raise PolicyError("registration.namespaces", f"{len(rules)} rules, must be 1 to {NAMESPACE_RULES_MAX}")
    for i, (namespace, methods) in enumerate(rules):
        where = f"registration.namespaces[{i}]"
        check_text(f"{where}.namespace", namespace, NAMESPACE_BYTES_MAX)
        if not 1 <= len(methods) <= METHODS_PER_RULE_MAX:
            raise PolicyError(f"{where}.methods", f"{len(methods)} methods, must be 1 to {METHODS_PER_RULE_MAX}")
        encoded = [encode_method(m) for m in methods]
        for j, m in enumerate(methods):
            if j and encoded[j - 1] >= encoded[j]:
                raise PolicyError(f"{where}.methods[{j}]", "methods must be sorted strictly ascending by their encoding")
            if m[0] == "oidc":
                for (name, max_bytes), value in zip(OIDC_FIELDS, m[1:]):
                    check_text(f"{where}.methods[{j}].oidc.{name}", value, max_bytes)
            if m[0] == "registrar" and not keys:
                raise PolicyError(f"{where}.methods[{j}]", "allows `registrar` but the realm has no registrar key")


# A day: the veto window of a realm file that does not name one (section 5.3).
RECOVERY_WINDOW_MS_DEFAULT = 86_400_000


def encode_policy(policy):
    out = bytes([policy["local_part_rule"]]) + len(policy["registrar_keys"]).to_bytes(2, "big")
    out += b"".join(policy["registrar_keys"]) + len(policy["rules"]).to_bytes(2, "big")
    for namespace, methods in policy["rules"]:
        raw = namespace.encode("utf-8")
        out += len(raw).to_bytes(2, "big") + raw + len(methods).to_bytes(2, "big")
        out += b"".join(encode_method(m) for m in methods)
    return out + policy["recovery_window_ms"].to_bytes(8, "big")


def parse_policy_bytes(r):
    """Section 2.6: the registration policy at the end of a version-2 RealmConfig."""
    def text(max_bytes, what):
        with named(what):
            raw = r.var(1, max_bytes)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject(f"{what}: not UTF-8") from None

    rule = r.u8()
    if rule >= len(LOCAL_PART_RULES):
        raise Reject(f"registration local part rule {rule}: unknown (0 case_insensitive, 1 case_sensitive)")
    with named("registration registrar keys"):
        n = r.u16()
        if n > REGISTRAR_KEYS_MAX:
            raise Reject(f"registration registrar keys: {n}, at most {REGISTRAR_KEYS_MAX}")
        keys = [r.take(32) for _ in range(n)]
    with named("registration rules"):
        n = r.u16()
    if not 1 <= n <= NAMESPACE_RULES_MAX:
        raise Reject(f"registration rules: {n}, must be 1 to {NAMESPACE_RULES_MAX}")
    rules = []
    for i in range(n):
        namespace = text(NAMESPACE_BYTES_MAX, f"registration rule {i} namespace")
        with named(f"registration rule {i} methods"):
            m = r.u16()
        if not 1 <= m <= METHODS_PER_RULE_MAX:
            raise Reject(f"registration rule {i}: {m} methods, must be 1 to {METHODS_PER_RULE_MAX}")
        methods = []
        for j in range(m):
            with named(f"registration rule {i} method {j}"):
                tag = r.u8()
            names = [name for name, t in METHOD_TAGS.items() if t == tag]
            if not names:
                raise Reject(f"registration rule {i} method {j}: unknown method tag {tag}")
            if names[0] == "oidc":
                methods.append(("oidc",) + tuple(text(max_bytes, f"registration rule {i} method {j} oidc {name}")
                                                 for name, max_bytes in OIDC_FIELDS))
            else:
                methods.append((names[0],))
        rules.append((namespace, methods))
    with named("registration recovery window"):
        window = r.u64()
    return {"local_part_rule": rule, "registrar_keys": keys, "rules": rules, "recovery_window_ms": window}


def realm_config(realm, vrf_key, replicas, verifiers, registration=None, generation=0, node_ids=None):
    """Checks a realm configuration (section 2.6) and returns it with its bytes and hash:
    protocol version 1 without a registration policy, 2 with one (and with the generation and
    the replicas' node ids, aligned with `replicas`)."""
    y = decode_point(vrf_key)
    if y is None or small_order(y):
        raise Reject("VRF public key invalid")
    if not 1 <= len(replicas) <= 9:
        raise Reject("need 1 to 9 replica keys")
    if len(verifiers) > 32:
        raise Reject("at most 32 verifier keys")
    check_key_list("replica_keys", replicas)
    check_key_list("verifier_keys", verifiers)
    if set(replicas) & set(verifiers):
        raise Reject("a key is both a replica and a verifier key")
    name = realm.encode("ascii")
    b = (len(name).to_bytes(2, "big") + name + vrf_key + len(replicas).to_bytes(2, "big") + b"".join(replicas)
         + len(verifiers).to_bytes(2, "big") + b"".join(verifiers))
    if registration is not None:
        check_policy(registration, replicas, verifiers)
        # The version byte first: a version-1 encoding starts with the realm name's length,
        # whose high byte is 0, so the first byte tells the versions apart.
        b = b"\x02" + b + encode_policy(registration)
        node_ids = list(node_ids or [])
        if len(node_ids) != len(replicas):
            raise Reject("replica node ids: every replica key needs exactly one node id")
        if 0 in node_ids or len(set(node_ids)) != len(node_ids):
            raise Reject("replica node ids: must be distinct and at least 1")
        if not 0 <= generation <= U64_MAX:
            raise Reject("generation out of range")
        b += generation.to_bytes(8, "big") + len(node_ids).to_bytes(2, "big") + b"".join(
            n.to_bytes(8, "big") for n in node_ids)
    elif generation != 0 or node_ids:
        raise Reject("generations and replica node ids need protocol version 2")
    return {"realm": realm, "vrf": vrf_key, "replicas": replicas, "verifiers": verifiers,
            "registration": registration, "protocol_version": 1 if registration is None else 2, "bytes": b,
            "generation": generation, "node_ids": list(node_ids or []),
            "hash": hl("keyraft/v1/realm-config", b)}


def parse_realm_config(b):
    """Section 2.6: a canonical RealmConfig of either version, told apart by its first byte."""
    r = Reader(b)
    with named("realm config"):
        first = b[0] if b else r.u8()
    if first == 2:
        r.u8()
    elif first != 0:
        raise Reject(f"realm config: first byte {first}: neither version 1 (0) nor version 2 (2)")
    with named("realm config"):
        realm = realm_name(r.var(1, 64))
        vrf_key = r.take(32)
        replicas = [r.take(32) for _ in range(r.u16())]
        verifiers = [r.take(32) for _ in range(r.u16())]
        registration = parse_policy_bytes(r) if first == 2 else None
        generation, node_ids = 0, None
        if first == 2:
            generation = r.u64()
            count = r.u16()
            if count != len(replicas):
                raise Reject("realm config: the replica node ids are not one per replica key")
            node_ids = [r.u64() for _ in range(count)]
    r.done()
    config = realm_config(realm, vrf_key, replicas, verifiers, registration, generation, node_ids)
    if config["bytes"] != b:
        raise Reject("realm config: not its canonical encoding")
    return config


# ---- configuration changes (section 2.8) ---------------------------------------------------
def parse_config_change(b):
    """Section 2.8: a SignedConfigChange. Returns (signatures, change bytes, previous config
    hash, new config)."""
    r = Reader(b)
    with named("config change"):
        sigs = []
        for _ in range(r.u16()):
            signer, sig = r.take(32), r.take(64)
            if sigs and sigs[-1][0] >= signer:
                raise Reject("config change: signers not sorted strictly ascending")
            sigs.append((signer, sig))
        if len(sigs) > 9:
            raise Reject("config change: more than 9 signatures")
    # The change (previous hash and new configuration) is the rest.
    change = b[r.i:]
    if len(change) < 33:
        raise Reject("config change: truncated")
    return sigs, change, change[:32], parse_realm_config(change[32:])


def check_config_change(in_force, change_bytes):
    """Section 2.8's rule: the configuration the change leads to, or Reject naming the check."""
    sigs, change, previous_hash, new = parse_config_change(change_bytes)
    if previous_hash != in_force["hash"]:
        raise Reject("NotAfterConfigInForce: the change follows another configuration")
    if new["realm"] != in_force["realm"]:
        raise Reject("RealmRenamed")
    if new["vrf"] != in_force["vrf"]:
        raise Reject("VrfKeyChanged: the VRF key cannot be rotated")
    if new["protocol_version"] != 2:
        raise Reject("NotVersion2")
    if new["generation"] != in_force["generation"] + 1:
        raise Reject(f"GenerationNotNext: expected {in_force['generation'] + 1}, got {new['generation']}")
    message = framed("keyraft/v2/config-change") + change
    for signer, sig in sigs:
        if signer not in in_force["replicas"]:
            raise Reject(f"UnknownSigner {signer.hex()}")
        if not ed25519_verify(signer, message, sig):
            raise Reject(f"BadSignature by {signer.hex()}")
    need = len(in_force["replicas"]) // 2 + 1
    if len(sigs) < need:
        raise Reject(f"NotEnoughSignatures: {len(sigs)} of the {need} needed")
    return new


def follow_chain(trusted, changes):
    """Every configuration from `trusted` through `changes` (SignedConfigChange bytes, oldest
    first), each checked against the one before."""
    configs = [trusted]
    for i, change in enumerate(changes):
        try:
            configs.append(check_config_change(configs[-1], change))
        except Reject as e:
            raise Reject(f"configuration change {i} of the chain: {e}") from None
    return configs


class RealmFileError(Exception):
    """A realm file refused; `field` names the field (and position in a key list)."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


REALM_FILE_REQUIRED = ("realm", "vrf_public_key", "epoch_ttl_ms", "clock_skew_ms")
REALM_FILE_OPTIONAL = {"verifier_keys": [], "verifier_threshold": 0, "endpoints": [], "protocol_version": 1}
# Optional without a default: present exactly when protocol_version is 2.
REALM_FILE_REGISTRATION = "registration"
# Version 1 lists `replica_keys`; version 2 lists `replicas` (node id and key) and may say its
# `generation` (default 0).
REALM_FILE_VERSIONED = ("replica_keys", "replicas", "generation")
# How clients authenticate the replicas' listeners (TLS): transport only, no part of the
# configuration proofs commit to.
REALM_FILE_TLS = "tls"
U64_MAX = 2**64 - 1


def no_duplicate_fields(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise RealmFileError(k, "duplicate field")
        out[k] = v
    return out


def not_json_constant(name):
    # Python's json reads NaN and Infinity, which RFC 8259 does not have.
    raise RealmFileError("(file)", f"not JSON: {name}")


def hex_key(field, s):
    if not isinstance(s, str) or len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise RealmFileError(field, f"expected 64 lower-case hex digits (32 bytes), got {s!r}")
    return bytes.fromhex(s)


def file_key_list(field, value):
    """A key list of the realm file: every key valid, sorted strictly ascending, never sorted
    for the reader (section 5.3)."""
    if not isinstance(value, list):
        raise RealmFileError(field, "expected a list of keys")
    keys = [hex_key(f"{field}[{i}]", s) for i, s in enumerate(value)]
    for i, key in enumerate(keys):
        if not valid_key(key):
            raise RealmFileError(f"{field}[{i}]", "not a valid Ed25519 public key")
        if i and keys[i - 1] == key:
            raise RealmFileError(f"{field}[{i}]", f"duplicate of {field}[{i - 1}]")
        if i and keys[i - 1] > key:
            raise RealmFileError(f"{field}[{i}]", f"keys must be sorted strictly ascending; this one sorts before {field}[{i - 1}]")
    return keys


def file_object(field, value, required, optional):
    """A JSON object with exactly these fields (unknown ones refused, section 5.3)."""
    if not isinstance(value, dict):
        raise RealmFileError(field, "expected a JSON object")
    for k in value:
        if k not in required and k not in optional:
            raise RealmFileError(f"{field}.{k}", "unknown field")
    for k in required:
        if k not in value:
            raise RealmFileError(f"{field}.{k}", "missing field")
    return {**optional, **value}


def file_text(field, value, max_bytes):
    if not isinstance(value, str):
        raise RealmFileError(field, "expected a string")
    try:
        check_text(field, value, max_bytes)
    except PolicyError as e:
        raise RealmFileError(e.field, e.message) from None
    return value


def file_method(field, value):
    """A method of the realm file: "open", "registrar", "email" or {"oidc": {...}}."""
    if isinstance(value, str):
        if value not in METHOD_TAGS or value == "oidc":
            raise RealmFileError(field, f"unknown method {value!r}: expected \"open\", \"registrar\", \"email\" or "
                                        "{\"oidc\": {...}}")
        return (value,)
    if not isinstance(value, dict) or list(value) != ["oidc"]:
        raise RealmFileError(field, "expected \"open\", \"registrar\", \"email\" or an object with the one field \"oidc\"")
    oidc = file_object(f"{field}.oidc", value["oidc"], ("issuer", "audience"), {"claim": "email"})
    return ("oidc",) + tuple(file_text(f"{field}.oidc.{name}", oidc[name], max_bytes) for name, max_bytes in OIDC_FIELDS)


def file_registration(value, replicas, verifiers):
    """Section 5.3: the `registration` object, as the policy of section 2.6."""
    reg = file_object("registration", value, ("namespaces",),
                      {"local_part_rule": "case_insensitive", "registrar_keys": [],
                       "recovery_window_ms": RECOVERY_WINDOW_MS_DEFAULT})
    window = reg["recovery_window_ms"]
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= U64_MAX:
        raise RealmFileError("registration.recovery_window_ms", "expected an integer from 0 to 2^64 - 1")
    if reg["local_part_rule"] not in LOCAL_PART_RULES:
        raise RealmFileError("registration.local_part_rule",
                             f"{reg['local_part_rule']!r}: expected \"case_insensitive\" or \"case_sensitive\"")
    keys = file_key_list("registration.registrar_keys", reg["registrar_keys"])
    if not isinstance(reg["namespaces"], list):
        raise RealmFileError("registration.namespaces", "expected a list")
    rules = []
    for i, ns in enumerate(reg["namespaces"]):
        where = f"registration.namespaces[{i}]"
        ns = file_object(where, ns, ("namespace", "methods"), {})
        namespace = file_text(f"{where}.namespace", ns["namespace"], NAMESPACE_BYTES_MAX)
        # Canonical ids have lower-case domains: such a namespace could never match.
        if "@" in namespace and any("A" <= c <= "Z" for c in namespace.rsplit("@", 1)[1]):
            raise RealmFileError(f"{where}.namespace", "upper-case letter after the last @: canonical ids have "
                                                       "lower-case domains, so it would never match")
        if not isinstance(ns["methods"], list):
            raise RealmFileError(f"{where}.methods", "expected a list")
        methods = []
        for j, m in enumerate(ns["methods"]):
            method = file_method(f"{where}.methods[{j}]", m)
            if method in methods:
                raise RealmFileError(f"{where}.methods[{j}]", f"duplicate of {where}.methods[{methods.index(method)}]")
            if method == ("registrar",) and not keys:
                raise RealmFileError(f"{where}.methods[{j}]", "allows `registrar` but registration.registrar_keys is empty")
            methods.append(method)
        # Listed in any order; the configuration holds them sorted by their encoding.
        rules.append((namespace, sorted(methods, key=encode_method)))
    policy = {"local_part_rule": LOCAL_PART_RULES.index(reg["local_part_rule"]), "registrar_keys": keys,
              "rules": rules, "recovery_window_ms": window}
    try:
        check_policy(policy, replicas, verifiers)
    except PolicyError as e:
        raise RealmFileError(e.field, e.message) from None
    return policy


def parse_realm_file(text):
    """Section 5.3: the realm file, read strictly. Returns (config, client rules)."""
    try:
        f = json.loads(text, object_pairs_hook=no_duplicate_fields, parse_constant=not_json_constant)
    except ValueError as e:
        raise RealmFileError("(file)", f"not JSON: {e}") from None
    if not isinstance(f, dict):
        raise RealmFileError("(file)", "not a JSON object")
    for k in f:
        if (k not in REALM_FILE_REQUIRED and k not in REALM_FILE_OPTIONAL and k != REALM_FILE_REGISTRATION
                and k not in REALM_FILE_VERSIONED and k != REALM_FILE_TLS):
            raise RealmFileError(k, "unknown field")
    for k in REALM_FILE_REQUIRED:
        if k not in f:
            raise RealmFileError(k, "missing field")
    f = {**REALM_FILE_OPTIONAL, **f}
    for k in ("verifier_threshold", "epoch_ttl_ms", "clock_skew_ms", "protocol_version"):
        v = f[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= U64_MAX:
            raise RealmFileError(k, f"expected an integer from 0 to 2^64-1, got {v!r}")
    if f["protocol_version"] not in (1, 2):
        raise RealmFileError("protocol_version", f"{f['protocol_version']}: only versions 1 and 2 exist")
    if f["protocol_version"] == 1 and REALM_FILE_REGISTRATION in f:
        raise RealmFileError("registration", "only under protocol_version 2 (version 1 registers first come, first served)")
    if f["protocol_version"] == 2 and REALM_FILE_REGISTRATION not in f:
        raise RealmFileError("registration", "missing: protocol_version 2 needs the registration policy")
    node_ids, generation = None, 0
    if f["protocol_version"] == 1:
        for k in ("replicas", "generation"):
            if k in f:
                raise RealmFileError(k, "only under protocol_version 2")
        if "replica_keys" not in f:
            raise RealmFileError("replica_keys", "missing field")
    else:
        if "replica_keys" in f:
            raise RealmFileError("replica_keys", "protocol_version 2 lists `replicas` (node id and key) instead")
        if "replicas" not in f:
            raise RealmFileError("replicas", "missing field")
        if not isinstance(f["replicas"], list):
            raise RealmFileError("replicas", "expected a list")
        replicas = [file_object(f"replicas[{i}]", r, ("node_id", "key"), {}) for i, r in enumerate(f["replicas"])]
        node_ids = []
        for i, r in enumerate(replicas):
            n = r["node_id"]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= U64_MAX:
                raise RealmFileError(f"replicas[{i}].node_id", f"expected an integer from 1 to 2^64-1, got {n!r}")
            if n in node_ids:
                raise RealmFileError(f"replicas[{i}].node_id", f"duplicate of replicas[{node_ids.index(n)}].node_id")
            node_ids.append(n)
        f["replica_keys"] = [r["key"] for r in replicas]
        generation = f.get("generation", 0)
        if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation <= U64_MAX:
            raise RealmFileError("generation", f"expected an integer from 0 to 2^64-1, got {generation!r}")
    if REALM_FILE_TLS in f:
        tls = file_object("tls", f[REALM_FILE_TLS], ("ca_pem",), {})
        if not isinstance(tls["ca_pem"], str) or "-----BEGIN CERTIFICATE-----" not in tls["ca_pem"]:
            raise RealmFileError("tls.ca_pem", "expected PEM certificates (-----BEGIN CERTIFICATE----- ...)")
    if not isinstance(f["realm"], str):
        raise RealmFileError("realm", "expected a string")
    for k in ("replica_keys", "verifier_keys", "endpoints"):
        if not isinstance(f[k], list):
            raise RealmFileError(k, "expected a list")
    for i, e in enumerate(f["endpoints"]):
        if not isinstance(e, str):
            raise RealmFileError(f"endpoints[{i}]", "expected a string (host:port)")
        try:
            e.encode("utf-8")
        except UnicodeEncodeError:
            # Python's json reads a lone surrogate escape (\ud800), which is no UTF-8 text.
            raise RealmFileError(f"endpoints[{i}]", "not UTF-8 (a lone surrogate)") from None
    vrf_key = hex_key("vrf_public_key", f["vrf_public_key"])
    lists = {k: file_key_list("replicas" if k == "replica_keys" and node_ids is not None else k, f[k])
             for k in ("replica_keys", "verifier_keys")}
    registration = None
    if f["protocol_version"] == 2:
        registration = file_registration(f[REALM_FILE_REGISTRATION], lists["replica_keys"], lists["verifier_keys"])
    try:
        realm_name(f["realm"].encode("utf-8"))
        config = realm_config(f["realm"], vrf_key, lists["replica_keys"], lists["verifier_keys"], registration,
                              generation, node_ids)
    except PolicyError as e:
        raise RealmFileError(e.field, e.message) from None
    except (Reject, UnicodeEncodeError) as e:
        raise RealmFileError("(realm)", str(e)) from None
    if f["verifier_threshold"] > len(config["verifiers"]):
        raise RealmFileError("verifier_threshold", "exceeds the number of verifier keys")
    rules = {"verifier_threshold": f["verifier_threshold"], "ttl_ms": f["epoch_ttl_ms"], "skew_ms": f["clock_skew_ms"]}
    return config, rules


def parse_head(b):
    r = Reader(b)
    head = {"realm": realm_name(r.var(1, 64)), "epoch": r.u64(), "root": r.take(32), "previous": r.take(32),
            "issue_time_ms": r.u64(), "update_count": r.u64(), "config_hash": r.take(32), "bytes": b}
    r.done()
    # Section 2.7: epochs start at 1, and epoch 1 has no previous head.
    if head["epoch"] == 0:
        raise Reject("head epoch 0: epochs start at 1")
    if head["epoch"] == 1 and head["previous"] != bytes(32):
        raise Reject("head of epoch 1 with a non-zero previous head hash")
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


class named:
    """Prefixes the Reader's own errors ("truncated", "length out of range") with the field
    being read, so a refusal names it."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is Reject and str(e) in ("truncated", "length out of range"):
            raise Reject(f"{self.what}: {e}") from None
        return False


POLICY_KEYS_MAX = 16
POLICY_MEMBERS_MAX = 16
POLICY_DEPTH_MAX = 4
PROFILE_KEYS_MAX = 32


def parse_quorum(r, key_count, depth, used, where):
    """Section 2.2: one Quorum at nesting `depth` (the top level is 1). Adds the key positions
    it references to `used`."""
    if depth > POLICY_DEPTH_MAX:
        raise Reject(f"{where}: quorum nested deeper than {POLICY_DEPTH_MAX}")
    threshold = r.u16()
    n = r.u16()
    if not 1 <= n <= POLICY_MEMBERS_MAX:
        raise Reject(f"{where}: {n} members, must be 1 to {POLICY_MEMBERS_MAX}")
    here = set()
    members = []
    for i in range(n):
        tag = r.u8()
        if tag == 0:
            pos = r.u16()
            if pos >= key_count:
                raise Reject(f"{where}.members[{i}]: key position {pos}, the policy has {key_count} keys")
            if pos in here:
                raise Reject(f"{where}.members[{i}]: key position {pos} appears twice in one expression")
            here.add(pos)
            used.add(pos)
            members.append(pos)
        elif tag == 1:
            members.append(parse_quorum(r, key_count, depth + 1, used, f"{where}.members[{i}]"))
        else:
            raise Reject(f"{where}.members[{i}]: unknown member tag {tag}")
    # Zero would be met by no signature at all; above the member count, never.
    if not 1 <= threshold <= n:
        raise Reject(f"{where}: threshold {threshold}, must be 1 to its {n} members")
    return (threshold, members)


def satisfied(quorum, signed):
    """Section 2.2: whether the signer positions `signed` satisfy a quorum expression."""
    threshold, members = quorum
    met = sum(1 for m in members if (m in signed if isinstance(m, int) else satisfied(m, signed)))
    return met >= threshold


def parse_policy(r, where):
    """Section 2.2: an update policy: 1 to 16 valid keys sorted strictly ascending, and a quorum
    expression that references every key."""
    n = r.u16()
    if not 1 <= n <= POLICY_KEYS_MAX:
        raise Reject(f"{where}.keys: {n} keys, must be 1 to {POLICY_KEYS_MAX}")
    keys = [r.take(32) for _ in range(n)]
    check_key_list(f"{where}.keys", keys)
    used = set()
    quorum = parse_quorum(r, n, 1, used, f"{where}.quorum")
    unused = sorted(set(range(n)) - used)
    if unused:
        raise Reject(f"{where}.keys[{unused[0]}] is not referenced by the quorum expression")
    return {"keys": keys, "quorum": quorum}


def parse_entry(b):
    """Section 2.4: the Entry's canonical bytes (at most 2048)."""
    if not 1 <= len(b) <= 2048:
        raise Reject(f"entry: {len(b)} bytes, must be 1 to 2048")
    r = Reader(b)
    with named("entry"):
        entry = {"index": r.take(32), "version": r.u64(), "profile_commitment": r.take(32)}
        entry["update_policy"] = parse_policy(r, "entry update_policy")
    if r.i != len(b):
        raise Reject(f"entry: {len(b) - r.i} trailing bytes")
    return entry


def parse_profile(b):
    """Section 2.3: the Profile's canonical bytes (at most 16384)."""
    if not 1 <= len(b) <= 16384:
        raise Reject(f"profile: {len(b)} bytes, must be 1 to 16384")
    r = Reader(b)
    with named("profile nonce"):
        nonce = r.var(16, 64)
    with named("profile keys"):
        n = r.u16()
    if n > PROFILE_KEYS_MAX:
        raise Reject(f"profile keys: {n}, at most {PROFILE_KEYS_MAX}")
    keys = []
    for i in range(n):
        with named(f"profile keys[{i}] app id"):
            app = r.var(1, 64)
        if any(not 0x21 <= c <= 0x7e for c in app):
            raise Reject(f"profile keys[{i}]: app id is not printable ASCII (0x21 to 0x7e)")
        if keys and keys[-1][0] >= app:
            raise Reject(f"profile keys[{i}]: app ids must be sorted strictly ascending; {app!r} is not after {keys[-1][0]!r}")
        with named(f"profile keys[{i}] key"):
            keys.append((app, r.var(1, 4096)))
    if r.i != len(b):
        raise Reject(f"profile: {len(b) - r.i} trailing bytes")
    return {"nonce": nonce, "keys": keys}


UPDATE_SIGNATURES_MAX = 32
PENDING_RECOVERY_BYTES_MAX = 2 + 2048 + 2 + UPDATE_SIGNATURES_MAX * 96 + 16


def parse_pending_recovery(b):
    """Section 6.3: PendingRecovery = SignedEntry || u64 requested_epoch || u64 effective_ms,
    SignedEntry = bytes<1..2048> Entry || list<[32] signer || [64] signature> (at most 32,
    sorted strictly by signer, each a valid key)."""
    r = Reader(b)
    with named("pending recovery entry"):
        entry = r.var(1, 2048)
    fields = parse_entry(entry)
    with named("pending recovery signatures"):
        n = r.u16()
        if n > UPDATE_SIGNATURES_MAX:
            raise Reject(f"pending recovery signatures: {n}, at most {UPDATE_SIGNATURES_MAX}")
        signatures = [(r.take(32), r.take(64)) for _ in range(n)]
    for i, (signer, _) in enumerate(signatures):
        if not valid_key(signer):
            raise Reject(f"pending recovery signatures[{i}]: not a valid Ed25519 public key")
        if i and signatures[i - 1][0] >= signer:
            raise Reject(f"pending recovery signatures[{i}]: signers not sorted strictly ascending")
    with named("pending recovery times"):
        requested, effective = r.u64(), r.u64()
    if requested == 0:
        raise Reject("pending recovery requested in epoch 0: epochs start at 1")
    r.done()
    return {"entry": entry, "entry_fields": fields, "signatures": signatures, "requested_epoch": requested,
            "effective_ms": effective, "bytes": b}


def check_recovery(config, current, pending):
    """Section 6.3, rules 1 to 5: the pending recovery's signed entry against the entry it would
    replace. Returns the refusal, or None."""
    window = (config["registration"] or {}).get("recovery_window_ms", 0)
    if not window:
        return "the realm allows no recovery"
    new = pending["entry_fields"]
    if new["version"] != current["version"] + 1:
        return f"version {new['version']}, not the current version {current['version']} plus one"
    if new["index"] != current["index"]:
        return "the recovery's entry is at another index"
    realm = config["realm"].encode()
    message = framed("keyraft/v1/entry-update") + len(realm).to_bytes(2, "big") + realm + pending["entry"]
    keys = new["update_policy"]["keys"]
    signed = set()
    for signer, signature in pending["signatures"]:
        if signer not in keys:
            return "a signer is not a key of the new policy"
        if not ed25519_verify(signer, message, signature):
            return "a signature does not verify"
        signed.add(keys.index(signer))
    if not satisfied(new["update_policy"]["quorum"], signed):
        return "the signatures do not satisfy the new policy"
    return None


def parse_proof(b):
    """Section 5: the LookupProof structure (step 0, check "decode")."""
    if len(b) > 36864:
        raise Reject("lookup proof over 36864 bytes")
    r = Reader(b)
    proof = {"user_id": user_id_text(r.var(1, 256)), "pi": r.take(80), "head": parse_head(r.var(1, 512)),
             "replica_sigs": parse_positional(r, 9), "verifier_sigs": parse_positional(r, 32)}
    proof["terminal"], proof["siblings"] = parse_tree_proof(r)
    present = r.u8()
    proof["entry"] = proof["profile"] = None
    if present == 1:
        # Decoded here, at step 0, like every other part: bytes that hash to a signed leaf are
        # still refused if they are not the one encoding of an entry (section 5.1, step 0).
        proof["entry"], proof["profile"] = r.var(1, 2048), r.var(1, 16384)
        proof["entry_fields"], proof["profile_fields"] = parse_entry(proof["entry"]), parse_profile(proof["profile"])
    elif present != 0:
        raise Reject("bad presence byte")
    # Section 5: a pending recovery, only while one is pending: absent is no byte at all.
    proof["pending"] = None
    if r.i != len(b):
        if r.u8() != 1:
            raise Reject("pending recovery presence byte must be 1")
        if proof["entry"] is None:
            raise Reject("a pending recovery without an entry")
        with named("pending recovery"):
            proof["pending"] = parse_pending_recovery(r.var(1, PENDING_RECOVERY_BYTES_MAX))
    r.done()
    return proof


def verify(config, proof_bytes, user_id, now_ms, threshold, ttl_ms, skew_ms, last_seen, past_epoch=None):
    """Section 5.1 as the current answer at now_ms, or (past_epoch set) section 5.2's
    statement about a past epoch. Raises Failed naming the check; returns what it proved."""
    p = checked("decode", parse_proof, proof_bytes)
    head = p["head"]
    if p["user_id"] != user_id:
        raise Failed("user_id", "proof is about another user id")
    # Realm (before the VRF: a proof from another realm fails here, named as such).
    if head["realm"] != config["realm"] or head["config_hash"] != config["hash"]:
        raise Failed("realm", f"the proof is for a different realm: realm {head['realm']!r} (config hash "
                     f"{head['config_hash'][:8].hex()}), expected {config['realm']!r} (config hash {config['hash'][:8].hex()})")
    # A past epoch's proof is of that epoch (after the realm: another realm's epochs are not this one's).
    if past_epoch is not None and head["epoch"] != past_epoch:
        raise Failed("epoch", f"proof is of epoch {head['epoch']}, not the epoch {past_epoch} asked for")
    # VRF.
    realm = config["realm"].encode()
    alpha = framed("keyraft/v1/vrf-index") + len(realm).to_bytes(2, "big") + realm + user_id.encode()
    index = checked("vrf", vrf_verify, config["vrf"], alpha, p["pi"])[:32]
    # Freshness (the current answer only).
    if past_epoch is None and (head["issue_time_ms"] + ttl_ms < now_ms or head["issue_time_ms"] > now_ms + skew_ms):
        raise Failed("freshness", "head too old or from the future")
    # Quorum.
    head_msg = framed("keyraft/v1/epoch-head") + head["bytes"]
    for pos, sig in p["replica_sigs"]:
        if pos >= len(config["replicas"]) or not ed25519_verify(config["replicas"][pos], head_msg, sig):
            raise Failed("quorum", "bad replica signature")
    if len(p["replica_sigs"]) < len(config["replicas"]) // 2 + 1:
        raise Failed("quorum", "no replica majority")
    rat_msg = framed("keyraft/v1/verifier-ratification") + head["bytes"]
    for pos, sig in p["verifier_sigs"]:
        if pos >= len(config["verifiers"]) or not ed25519_verify(config["verifiers"][pos], rat_msg, sig):
            raise Failed("quorum", "bad verifier signature")
    if len(p["verifier_sigs"]) < threshold:
        raise Failed("quorum", "too few verifier ratifications")
    # Tree.
    root, value = checked("tree", tree_root, p["terminal"], p["siblings"], index)
    if root != head["root"]:
        raise Failed("tree", "tree proof does not lead to the signed root")
    # Entry and profile.
    entry, profile = p["entry"], p["profile"]
    if (value is None) != (entry is None):
        raise Failed("entry", "entry presence does not match the tree")
    if entry is not None:
        fields = p["entry_fields"]
        pending = p["pending"]
        # Section 4: with a pending recovery the leaf commits to the entry and to it.
        leaf = (hl("keyraft/v1/entry", entry) if pending is None
                else hl("keyraft/v2/entry-pending-recovery", entry, pending["bytes"]))
        if leaf != value or fields["index"] != index:
            raise Failed("entry", "entry does not match the leaf")
        if hl("keyraft/v1/profile-commitment", profile) != fields["profile_commitment"]:
            raise Failed("profile", "profile does not match the commitment")
        if pending is not None:
            why = check_recovery(config, fields, pending)
            if why is None and pending["requested_epoch"] > head["epoch"]:
                why = "requested after the proof's epoch"
            if why is None and pending["requested_epoch"] == head["epoch"]:
                expected = min(head["issue_time_ms"] + config["registration"]["recovery_window_ms"], U64_MAX)
                if pending["effective_ms"] != expected:
                    why = "its effective time is not its epoch's issue time plus the window"
            if why is None and head["epoch"] > pending["requested_epoch"] and \
                    head["issue_time_ms"] >= pending["effective_ms"]:
                why = "its window ended before this head: it should be the entry"
            if why is not None:
                raise Failed("recovery", f"pending recovery: {why}")
    # Rollback (the current answer only).
    if past_epoch is None and last_seen is not None and head["epoch"] < last_seen:
        raise Failed("rollback", f"epoch {head['epoch']} is older than epoch {last_seen} already seen")
    version = p["entry_fields"]["version"] if entry is not None else None
    return {"epoch": head["epoch"], "present": entry is not None, "index": index, "version": version,
            "verifiers": len(p["verifier_sigs"]), "pending_recovery": p["pending"]}


def verify_history(config, user_id, threshold, current, versions):
    """Section 8.1: a whole History listing, from its first page (whose `current` proof is
    `current`) to its last, as the versions' proofs newest first. Raises Failed("history", ...)
    or the failing check of a proof; returns (versions listed, whether completeness was proven,
    versions below the verifier threshold)."""
    own_epoch = lambda b: checked("decode", parse_proof, b)["head"]["epoch"]  # noqa: E731
    # Step 4's proof, with the verifier threshold.
    cur = verify(config, current, user_id, None, threshold, None, None, None, own_epoch(current))
    listed, below = [], []
    for b in versions:
        # Step 1: each at its epoch, the threshold counted, not required.
        out = verify(config, b, user_id, None, 0, None, None, None, own_epoch(b))
        if not out["present"]:
            raise Failed("history", f"the version proof of epoch {out['epoch']} shows no entry")
        if out["verifiers"] < threshold:
            below.append(out["version"])
        listed.append(out)
    v2 = config["protocol_version"] == 2
    for newer, older in zip(listed, listed[1:]):
        # Step 2: newest first.
        if older["version"] >= newer["version"] or older["epoch"] >= newer["epoch"]:
            raise Failed("history", f"not newest-first: version {older['version']} (epoch {older['epoch']}) "
                         f"follows version {newer['version']} (epoch {newer['epoch']})")
        # Step 3: rule 1 of section 6 between neighbours.
        if v2 and newer["version"] != older["version"] + 1:
            raise Failed("history", f"versions {older['version'] + 1} to {newer['version'] - 1} were left out")
    # Step 4: the newest listed is the current one.
    if cur["present"]:
        if not listed or listed[0]["version"] != cur["version"] or listed[0]["epoch"] > cur["epoch"]:
            raise Failed("history", f"the current version at epoch {cur['epoch']} is {cur['version']}, "
                         f"the listing starts at {listed[0]['version'] if listed else 'nothing'}")
    elif listed:
        raise Failed("history", f"the identity is absent at epoch {cur['epoch']}, yet versions are listed")
    # Step 5: the oldest is a registration.
    if v2 and listed and listed[-1]["version"] != 0:
        raise Failed("history", f"the listing ends at version {listed[-1]['version']}, not 0: older versions were left out")
    return [o["version"] for o in listed], v2, below


def run_vectors(path):
    """Checks every vector of a docs/vectors file; prints one line each; True if all agree."""
    doc = json.load(open(path))
    agree = True
    configs = {}
    for name, realm_file in doc["realm_files"].items():
        config, _ = parse_realm_file(json.dumps(realm_file))
        if config["bytes"].hex() != doc["realm_configs"][name]["hex"]:
            print(f"REALM-FILE {name}: its RealmConfig differs from realm_configs[{name!r}]")
            agree = False
        configs[name] = config
    for v in doc.get("realm_files_refused", []):
        try:
            parse_realm_file(v["json"])
            got, line = None, "accept"
        except RealmFileError as e:
            got, line = e.field, f"reject {e.field}: {e.message}"
        print(f"REALM-FILE {v['name']}: {line}")
        agree &= got == v["field"]
    for v in doc["vectors"]:
        past = v["past_epoch"] if v["mode"] == "past" else None
        try:
            out = verify(configs[v["realm_file"]], bytes.fromhex(v["proof"]), v["user_id"], v.get("now_ms"),
                         v["verifier_threshold"], v.get("epoch_ttl_ms"), v.get("clock_skew_ms"),
                         v.get("rollback_floor"), past)
            present = "present" if out["present"] else "absent"
            print(f"VECTOR {v['name']}: accept epoch {out['epoch']} {present} index {out['index'].hex()}")
            pending = out["pending_recovery"]
            pending_version = pending["entry_fields"]["version"] if pending is not None else None
            agree &= (v["expected"] == "accept" and out["epoch"] == v["epoch"] and out["present"] == v["present"]
                      and out["index"].hex() == v["index"] and out["version"] == v.get("version")
                      and pending_version == v.get("pending_recovery_version"))
        except Failed as e:
            print(f"VECTOR {v['name']}: reject {e.check}: {e}")
            agree &= v["expected"] == "reject" and v["check"] == e.check
    return agree


def check_realm_vectors(path):
    """--check-realm-vectors: every realm file of docs/vectors/realm-config-v2.json gives the
    file's RealmConfig bytes and hash (and those bytes decode to the same configuration), and
    every refused realm file is refused naming the file's field. One line each; True if all agree."""
    doc = json.load(open(path))
    agree = True
    for v in doc["realm_files"]:
        try:
            config, _ = parse_realm_file(json.dumps(v["realm_file"]))
            decoded = parse_realm_config(config["bytes"])
        except (RealmFileError, Reject) as e:
            print(f"REALM-CONFIG {v['name']}: reject {e}")
            agree = False
            continue
        same = (config["bytes"].hex() == v["config_hex"] and config["hash"].hex() == v["config_hash"]
                and decoded["hash"] == config["hash"] and config["protocol_version"] == v["protocol_version"])
        print(f"REALM-CONFIG {v['name']}: accept version {config['protocol_version']} hash {config['hash'].hex()}"
              + ("" if same else f" DIFFERS from the file's {v['config_hash']}"))
        agree &= same
    for v in doc["realm_files_refused"]:
        try:
            parse_realm_file(v["json"])
            got, line = None, "accept"
        except RealmFileError as e:
            got, line = e.field, f"reject {e.field}: {e.message}"
        print(f"REALM-FILE {v['name']}: {line}")
        agree &= got == v["field"]
    return agree


def read_realm_files(texts):
    """--read-realm-files: one line per realm file text, "accept <RealmConfig hex>" or
    "reject <field>: <why>", so the test suite can hold this reader against keyraft-core's."""
    for text in texts:
        try:
            config, _ = parse_realm_file(text)
            print(f"accept {config['bytes'].hex()}")
        except RealmFileError as e:
            print(f"reject {e.field}: {e.message}")
    return 0


def decode_only(decoder, hexes):
    """--decode-entry / --decode-profile: one line per argument, "accept" or "reject: <why>",
    so the test suite can hold these decoders against keyraft-core's on the same bytes."""
    for h in hexes:
        try:
            decoder(bytes.fromhex(h))
            print("accept")
        except Reject as e:
            print(f"reject: {e}")
    return 0


def read_realm(path):
    """A realm file, or the hex of a canonical RealmConfig with default client rules."""
    text = open(path).read()
    if text.lstrip().startswith("{"):
        return parse_realm_file(text)
    return parse_realm_config(bytes.fromhex(text.strip())), {"verifier_threshold": 0, "ttl_ms": 60_000, "skew_ms": 5_000}


def history_main(realm_path, user_id, current_file, version_files):
    """--history: section 8.1 over saved proofs (`keyraft history --all --save-proofs DIR`)."""
    try:
        config, rules = read_realm(realm_path)
    except (RealmFileError, Reject) as e:
        print(f"REALM REFUSED: {e}")
        return 2
    read = lambda f: open(f, "rb").read()  # noqa: E731
    try:
        listed, complete, below = verify_history(config, user_id, rules["verifier_threshold"], read(current_file),
                                                 [read(f) for f in version_files])
    except Failed as e:
        print(f"REJECTED ({e.check}): {e}")
        return 1
    span = f"versions {listed[0]} to {listed[-1]}" if listed else "no versions"
    how = "complete, none left out" if complete else "in order (protocol version 1: gaps cannot be told from omissions)"
    flag = f"; below the verifier threshold: {below}" if below else ""
    print(f"OK history of {user_id}: {span}, {how}{flag}")
    return 0


def main():
    decoders = {"--decode-entry": parse_entry, "--decode-profile": parse_profile,
                "--decode-realm-config": parse_realm_config}
    if len(sys.argv) >= 2 and sys.argv[1] in decoders:
        return decode_only(decoders[sys.argv[1]], sys.argv[2:])
    if len(sys.argv) >= 2 and sys.argv[1] == "--read-realm-files":
        return read_realm_files(sys.argv[2:])
    if len(sys.argv) == 3 and sys.argv[1] == "--check-realm-vectors":
        agree = check_realm_vectors(sys.argv[2])
        print("all realm vectors agree" if agree else "DISAGREEMENT with the expected realm configurations")
        return 0 if agree else 1
    if len(sys.argv) == 3 and sys.argv[1] == "--ed25519-vectors":
        return check_ed25519_vectors(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--vectors":
        agree = run_vectors(sys.argv[2])
        print("all vectors agree" if agree else "DISAGREEMENT with the expected verdicts")
        return 0 if agree else 1
    if len(sys.argv) >= 5 and sys.argv[1] == "--history":
        return history_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("realm")
    ap.add_argument("proof_file")
    ap.add_argument("user_id")
    ap.add_argument("now_ms", type=int)
    ap.add_argument("--verifier-threshold", type=int)
    ap.add_argument("--ttl-ms", type=int)
    ap.add_argument("--skew-ms", type=int)
    ap.add_argument("--last-seen-epoch", type=int)
    ap.add_argument("--past", type=int, metavar="EPOCH")
    ap.add_argument("--config-chain", metavar="FILE",
                    help="SignedConfigChange hex, one per line, oldest first (section 2.8): followed from the realm's "
                         "configuration; the proof is checked with the configuration its head commits to")
    a = ap.parse_args()
    text = open(a.realm).read()
    try:
        if text.lstrip().startswith("{"):
            config, rules = parse_realm_file(text)
        else:
            config = parse_realm_config(bytes.fromhex(text.strip()))
            rules = {"verifier_threshold": 0, "ttl_ms": 60_000, "skew_ms": 5_000}
    except (RealmFileError, Reject) as e:
        print(f"REALM REFUSED: {e}")
        return 2
    proof = open(a.proof_file, "rb").read()
    if a.config_chain:
        lines = [ln.strip() for ln in open(a.config_chain).read().splitlines() if ln.strip()]
        try:
            configs = follow_chain(config, [bytes.fromhex(ln) for ln in lines])
        except (Reject, ValueError) as e:
            print(f"CHAIN REFUSED: {e}")
            return 2
        # The configuration of the proof's epoch: the one its head commits to (if the proof
        # does not even decode, the newest, and the decode check names the fault).
        try:
            wanted = parse_proof(proof)["head"]["config_hash"]
        except Reject:
            wanted = configs[-1]["hash"]
        config = next((c for c in reversed(configs) if c["hash"] == wanted), configs[-1])
    pick = lambda given, key: rules[key] if given is None else given  # noqa: E731
    try:
        out = verify(config, proof, a.user_id, a.now_ms, pick(a.verifier_threshold, "verifier_threshold"),
                     pick(a.ttl_ms, "ttl_ms"), pick(a.skew_ms, "skew_ms"), a.last_seen_epoch, a.past)
    except Failed as e:
        print(f"REJECTED ({e.check}): {e}")
        return 1
    print(f"OK epoch {out['epoch']}: {a.user_id} is {'present' if out['present'] else 'absent'}")
    pending = out["pending_recovery"]
    if pending is not None:
        print(f"RECOVERY PENDING: version {pending['entry_fields']['version']} requested in epoch "
              f"{pending['requested_epoch']}, takes effect at {pending['effective_ms']} ms unless vetoed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
