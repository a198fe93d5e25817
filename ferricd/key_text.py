"""How ferricctl shows keys and values as text, and reads them back: printable UTF-8 as is, \\\\ and \\xNN for the rest."""


class KeyTextError(ValueError):
    """An argument with a backslash that starts no known escape."""


def render_key(data: bytes) -> str:
    """``data`` as copy-pasteable text: printable UTF-8 characters as themselves, ``\\`` as ``\\\\``, every
    other byte (control characters, invalid UTF-8) as ``\\xNN``. ``parse_key`` gives back ``data``."""
    out = []
    for char in data.decode("utf-8", "surrogateescape"):
        if char == "\\":
            out.append("\\\\")
        elif "\udc80" <= char <= "\udcff":  # a byte that is not valid UTF-8
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def parse_key(text: str) -> bytes:
    """The bytes ``text`` (a command-line argument, non-UTF-8 bytes included) stands for; see ``render_key``."""
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    position = 0
    while position < len(raw):
        byte = raw[position]
        if byte != 0x5C:
            out.append(byte)
            position += 1
            continue
        escape = raw[position + 1:position + 4]
        if escape[:1] == b"\\":
            out.append(0x5C)
            position += 2
        elif escape[:1] == b"x" and len(escape) == 3 and all(c in b"0123456789abcdefABCDEF" for c in escape[1:]):
            out.append(int(escape[1:], 16))
            position += 4
        else:
            raise KeyTextError(
                f"{text!r}: a backslash must start \\\\ (a backslash) or \\xNN (a byte in hex), at offset {position}"
            )
    return bytes(out)
