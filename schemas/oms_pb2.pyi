from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderLine(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price_cents")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price_cents: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price_cents: _Optional[int] = ...) -> None: ...

class PlaceOrder(_message.Message):
    __slots__ = ("customer_id", "lines", "payment_token", "currency")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    payment_token: str
    currency: str
    def __init__(self, customer_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., payment_token: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class CancelOrder(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class OrderCreated(_message.Message):
    __slots__ = ("customer_id", "lines", "amount_cents", "currency", "payment_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    amount_cents: int
    currency: str
    payment_token: str
    def __init__(self, customer_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., amount_cents: _Optional[int] = ..., currency: _Optional[str] = ..., payment_token: _Optional[str] = ...) -> None: ...

class OrderConfirmed(_message.Message):
    __slots__ = ("amount_cents",)
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    amount_cents: int
    def __init__(self, amount_cents: _Optional[int] = ...) -> None: ...

class OrderCancelled(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class CancelRejected(_message.Message):
    __slots__ = ("status", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: str
    reason: str
    def __init__(self, status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class InventoryReserved(_message.Message):
    __slots__ = ("lines", "amount_cents", "currency", "payment_token")
    LINES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    amount_cents: int
    currency: str
    payment_token: str
    def __init__(self, lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., amount_cents: _Optional[int] = ..., currency: _Optional[str] = ..., payment_token: _Optional[str] = ...) -> None: ...

class InventoryRejected(_message.Message):
    __slots__ = ("reason", "skus")
    REASON_FIELD_NUMBER: _ClassVar[int]
    SKUS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    skus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reason: _Optional[str] = ..., skus: _Optional[_Iterable[str]] = ...) -> None: ...

class InventoryCommitted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InventoryReleased(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PaymentCompleted(_message.Message):
    __slots__ = ("charge_id", "amount_cents")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    amount_cents: int
    def __init__(self, charge_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class PaymentFailed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class PaymentRefunded(_message.Message):
    __slots__ = ("charge_id", "amount_cents")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    amount_cents: int
    def __init__(self, charge_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class SagaTimedOut(_message.Message):
    __slots__ = ("deadline_ms",)
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    deadline_ms: int
    def __init__(self, deadline_ms: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("event_id", "order_id", "type", "occurred_at_ms", "producer", "schema_version", "placed_at_ms", "causation_id", "place_order", "cancel_order", "order_created", "order_confirmed", "order_cancelled", "cancel_rejected", "inventory_reserved", "inventory_rejected", "inventory_committed", "inventory_released", "payment_completed", "payment_failed", "payment_refunded", "saga_timed_out")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLACED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PLACE_ORDER_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    ORDER_CREATED_FIELD_NUMBER: _ClassVar[int]
    ORDER_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    ORDER_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REJECTED_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_RESERVED_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_REJECTED_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_RELEASED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FAILED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    SAGA_TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    type: str
    occurred_at_ms: int
    producer: str
    schema_version: int
    placed_at_ms: int
    causation_id: str
    place_order: PlaceOrder
    cancel_order: CancelOrder
    order_created: OrderCreated
    order_confirmed: OrderConfirmed
    order_cancelled: OrderCancelled
    cancel_rejected: CancelRejected
    inventory_reserved: InventoryReserved
    inventory_rejected: InventoryRejected
    inventory_committed: InventoryCommitted
    inventory_released: InventoryReleased
    payment_completed: PaymentCompleted
    payment_failed: PaymentFailed
    payment_refunded: PaymentRefunded
    saga_timed_out: SagaTimedOut
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at_ms: _Optional[int] = ..., producer: _Optional[str] = ..., schema_version: _Optional[int] = ..., placed_at_ms: _Optional[int] = ..., causation_id: _Optional[str] = ..., place_order: _Optional[_Union[PlaceOrder, _Mapping]] = ..., cancel_order: _Optional[_Union[CancelOrder, _Mapping]] = ..., order_created: _Optional[_Union[OrderCreated, _Mapping]] = ..., order_confirmed: _Optional[_Union[OrderConfirmed, _Mapping]] = ..., order_cancelled: _Optional[_Union[OrderCancelled, _Mapping]] = ..., cancel_rejected: _Optional[_Union[CancelRejected, _Mapping]] = ..., inventory_reserved: _Optional[_Union[InventoryReserved, _Mapping]] = ..., inventory_rejected: _Optional[_Union[InventoryRejected, _Mapping]] = ..., inventory_committed: _Optional[_Union[InventoryCommitted, _Mapping]] = ..., inventory_released: _Optional[_Union[InventoryReleased, _Mapping]] = ..., payment_completed: _Optional[_Union[PaymentCompleted, _Mapping]] = ..., payment_failed: _Optional[_Union[PaymentFailed, _Mapping]] = ..., payment_refunded: _Optional[_Union[PaymentRefunded, _Mapping]] = ..., saga_timed_out: _Optional[_Union[SagaTimedOut, _Mapping]] = ...) -> None: ...
