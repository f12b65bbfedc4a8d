"""The key behind metadata pseudonyms, kept outside the incident store (issue 20, item 7).

A pseudonym is `anon:<key id>:<16 hex of HMAC-SHA256(key, value)>`. Whoever holds the key and a
candidate value (an e-mail address) can recompute the pseudonym, so a key stored next to the
pseudonyms (an older probewatch kept it in the database's `store_meta` table) undoes them for
anyone who copies the database or a backup of it. The key lives in a file instead
(`--pseudonym-key-file` / `PROBEWATCH_PSEUDONYM_KEY_FILE`, a Kubernetes Secret mounted as a file):

    # comments and blank lines are ignored
    <64+ hex characters>   <- the current key: makes every new pseudonym
    <64+ hex characters>   <- older keys: no longer used, kept so that a pseudonym made before a
                              rotation can still be recomputed (`probewatch incidents pseudonym`)

The key id (8 hex of a hash of the key; it reveals nothing about the key) is part of every
pseudonym, so a reviewer sees which key made it. `probewatch incidents rotate-key` puts a new key
first; `probewatch incidents move-key` moves a key an older probewatch kept in the database into the
file. Without a key file a local store gets one created next to it (0600), never inside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from probewatch.server.store.location import StoreLocation
from probewatch.server.store.records import IncidentStoreError

log = logging.getLogger(__name__)

KEY_BYTES = 32
_HEX = re.compile(r"[0-9a-fA-F]{64,}")
_HINT = "one key per line, 64+ hex characters (`openssl rand -hex 32`); docs/deploy.md, 'Private data'"


class PseudonymKeyError(IncidentStoreError):
    """The pseudonym key file is missing, unreadable or holds something that is not a key."""


def key_id(key: bytes) -> str:
    """A short public name for `key` (a one-way hash: it does not help anyone recover the key)."""
    return hashlib.sha256(b"probewatch pseudonym key id\0" + key).hexdigest()[:8]


def pseudonym(key: bytes, value: str) -> str:
    """`anon:<key id>:<16 hex>`: the same value and key give the same pseudonym in every process."""
    digest = hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]
    return f"anon:{key_id(key)}:{digest}"


@dataclass(frozen=True)
class KeyRing:
    """The keys of a key file, current first."""

    keys: tuple[bytes, ...]
    path: Path | None = None

    @property
    def current(self) -> bytes:
        return self.keys[0]

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]


def read_key_file(path: Path) -> KeyRing:
    """The keys in `path`; a precise PseudonymKeyError when it is missing, unreadable or malformed."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise PseudonymKeyError(
            f"pseudonym key file {path} does not exist (create it with `probewatch incidents rotate-key "
            f"--key-file {path}`, or {_HINT})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PseudonymKeyError(f"cannot read the pseudonym key file {path}: {exc}") from None
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _HEX.fullmatch(line) or len(line) % 2:
            raise PseudonymKeyError(f"pseudonym key file {path}, line {number}: not a key ({_HINT})")
        keys.append(bytes.fromhex(line))
    if not keys:
        raise PseudonymKeyError(f"pseudonym key file {path} holds no key ({_HINT})")
    if stat.S_IMODE(path.stat().st_mode) & 0o007:
        log.warning("pseudonym key file %s is readable by every user on this machine: chmod 600 it", path)
    return KeyRing(tuple(keys), path)


def write_key_file(path: Path, keys: list[bytes], note: str = "", exclusive: bool = False) -> bool:
    """Write `keys` (current first) to `path` atomically, mode 0600 (a 0700 folder when it makes one).

    `exclusive`: only when `path` is not there yet (False returned: another process made it first;
    two replicas starting at once then share the winner's key)."""
    try:
        return _write(path, keys, note, exclusive)
    except OSError as exc:  # a read-only Secret mount, a missing permission: say which file
        raise PseudonymKeyError(f"cannot write the pseudonym key file {path}: {exc}") from None


def _write(path: Path, keys: list[bytes], note: str, exclusive: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# probewatch pseudonym keys (docs/deploy.md, 'Private data'). The first key makes new pseudonyms;",
        "# the ones below it made older pseudonyms (anon:<key id>:...) and are kept to recompute them.",
        f"# written {now}{(': ' + note) if note else ''}",
    ]
    lines += [k.hex() for k in keys]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails when the file exists: no replica overwrites another's key
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def rotate_key_file(path: Path) -> KeyRing:
    """Put a new random key first in `path` (creating it), keeping the older keys below it."""
    old = list(read_key_file(path).keys) if path.exists() else []
    new = secrets.token_bytes(KEY_BYTES)
    write_key_file(path, [new, *old], note=f"rotated to {key_id(new)}")
    return KeyRing((new, *old), path)


def add_older_key(path: Path, key: bytes) -> KeyRing:
    """`key` in `path`: as the current key of a new file, or below the keys of an existing one."""
    if not path.exists():
        write_key_file(path, [key], note=f"moved {key_id(key)} out of the incident store")
        return KeyRing((key,), path)
    ring = read_key_file(path)
    if key in ring.keys:
        return ring
    keys = [*ring.keys, key]
    write_key_file(path, keys, note=f"added {key_id(key)} (moved out of the incident store)")
    return KeyRing(tuple(keys), path)


def ensure_key_file(path: Path) -> tuple[KeyRing, bool]:
    """The keys in `path`, creating it with one random key first when it is not there (True: created)."""
    if path.exists():
        return read_key_file(path), False
    key = secrets.token_bytes(KEY_BYTES)
    if not write_key_file(path, [key], note="created", exclusive=True):
        return read_key_file(path), False
    return KeyRing((key,), path), True


def default_key_file(location: StoreLocation) -> Path:
    """Where a store given no key file keeps its key: next to a SQLite file, else in PROBEWATCH_HOME."""
    if location.path is not None:
        return location.path.with_name(location.path.name + ".pseudonym-keys")
    from probewatch import envs

    return envs.home() / "pseudonym-keys"


def store_key(location: StoreLocation, key_file: Path | None, legacy: bytes | None) -> bytes:
    """The key a writer of the store at `location` makes pseudonyms with.

    `key_file`: the operator's file (wins). `legacy`: the key an older probewatch kept in the
    database, used (with a warning) when no key file is given, so existing pseudonyms stay stable
    until it is moved out. Otherwise the default key file, created on first use."""
    move = f"probewatch incidents move-key --db {location.display} --key-file KEYFILE"
    if key_file is not None:
        ring = read_key_file(key_file)
        if legacy is not None and key_id(legacy) not in ring.ids:
            log.warning(
                "the incident store %s still holds the pseudonym key %s an older probewatch kept in it "
                "(its older rows' pseudonyms); move it into the key file and out of the database: %s",
                location.display,
                key_id(legacy),
                move.replace("KEYFILE", str(key_file)),
            )
        return ring.current
    if legacy is not None:
        log.warning(
            "the pseudonym key (id %s) is read from the incident store %s itself, next to the pseudonyms it "
            "protects: move it out (%s) and pass --pseudonym-key-file",
            key_id(legacy),
            location.display,
            move.replace("KEYFILE", str(default_key_file(location))),
        )
        return legacy
    path = default_key_file(location)
    ring, created = ensure_key_file(path)
    if created:
        fleet = "" if location.path is not None else "; every replica sharing this database needs the same file"
        log.warning(
            "created pseudonym key file %s (0600, outside the incident store; key id %s): keep it, and pass "
            "--pseudonym-key-file to choose where it lives%s",
            path,
            ring.ids[0],
            fleet,
        )
    return ring.current
