/// Encodes spans as an OTLP `ExportTraceServiceRequest` in OTLP/JSON (the body of an OTLP/HTTP `application/json`
/// POST to `/v1/traces`).
///
/// Follows the OTLP specification's JSON Protobuf Encoding: lowerCamelCase field names, trace and span ids as hex
/// strings (not base64), enums as integers, 64-bit integers (`int64`, `fixed64`) as decimal strings. Doubles are JSON
/// numbers, except NaN and ±infinity, which proto3 JSON writes as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
/// Attributes are sorted by key, so the same spans always give the same bytes.
public enum OTLPJSONEncoder {
    /// The request body for `spans`.
    public static func encode(_ spans: [Span], resource: OTLPResource) -> [UInt8] {
        var w = JSONWriter(reservingCapacity: 256 + spans.count * 1024)
        w.raw("{\"resourceSpans\":[{\"resource\":{\"attributes\":")
        w.array(resource.attributes) { w, pair in keyValue(pair.key, pair.value, into: &w) }
        w.raw("},\"scopeSpans\":[{\"scope\":{\"name\":")
        w.string(resource.scopeName)
        w.raw(",\"version\":")
        w.string(resource.scopeVersion)
        w.raw("},\"spans\":")
        w.array(spans) { w, span in encodeSpan(span, into: &w) }
        w.raw("}]}]}")
        return w.bytes
    }

    private static func encodeSpan(_ span: Span, into w: inout JSONWriter) {
        w.raw("{\"traceId\":\"")
        w.hex(span.traceID.high)
        w.hex(span.traceID.low)
        w.raw("\",\"spanId\":\"")
        w.hex(span.spanID.value)
        w.raw("\"")
        if let traceState = span.traceState, !traceState.isEmpty {
            w.raw(",\"traceState\":")
            w.string(traceState)
        }
        if let parent = span.parentSpanID, parent.isValid {
            w.raw(",\"parentSpanId\":\"")
            w.hex(parent.value)
            w.raw("\"")
        }
        let flags = OTLPEnums.flags(span)
        if flags != 0 {
            w.raw(",\"flags\":")
            w.decimal(UInt64(flags))
        }
        w.raw(",\"name\":")
        w.string(span.name)
        w.raw(",\"kind\":")
        w.decimal(OTLPEnums.kind(span.kind))
        w.raw(",\"startTimeUnixNano\":")
        w.quotedDecimal(span.startTimeUnixNano)
        w.raw(",\"endTimeUnixNano\":")
        w.quotedDecimal(span.endTimeUnixNano)
        w.raw(",\"attributes\":")
        attributes(span.attributes, into: &w)
        if !span.events.isEmpty {
            w.raw(",\"events\":")
            w.array(span.events) { w, event in
                w.raw("{\"timeUnixNano\":")
                w.quotedDecimal(event.timeUnixNano)
                w.raw(",\"name\":")
                w.string(event.name)
                w.raw(",\"attributes\":")
                attributes(event.attributes, into: &w)
                w.raw("}")
            }
        }
        w.raw(",\"status\":{")
        var first = true
        if let message = span.status.message, !message.isEmpty {
            w.raw("\"message\":")
            w.string(message)
            first = false
        }
        let code = OTLPEnums.statusCode(span.status.code)
        if code != 0 {
            w.raw(first ? "\"code\":" : ",\"code\":")
            w.decimal(code)
        }
        w.raw("}}")
    }

    private static func attributes(_ attributes: SpanAttributes, into w: inout JSONWriter) {
        // In the order the tap set them: OTLP gives attributes no order.
        w.array(attributes.pairs) { w, pair in keyValue(pair.key, pair.value, into: &w) }
    }

    private static func keyValue(_ key: String, _ value: AttributeValue, into w: inout JSONWriter) {
        w.raw("{\"key\":")
        w.string(key)
        w.raw(",\"value\":")
        anyValue(value, into: &w)
        w.raw("}")
    }

    private static func anyValue(_ value: AttributeValue, into w: inout JSONWriter) {
        switch value {
        case .string(let text):
            w.raw("{\"stringValue\":")
            w.string(text)
        case .bool(let flag):
            w.raw(flag ? "{\"boolValue\":true" : "{\"boolValue\":false")
        case .int(let number):
            w.raw("{\"intValue\":\"")
            if number < 0 { w.raw("-") }
            w.decimal(number.magnitude)
            w.raw("\"")
        case .double(let number):
            w.raw("{\"doubleValue\":")
            if number.isNaN {
                w.raw("\"NaN\"")
            } else if number.isInfinite {
                w.raw(number < 0 ? "\"-Infinity\"" : "\"Infinity\"")
            } else {
                // Swift prints the shortest round-tripping form (`0.1`, `1e-07`, `1e+20`), all valid JSON numbers.
                w.raw(number.description)
            }
        case .stringArray(let texts):
            w.raw("{\"arrayValue\":{\"values\":")
            w.array(texts) { w, text in
                w.raw("{\"stringValue\":")
                w.string(text)
                w.raw("}")
            }
            w.raw("}")
        }
        w.raw("}")
    }
}

/// Appends JSON text to a byte array: the few pieces the OTLP/JSON encoder needs.
struct JSONWriter {
    private(set) var bytes: [UInt8] = []
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    init(reservingCapacity capacity: Int) {
        bytes.reserveCapacity(capacity)
    }

    /// Text copied as is: structure and keys, which need no escaping.
    mutating func raw(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    /// `[a,b,...]`, each element written by `element`.
    mutating func array<S: Sequence>(_ elements: S, _ element: (inout JSONWriter, S.Element) -> Void) {
        bytes.append(UInt8(ascii: "["))
        var first = true
        for item in elements {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            element(&self, item)
        }
        bytes.append(UInt8(ascii: "]"))
    }

    /// A JSON string literal (RFC 8259 §7): `"` and `\` escaped, C0 controls as short escapes or `\u00XX`, the rest
    /// copied as UTF-8 (a Swift string is always valid UTF-8).
    mutating func string(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case UInt8(ascii: "\n"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\r"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case UInt8(ascii: "\t"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x00..<0x20:
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0xF)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A decimal integer.
    mutating func decimal(_ number: UInt64) {
        guard number != 0 else {
            bytes.append(UInt8(ascii: "0"))
            return
        }
        let start = bytes.count
        var rest = number
        while rest > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(rest % 10))
            rest /= 10
        }
        bytes[start...].reverse()
    }

    /// A decimal integer in quotes: how proto3 JSON writes 64-bit integers.
    mutating func quotedDecimal(_ number: UInt64) {
        bytes.append(UInt8(ascii: "\""))
        decimal(number)
        bytes.append(UInt8(ascii: "\""))
    }

    /// 16 lower-case hex digits.
    mutating func hex(_ number: UInt64) {
        for shift in stride(from: 60, through: 0, by: -4) {
            bytes.append(Self.hexDigits[Int((number >> UInt64(shift)) & 0xF)])
        }
    }
}
