"""A protoc plugin writing the TypeScript types of the bridge's JSON frames, for ``buf generate``.

The web client must not drift from ``proto/``: this plugin reads buf's CodeGeneratorRequest from
stdin and writes ``frames.ts`` (in a CodeGeneratorResponse on stdout) describing the JSON mapping
the bridge uses, so the type checker catches a client that no longer matches the schema:

* one frame per event; ``type`` is ``"ai:" + <oneof field name>`` of ``ClientEvent`` (client →
  server) or ``ServerEvent`` (server → client);
* every other key is the field's protobuf ``json_name`` (``request_id`` → ``requestId``);
* enum values are lowercase strings without the enum's UPPER_SNAKE prefix
  (``ERROR_CODE_RATE_LIMITED`` → ``"rate_limited"``); the ``*_UNSPECIFIED`` value is never sent;
* server → client: plain scalars are always present; ``optional`` scalars, message fields,
  fields of a real oneof and enum fields (their ``*_UNSPECIFIED`` zero value is never sent, so
  the key is left out) may be absent; client → server: every key but ``type`` and ``requestId``
  is optional;
* 32-bit integers, floats and doubles → ``number``, bool → ``boolean``, string → ``string``,
  repeated → array, message → interface under the same rules;
* ``aistream.v1.Json`` (a JSON value carried as its text on the gRPC hop) → ``JsonValue``: in
  the frames it is the value itself;
* a nested message used by frames of both directions (``ToolCall``: sent back in the next
  request's history) gets one interface, under the server → client rules (every plain scalar
  present), which is what a client echoing it sends.

It emits an interface per frame (``GenerateFrame``, ``TokenFrame`` …) and per nested message, a
string-literal union and a value array per enum, the ``ClientFrame`` / ``ServerFrame`` unions
discriminated on ``type`` and arrays of the valid ``type`` strings. Anything the mapping does not
define (64-bit integers, bytes, maps, a nested message used in both directions) is refused with
an error rather than guessed. Nothing is fetched; only the request's descriptors are read.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

OUTPUT = "frames.ts"
CLIENT_EVENT = "ClientEvent"
SERVER_EVENT = "ServerEvent"
TYPE_PREFIX = "ai:"

FieldProto = descriptor_pb2.FieldDescriptorProto

TS_SCALARS: dict[int, str] = {
    FieldProto.TYPE_STRING: "string",
    FieldProto.TYPE_BOOL: "boolean",
    FieldProto.TYPE_DOUBLE: "number",
    FieldProto.TYPE_FLOAT: "number",
    FieldProto.TYPE_INT32: "number",
    FieldProto.TYPE_UINT32: "number",
    FieldProto.TYPE_SINT32: "number",
    FieldProto.TYPE_FIXED32: "number",
    FieldProto.TYPE_SFIXED32: "number",
}

# Messages whose frame mapping is a plain JSON value, and the TypeScript type that says so.
JSON_TYPES: dict[str, str] = {".aistream.v1.Json": "JsonValue"}
JSON_TYPE_DECLARATIONS = [
    "/** Any JSON value (aistream.v1.Json: its text on the gRPC hop, the value in frames). */",
    "export type JsonValue =",
    "  | null",
    "  | boolean",
    "  | number",
    "  | string",
    "  | JsonValue[]",
    "  | { [key: string]: JsonValue };",
]

# SourceCodeInfo path components (descriptor.proto field numbers).
_MESSAGE_TYPE = 4  # FileDescriptorProto.message_type
_ENUM_TYPE = 5  # FileDescriptorProto.enum_type
_FIELD = 2  # DescriptorProto.field
_NESTED_TYPE = 3  # DescriptorProto.nested_type
_NESTED_ENUM = 4  # DescriptorProto.enum_type
_ENUM_VALUE = 2  # EnumDescriptorProto.value


class PluginError(Exception):
    """The schema uses something the JSON frame mapping does not define."""


@dataclass
class Message:
    """One message of the request, with its proto comments."""

    full_name: str
    proto: descriptor_pb2.DescriptorProto
    comment: str
    field_comments: list[str]


@dataclass
class Enum:
    """One enum of the request, with its proto comments."""

    full_name: str
    proto: descriptor_pb2.EnumDescriptorProto
    comment: str


@dataclass
class Index:
    """Every message and enum of the request by full name (``.pkg.Name``)."""

    messages: dict[str, Message] = field(default_factory=dict)
    enums: dict[str, Enum] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # full name → defining file
    ts_names: dict[str, str] = field(default_factory=dict)  # full name → TypeScript name

    def ts_name(self, full_name: str) -> str:
        """The TypeScript name: the proto name, with any nesting joined by ``_``."""
        return self.ts_names[full_name]


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comments of the file by SourceCodeInfo path."""
    return {
        tuple(loc.path): _dedent(loc.leading_comments)
        for loc in file.source_code_info.location
        if loc.leading_comments.strip()
    }


def _dedent(comment: str) -> str:
    """A ``//`` comment's text without the one space after each ``//``."""
    return "\n".join(line.removeprefix(" ").rstrip() for line in comment.splitlines()).strip()


def build_index(files: list[descriptor_pb2.FileDescriptorProto]) -> Index:
    """Index every message and enum of the request's files, nested ones included."""
    index = Index()
    for file in files:
        _FileIndexer(index, file).run()
    return index


class _FileIndexer:
    """Adds one file's messages and enums (with their comments) to an Index."""

    def __init__(self, index: Index, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.index = index
        self.file = file
        self.comments = _comments(file)
        self.package = f".{file.package}" if file.package else ""

    def run(self) -> None:
        for i, msg in enumerate(self.file.message_type):
            self.add_message(msg, self.package, (_MESSAGE_TYPE, i))
        for i, enum in enumerate(self.file.enum_type):
            self.add_enum(enum, self.package, (_ENUM_TYPE, i))

    def register(self, name: str) -> None:
        self.index.source[name] = self.file.name
        self.index.ts_names[name] = name.removeprefix(self.package + ".").replace(".", "_")

    def add_enum(
        self, enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]
    ) -> None:
        name = f"{scope}.{enum.name}"
        self.index.enums[name] = Enum(name, enum, self.comments.get(path, ""))
        self.register(name)

    def add_message(
        self, msg: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]
    ) -> None:
        name = f"{scope}.{msg.name}"
        field_comments = [self.comments.get((*path, _FIELD, i), "") for i in range(len(msg.field))]
        self.index.messages[name] = Message(name, msg, self.comments.get(path, ""), field_comments)
        self.register(name)
        for i, nested in enumerate(msg.nested_type):
            self.add_message(nested, name, (*path, _NESTED_TYPE, i))
        for i, enum in enumerate(msg.enum_type):
            self.add_enum(enum, name, (*path, _NESTED_ENUM, i))


def enum_prefix(name: str) -> str:
    """The UPPER_SNAKE prefix of an enum's values: ``FinishReason`` → ``FINISH_REASON_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"


def enum_values(enum: Enum) -> list[tuple[str, str]]:
    """The JSON strings of an enum's values, ``*_UNSPECIFIED`` left out, with their comments."""
    prefix = enum_prefix(enum.proto.name)
    values = []
    for value in enum.proto.value:
        if not value.name.startswith(prefix):
            raise PluginError(f"{enum.full_name[1:]}.{value.name} lacks the prefix {prefix}")
        if value.number == 0:
            continue  # *_UNSPECIFIED: never sent
        values.append((value.name.removeprefix(prefix).lower(), value.name))
    return values


def json_name(f: descriptor_pb2.FieldDescriptorProto) -> str:
    """The field's JSON key: its ``json_name`` (protoc always fills it in for plugins)."""
    if f.json_name:
        return f.json_name
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def doc(comment: str, indent: str = "") -> list[str]:
    """A JSDoc block of a proto comment (empty when there is none)."""
    if not comment:
        return []
    lines = [line.rstrip() for line in comment.replace("*/", "*\\/").splitlines()]
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [
        f"{indent}/**",
        *(f"{indent} *{' ' + ln if ln else ''}" for ln in lines),
        f"{indent} */",
    ]


def wrap(head: str, items: list[str], sep: str, tail: str, width: int = 100) -> list[str]:
    """``head item<sep> item tail`` on one line when it fits, else one item per line.

    A union (``sep`` ``" |"``) puts its separator before each item, a list (``","``) after.
    """
    union = sep.strip() == "|"
    joiner = " | " if union else f"{sep} "
    opening = head if head.endswith("[") else head + " "
    one_line = f"{opening}{joiner.join(items)}{tail}"
    if len(one_line) <= width:
        return [one_line]
    if union:
        return [head, *(f"  | {item}" for item in items[:-1]), f"  | {items[-1]}{tail}"]
    return [head, *(f"  {item}," for item in items), tail]


class Generator:
    """Collects the TypeScript for one request's frames."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.direction: dict[str, str] = {}  # nested message full name → "client" | "server"
        self.enums_used: list[str] = []
        self.nested_order: list[str] = []

    # --- walking the schema ----------------------------------------------------------------

    def events(self, full_name: str) -> list[tuple[str, str]]:
        """The (frame type, message full name) pairs of an event message's oneof."""
        msg = self.index.messages[full_name].proto
        pairs = []
        for f in msg.field:
            if not f.HasField("oneof_index") or f.type != FieldProto.TYPE_MESSAGE:
                raise PluginError(f"{full_name[1:]}.{f.name} must be a message in the event oneof")
            pairs.append((TYPE_PREFIX + f.name, f.type_name))
        return pairs

    def visit(self, full_name: str, direction: str) -> None:
        """Record the nested messages and enums a frame message reaches, in first-use order."""
        for f in self.index.messages[full_name].proto.field:
            if f.type == FieldProto.TYPE_MESSAGE:
                target = f.type_name
                if target in JSON_TYPES:
                    continue
                if target not in self.index.messages:
                    raise PluginError(f"{full_name[1:]}.{f.name}: unknown type {target[1:]}")
                if self.index.messages[target].proto.options.map_entry:
                    raise PluginError(f"{full_name[1:]}.{f.name}: maps are not in the JSON mapping")
                seen = self.direction.get(target)
                if seen is None:
                    self.direction[target] = direction
                    self.nested_order.append(target)
                    self.visit(target, direction)
                elif seen != direction and seen != "both":
                    self.direction[target] = "both"  # one interface, server rules (module doc)
                    self.visit(target, "both")
            elif f.type == FieldProto.TYPE_ENUM:
                if f.type_name not in self.enums_used:
                    self.enums_used.append(f.type_name)
            elif f.type not in TS_SCALARS:
                kind = FieldProto.Type.Name(f.type).removeprefix("TYPE_").lower()
                raise PluginError(f"{full_name[1:]}.{f.name}: {kind} is not in the JSON mapping")

    # --- rendering -------------------------------------------------------------------------

    def ts_type(self, f: descriptor_pb2.FieldDescriptorProto) -> str:
        """The TypeScript type of one field's value."""
        if f.type_name in JSON_TYPES:
            base = JSON_TYPES[f.type_name]
        elif f.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            base = self.index.ts_name(f.type_name)
        else:
            base = TS_SCALARS[f.type]
        return f"{base}[]" if f.label == FieldProto.LABEL_REPEATED else base

    def optional(self, f: descriptor_pb2.FieldDescriptorProto, direction: str) -> bool:
        """Whether the key may be absent from a frame going this way."""
        if direction == "client":
            return True
        singular = f.label != FieldProto.LABEL_REPEATED
        in_real_oneof = f.HasField("oneof_index") and not f.proto3_optional
        return (
            f.proto3_optional
            or in_real_oneof
            or (singular and f.type == FieldProto.TYPE_MESSAGE)
            # The zero value of an enum is *_UNSPECIFIED, which is never sent: no key at all.
            or (singular and f.type == FieldProto.TYPE_ENUM)
        )

    def interface(
        self, name: str, full_name: str, direction: str, frame_type: str | None
    ) -> list[str]:
        """One interface: a frame (with ``type``) or a nested message."""
        msg = self.index.messages[full_name]
        arrow = {
            "client": "client → server",
            "server": "server → client",
            "both": "both ways; every key present, as the server sends it",
        }[direction]
        comment = msg.comment + ("\n\n" if msg.comment else "") + f"({arrow})"
        lines = [*doc(comment), f"export interface {name} {{"]
        if frame_type is not None:
            lines.append(f'  type: "{frame_type}";')
        for f, f_comment in zip(msg.proto.field, msg.field_comments, strict=True):
            key = json_name(f)
            # The request id names the frame: required both ways.
            optional = self.optional(f, direction) and not (
                frame_type is not None and key == "requestId"
            )
            lines.extend(doc(f_comment, "  "))
            lines.append(f"  {key}{'?' if optional else ''}: {self.ts_type(f)};")
        lines.append("}")
        return lines

    def enum(self, full_name: str) -> list[str]:
        """A string-literal union and the array of its values."""
        enum = self.index.enums[full_name]
        name = self.index.ts_name(full_name)
        values = enum_values(enum)
        const = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_VALUES"
        mapping = "\n".join(f'{proto} → "{value}"' for value, proto in values)
        literals = [f'"{value}"' for value, _ in values] or ["never"]
        return [
            *doc(enum.comment + ("\n\n" if enum.comment else "") + mapping),
            *wrap(f"export type {name} =", literals, " |", ";"),
            f"/** Every {name} the JSON frames may carry. */",
            *wrap(
                f"export const {const} = [",
                [f'"{value}"' for value, _ in values],
                ",",
                f"] as const satisfies readonly {name}[];",
            ),
        ]

    def union(self, side: str, frames: list[tuple[str, str]]) -> list[str]:
        """The discriminated union of one direction's frames and its array of type strings."""
        upper = side.upper()
        who = "client → server" if side == "Client" else "server → client"
        return [
            f"/** Every {who} frame, discriminated on `type`. */",
            *wrap(
                f"export type {side}Frame =",
                [f"{self.index.ts_name(m)}Frame" for _, m in frames],
                " |",
                ";",
            ),
            f"/** The `type` of a {side}Frame. */",
            f'export type {side}FrameType = {side}Frame["type"];',
            f"/** Every valid {side}Frame `type`, for parsing. */",
            *wrap(
                f"export const {upper}_FRAME_TYPES = [",
                [f'"{t}"' for t, _ in frames],
                ",",
                f"] as const satisfies readonly {side}FrameType[];",
            ),
        ]

    def render(self, client: str, server: str) -> str:
        """The whole ``frames.ts``."""
        client_frames = self.events(client)
        server_frames = self.events(server)
        for _, m in client_frames:
            self.visit(m, "client")
        for _, m in server_frames:
            self.visit(m, "server")
        names = [self.index.ts_name(m) for _, m in client_frames + server_frames]
        names += [self.index.ts_name(m) for m in self.nested_order]
        names += [self.index.ts_name(e) for e in self.enums_used]
        if len(set(names)) != len(names):
            raise PluginError(f"two generated types would share a name: {sorted(names)}")
        sources = sorted({self.index.source[client], self.index.source[server]})
        out = [
            "// Code generated by tools/protoc_gen_ts_frames.py from proto/. DO NOT EDIT.",
            "// Regenerate with scripts/generate.sh (buf generate).",
            f"// source: {', '.join(sources)}",
            "//",
            "// The JSON text frames the bridge exchanges with browsers over the WebSocket:",
            '// one frame per ClientEvent / ServerEvent; "type" is "ai:" + the oneof field name,',
            "// every other key the field's JSON name, enum values lowercase strings without",
            "// the enum's prefix (the *_UNSPECIFIED value is never sent).",
            "// Server → client: plain scalars are always present; optional scalars, messages",
            "// and enums (whose *_UNSPECIFIED zero value is never sent) may be absent.",
            "// Client → server: every key but type and requestId is optional.",
            "",
            "// --- JSON values " + "-" * 80,
            "",
            *JSON_TYPE_DECLARATIONS,
            "",
            "// --- enums " + "-" * 80,
        ]
        for e in self.enums_used:
            out += ["", *self.enum(e)]
        out += ["", "// --- nested messages " + "-" * 69]
        for m in self.nested_order:
            out += ["", *self.interface(self.index.ts_name(m), m, self.direction[m], None)]
        out += ["", "// --- client → server frames " + "-" * 62]
        for t, m in client_frames:
            out += ["", *self.interface(f"{self.index.ts_name(m)}Frame", m, "client", t)]
        out += ["", *self.union("Client", client_frames)]
        out += ["", "// --- server → client frames " + "-" * 62]
        for t, m in server_frames:
            out += ["", *self.interface(f"{self.index.ts_name(m)}Frame", m, "server", t)]
        out += ["", *self.union("Server", server_frames), ""]
        return "\n".join(line[:100] if line.startswith("// ---") else line for line in out)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Write frames.ts for the ClientEvent / ServerEvent among the files to generate."""
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    targets = [f for f in request.proto_file if f.name in request.file_to_generate]
    index = build_index(list(request.proto_file))
    ends = {}
    for file in targets:
        package = f".{file.package}" if file.package else ""
        for msg in file.message_type:
            if msg.name in (CLIENT_EVENT, SERVER_EVENT):
                ends[msg.name] = f"{package}.{msg.name}"
    if not ends:
        return response  # nothing of ours in this batch of files
    if len(ends) != 2:
        response.error = (
            f"{OUTPUT}: need both {CLIENT_EVENT} and {SERVER_EVENT}, found {sorted(ends)}"
        )
        return response
    try:
        content = Generator(index).render(ends[CLIENT_EVENT], ends[SERVER_EVENT])
    except PluginError as exc:
        response.error = f"{OUTPUT}: {exc}"
        return response
    response.file.add(name=OUTPUT, content=content)
    return response


def main() -> None:
    """Plugin entry point: request on stdin, response on stdout."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
