"""A seeded fuzzer of gRPC requests, driven by the messages' descriptors.

Three kinds of request for a method: a random message of its request type (every field
drawn by its type, nested messages, repeated and map fields, oneofs), a valid request
with one to three fields replaced or cleared, and raw bytes (random, or a valid request's
serialization with bytes flipped, inserted or cut), which the server must refuse as
undecodable. Values are drawn from boundary numbers, strings that mean something to the
server (names, states, ids, JSON) and random or very long text.
"""

from __future__ import annotations

import math
import random
import string
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf.message import Message

LONG = 20_000
"""Length of the longest strings sent (a 20 kB id once overflowed the trailer)."""

INT_BOUNDS = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1e-5, 2e-5, 1e-300, 5e-324, 1e308, -1e308,
          math.inf, -math.inf, math.nan, 100.0, 1e6, 0.999999, 1e-12]
JSON_TEXTS = [
    "{}", "[]", "null", "1e999", '{"width": 1e999}', '{"width": -1}', '{"width": 0}',
    '{"blocks": 100000000}', '{"hidden_sizes": [1e999]}', '{"vocab_size": 10000000000000}',
    "[" * 5000 + "]" * 5000, '{"a": ' * 2000 + "1" + "}" * 2000,
    '{"x": ' + "9" * 5000 + "}", '{"layers": "abc"}', '{"layers": [1, 2]}', '{"layers": [[]]}',
    '{"layers": [{"type": "Linear", "args": [10, 2], "kwargs": {"device": "cuda"}}]}',
    '{"layers": [{"type": "Linear", "args": [10, 2], "kwargs": {"dtype": "float64"}}]}',
    '{"layers": [{"type": "Linear", "args": [1e999, 2]}]}',
    '{"layers": [{"type": "Conv2d", "args": [1, 1, 1], "kwargs": {"padding": 1000000}}]}',
    '{"layers": [{"type": "AdaptiveAvgPool2d", "args": [100000]}, {"type": "Flatten"}]}',
    '{"layers": [{"type": "Embedding", "args": [10, 2], "kwargs": {"sparse": true}}]}',
    '{"layers": [{"type": "Identity", "args": [1, 2, 3]}]}',
    '{"layers": [{"type": "Linear", "args": [106, 2]}], "forward": ["layer0", "nope"]}',
    '{"layers": [{"name": "forward", "type": "Flatten"}]}', '{"layers": [{"type": "Linear"}]}',
    '{"layers": [{"type": "MaxPool2d", "args": [2], "kwargs": {"return_indices": true}}]}',
    '{"layers": [{"type": "LayerNorm", "args": [[1, 2, 3, 4, 5, 6, 7, 8, 9]]}]}',
    "NaN", "Infinity", '{"a": NaN}', '"\\ud800"', '{"a": "\\u0000"}', "\xff",
]


class Fuzzer:
    """Draws values, messages and byte strings from one seeded generator.

    Parameters
    ----------
    seed : int
    strings : sequence of str
        Strings worth trying besides random ones (ids, names, states the server knows).
    """

    def __init__(self, seed: int, strings: Sequence[str] = ()) -> None:
        self.rng = random.Random(seed)
        self.strings = [*strings, *JSON_TEXTS, "", " ", "a", "0", "-1", "é", "\u2603" * 3,
                        "\U0001f600", "\x00", "a\x00b", "../../etc/passwd", "%s%n%x", "' OR 1=1 --",
                        "FIRING", "RESOLVED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED",
                        "CANCELLED", "auto", "cpu", "cuda", "prv", "rdp", "gdp", "sgd", "adam",
                        "mlp", "cnn", "resnet", "lstm_text", "sequential", "logistic_regression",
                        "income", "age", "sex", "split", "train", "test", "label", "dp", "none",
                        "exponential", "step", "cosine", "per_layer", "adaptive", "bf16", "fp32",
                        "every_epoch", "final", "0x1f", "ff" * 30, str(uuid.uuid4()), "x" * 65,
                        "1e999", "-0", "0.0"]

    # ------------------------------------------------------------------ scalars
    def text(self) -> str:
        roll = self.rng.random()
        if roll < 0.55:
            return self.rng.choice(self.strings)
        if roll < 0.75:
            size = self.rng.randint(0, 40)
            return "".join(self.rng.choice(string.printable) for _ in range(size))
        if roll < 0.85:
            return "".join(chr(self.rng.choice([self.rng.randint(0x20, 0xD7FF),
                                                 self.rng.randint(0xE000, 0x10FFFF)]))
                           for _ in range(self.rng.randint(1, 20)))
        if roll < 0.95:
            return self.rng.choice(["x", "7", "[", "é", "a-"]) * self.rng.choice([100, 300, LONG])
        return str(uuid.uuid4())

    def blob(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.3:
            return b""
        if roll < 0.6:
            return self.rng.randbytes(32)
        if roll < 0.9:
            return self.rng.randbytes(self.rng.randint(1, 80))
        return self.rng.choice([bytes(32), b"\xff" * 32, self.rng.randbytes(LONG)])

    def integer(self, kind: int) -> int:
        low, high = INT_BOUNDS[kind]
        picks = [v for v in (0, 1, -1, 2, 7, 64, 1000, 10**6, 2**31 - 1, -(2**31), 2**32 - 1,
                             2**53, 2**63 - 1, -(2**63), 2**64 - 1) if low <= v <= high]
        return self.rng.choice(picks) if self.rng.random() < 0.7 else self.rng.randint(low, high)

    def number(self) -> float:
        return self.rng.choice(FLOATS) if self.rng.random() < 0.7 else self.rng.uniform(-1e6, 1e6)

    # ------------------------------------------------------------------ messages
    def value(self, field: d.FieldDescriptor, depth: int) -> Any:
        """A random value for one (non-repeated) field; None for a message field past depth."""
        if field.type == d.FieldDescriptor.TYPE_STRING:
            return self.text()
        if field.type == d.FieldDescriptor.TYPE_BYTES:
            return self.blob()
        if field.type == d.FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if field.type in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
            value = self.number()
            return value if field.type == d.FieldDescriptor.TYPE_DOUBLE or abs(value) < 3e38 \
                or not math.isfinite(value) else 1.0
        if field.type == d.FieldDescriptor.TYPE_ENUM:
            return self.rng.choice([v.number for v in field.enum_type.values] + [12345])
        if field.type in INT_BOUNDS:
            return self.integer(field.type)
        raise AssertionError(f"unhandled field type {field.type}")

    def fill(self, message: Message, depth: int = 0, share: float = 0.6) -> Message:
        """Set a random share of ``message``'s fields to random values (recursively)."""
        for field in message.DESCRIPTOR.fields:
            if self.rng.random() > share:
                continue
            self.set_random(message, field, depth)
        return message

    def set_random(self, message: Message, field: d.FieldDescriptor, depth: int) -> None:
        """Replace one field of ``message`` by a random value (or clear it)."""
        if self.rng.random() < 0.1:
            message.ClearField(field.name)
            return
        is_map = (field.message_type is not None
                  and field.message_type.GetOptions().map_entry)
        if is_map:
            target = getattr(message, field.name)
            target.clear()
            entry = field.message_type.fields_by_name
            key_f, value_f = entry["key"], entry["value"]
            for _ in range(self.rng.randint(0, 3)):
                target[self.value(key_f, depth)] = self.value(value_f, depth)
            return
        if field.is_repeated:
            target = getattr(message, field.name)
            del target[:]
            count = self.rng.choice([0, 1, 2, 3, 5, 200]) if depth < 2 else self.rng.randint(0, 2)
            for _ in range(count):
                if field.type == d.FieldDescriptor.TYPE_MESSAGE:
                    self.fill(target.add(), depth + 1)
                else:
                    target.append(self.value(field, depth))
            return
        if field.type == d.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                return
            sub = getattr(message, field.name)
            sub.SetInParent()
            self.fill(sub, depth + 1)
            return
        setattr(message, field.name, self.value(field, depth))

    def mutate(self, valid: Message, forbidden: Callable[[Message], bool] | None = None) -> Message:
        """A copy of ``valid`` with one to three fields (top level or one level down) replaced."""
        message = type(valid)()
        message.CopyFrom(valid)
        for _ in range(self.rng.randint(1, 3)):
            target = message
            fields = list(target.DESCRIPTOR.fields)
            if not fields:
                return message
            field = self.rng.choice(fields)
            if (field.type == d.FieldDescriptor.TYPE_MESSAGE and not field.is_repeated
                    and target.HasField(field.name) and self.rng.random() < 0.7):
                nested = getattr(target, field.name)
                if nested.DESCRIPTOR.fields:
                    target = nested
                    field = self.rng.choice(list(target.DESCRIPTOR.fields))
            self.set_random(target, field, 1)
        if forbidden is not None and forbidden(message):
            return type(valid)()
        return message

    # ------------------------------------------------------------------ bytes
    def mangle(self, data: bytes) -> bytes:
        """``data`` with bytes flipped, inserted or cut, or random bytes."""
        if not data or self.rng.random() < 0.25:
            return self.rng.randbytes(self.rng.randint(1, 120))
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.random()
            at = self.rng.randrange(len(out)) if out else 0
            if op < 0.4 and out:
                out[at] ^= 1 << self.rng.randrange(8)
            elif op < 0.6:
                out[at:at] = self.rng.choice([b"\xff", b"\x80" * 10, b"\x0a\xff\xff\xff\xff\x0f",
                                              self.rng.randbytes(3), b"\x12\x02\xc3\x28"])
            elif op < 0.8 and out:
                del out[at:]
            else:
                out[at:at] = self.rng.randbytes(self.rng.randint(1, 8))
        if bytes(out) == data:
            out.append(0xFF)
        return bytes(out)


def strings_of(message: Message) -> list[str]:
    """Every string value in ``message`` (recursively), for the no-echo check."""
    found: list[str] = []
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            found.extend(v for kv in value.items() for v in kv if isinstance(v, str))
            continue
        for item in values:
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, Message):
                found.extend(strings_of(item))
    return found
