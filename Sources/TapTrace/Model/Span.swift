/// A 128-bit trace id, as W3C Trace Context and OpenTelemetry define it.
public struct TraceID: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// True when at least one bit is set; the all-zero id is invalid everywhere.
    public var isValid: Bool { high != 0 || low != 0 }

    /// 32 lower-case hex digits.
    public var description: String { HexFormat.hex(high) + HexFormat.hex(low) }

    /// A fresh random id.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> TraceID {
        var id = TraceID(high: generator.next(), low: generator.next())
        if !id.isValid { id.low = 1 }
        return id
    }
}

/// A 64-bit span id.
public struct SpanID: Hashable, Sendable, CustomStringConvertible {
    public var value: UInt64

    public init(_ value: UInt64) { self.value = value }

    public var isValid: Bool { value != 0 }

    /// 16 lower-case hex digits.
    public var description: String { HexFormat.hex(value) }

    /// A fresh random, non-zero id.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> SpanID {
        let v: UInt64 = generator.next()
        return SpanID(v == 0 ? 1 : v)
    }
}

/// The caller's trace context, taken from request metadata.
public struct TraceContext: Hashable, Sendable {
    /// Which header the context came from.
    public enum Format: String, Sendable {
        case w3c = "traceparent"
        case jaeger = "uber-trace-id"
        case b3 = "b3"
    }

    public var traceID: TraceID
    /// The caller's span: the parent of the span the tap records.
    public var parentSpanID: SpanID?
    public var sampled: Bool
    public var format: Format
    /// W3C `tracestate`, kept verbatim.
    public var traceState: String?
    /// Jaeger `uberctx-*` baggage, keyed without the prefix.
    public var baggage: [String: String]

    public init(
        traceID: TraceID,
        parentSpanID: SpanID?,
        sampled: Bool,
        format: Format,
        traceState: String? = nil,
        baggage: [String: String] = [:]
    ) {
        self.traceID = traceID
        self.parentSpanID = parentSpanID
        self.sampled = sampled
        self.format = format
        self.traceState = traceState
        self.baggage = baggage
    }
}

/// A value of a span attribute; the JSON log and OTLP both map these one to one.
public enum AttributeValue: Hashable, Sendable {
    case string(String)
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case stringArray([String])
}

/// One finished span, the unit every sink receives.
public struct Span: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case server, client, `internal`
    }

    public enum StatusCode: String, Sendable {
        case ok, error, unset
    }

    public struct Status: Sendable, Equatable {
        public var code: StatusCode
        public var message: String?

        public init(code: StatusCode, message: String? = nil) {
            self.code = code
            self.message = message
        }

        public static let ok = Status(code: .ok)
    }

    /// A timestamped event inside a span (OpenTelemetry span event).
    public struct Event: Sendable, Equatable {
        public var name: String
        public var timeUnixNano: UInt64
        public var attributes: [String: AttributeValue]

        public init(name: String, timeUnixNano: UInt64, attributes: [String: AttributeValue] = [:]) {
            self.name = name
            self.timeUnixNano = timeUnixNano
            self.attributes = attributes
        }
    }

    public var traceID: TraceID
    public var spanID: SpanID
    public var parentSpanID: SpanID?
    public var name: String
    public var kind: Kind
    public var startTimeUnixNano: UInt64
    public var endTimeUnixNano: UInt64
    public var status: Status
    public var attributes: [String: AttributeValue]
    public var events: [Event]
    /// Whether the caller asked for this trace to be sampled (kept from its context).
    public var sampled: Bool

    public init(
        traceID: TraceID,
        spanID: SpanID,
        parentSpanID: SpanID? = nil,
        name: String,
        kind: Kind,
        startTimeUnixNano: UInt64,
        endTimeUnixNano: UInt64,
        status: Status = .ok,
        attributes: [String: AttributeValue] = [:],
        events: [Event] = [],
        sampled: Bool = true
    ) {
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.name = name
        self.kind = kind
        self.startTimeUnixNano = startTimeUnixNano
        self.endTimeUnixNano = endTimeUnixNano
        self.status = status
        self.attributes = attributes
        self.events = events
        self.sampled = sampled
    }
}

/// Lower-case fixed-width hex formatting without Foundation.
public enum HexFormat {
    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// 16 hex digits for a 64-bit value.
    public static func hex(_ value: UInt64) -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        var v = value
        for i in stride(from: 15, through: 0, by: -1) {
            bytes[i] = digits[Int(v & 0xF)]
            v >>= 4
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
