"""Write the seed corpus of every fuzz target into ``fuzz/corpus/TARGET/`` (valid
transcripts, messages and a few hostile frames). Idempotent: file names are the
content's hash. ``make fuzz`` grows the corpus from these."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import msgpack

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support import fuzzing  # noqa: E402

from peerlink import protocol as p  # noqa: E402


def frames() -> list[bytes]:
    valid = fuzzing.transcript()
    messages = [
        [p.SEND, "t", {"user": "ana", "n": [1, 2.5, None, True, b"\x00"]}],
        [p.CALL, 7, "echo", ["a", {"b": -1}]],
        [p.REPLY, 7, True, "ok"],
        [p.REPLY, 8, False, ["LookupError", "no handler"]],
        [p.PING],
        [p.GOODBYE, "shutdown"],
        [p.REFUSE, "incompatible_version", [1, 1]],
        [p.REFUSE, "wrong_cluster", "c"],
    ]
    out = [*valid, b"".join(valid)]
    out += [p.encode_frame(m) for m in messages]
    out.append(p.encode_frame(*messages))
    # a few hostile shapes: array keys, an ext type, nesting, lying headers
    out.append(b"\x00\x00\x00\x06" + msgpack.packb([p.SEND, "t", {(1,): 1}]))
    out.append(b"\x00\x00\x00\x04\xd4\x05\x00\x00")
    out.append(b"\x00\x00\x00\x10" + b"\x91" * 15 + b"\xc0")
    out.append(b"\xff\xff\xff\xff")
    return out


def main() -> None:
    seeds = {
        "decoder_preauth": [b"\x07" + f for f in frames()],
        "decoder_auth": [b"\x07" + f for f in frames()],
        "handshake": [bytes([mode]) + f for mode in (0, 1, 2, 3, 5) for f in frames()[:6]],
        "tamper": [bytes([i, 0, j, 0x41, 16]) for i in range(5) for j in (0, 4, 5, 20)],
    }
    for target, inputs in seeds.items():
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (folder / ("seed-" + hashlib.sha1(data).hexdigest())).write_bytes(data)
        print(f"{target}: {len(inputs)} seeds in {folder}")


if __name__ == "__main__":
    main()
