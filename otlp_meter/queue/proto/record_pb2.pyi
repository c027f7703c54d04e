from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeadLetterKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEAD_LETTER_KIND_UNSPECIFIED: _ClassVar[DeadLetterKind]
    DEAD_LETTER_KIND_EVENT: _ClassVar[DeadLetterKind]
    DEAD_LETTER_KIND_OTLP_LOGS: _ClassVar[DeadLetterKind]
    DEAD_LETTER_KIND_OTLP_METRICS: _ClassVar[DeadLetterKind]
DEAD_LETTER_KIND_UNSPECIFIED: DeadLetterKind
DEAD_LETTER_KIND_EVENT: DeadLetterKind
DEAD_LETTER_KIND_OTLP_LOGS: DeadLetterKind
DEAD_LETTER_KIND_OTLP_METRICS: DeadLetterKind

class QueuedEvent(_message.Message):
    __slots__ = ("source", "id", "payload", "enqueued_unix_nano", "attempts")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    source: str
    id: str
    payload: bytes
    enqueued_unix_nano: int
    attempts: int
    def __init__(self, source: _Optional[str] = ..., id: _Optional[str] = ..., payload: _Optional[bytes] = ..., enqueued_unix_nano: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("kind", "source", "id", "payload", "reason", "attempts", "dead_unix_nano", "rule")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    kind: DeadLetterKind
    source: str
    id: str
    payload: bytes
    reason: str
    attempts: int
    dead_unix_nano: int
    rule: str
    def __init__(self, kind: _Optional[_Union[DeadLetterKind, str]] = ..., source: _Optional[str] = ..., id: _Optional[str] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., dead_unix_nano: _Optional[int] = ..., rule: _Optional[str] = ...) -> None: ...
