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
        var w = JSONBytes(capacity: 256 + spans.count * 1024)
        w.raw("{\"resourceSpans\":[{\"resource\":{\"attributes\":")
        w.array(resource.attributes) { w, pair in keyValue(pair.key, pair.value, into: &w) }
        w.raw("},\"scopeSpans\":[{\"scope\":{\"name\":")
        w.string(resource.scopeName)
        w.raw(",\"version\":")
        w.string(resource.scopeVersion)
        w.raw("},\"spans\":")
        w.array(spans) { w, span in encodeSpan(span, into: &w) }
        w.raw("}]}]}")
        return w.array
    }

    private static func encodeSpan(_ span: Span, into w: inout JSONBytes) {
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
            w.unsigned(UInt64(flags))
        }
        w.raw(",\"name\":")
        w.string(span.name)
        w.raw(",\"kind\":")
        w.unsigned(OTLPEnums.kind(span.kind))
        w.raw(",\"startTimeUnixNano\":")
        w.quotedUnsigned(span.startTimeUnixNano)
        w.raw(",\"endTimeUnixNano\":")
        w.quotedUnsigned(span.endTimeUnixNano)
        w.raw(",\"attributes\":")
        attributes(span.attributes, into: &w)
        if !span.events.isEmpty {
            w.raw(",\"events\":")
            w.array(span.events) { w, event in
                w.raw("{\"timeUnixNano\":")
                w.quotedUnsigned(event.timeUnixNano)
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
            w.unsigned(code)
        }
        w.raw("}}")
    }

    private static func attributes(_ attributes: SpanAttributes, into w: inout JSONBytes) {
        // In the order the tap set them: OTLP gives attributes no order.
        w.array(attributes.pairs) { w, pair in keyValue(pair.key, pair.value, into: &w) }
    }

    private static func keyValue(_ key: String, _ value: AttributeValue, into w: inout JSONBytes) {
        w.raw("{\"key\":")
        w.string(key)
        w.raw(",\"value\":")
        anyValue(value, into: &w)
        w.raw("}")
    }

    private static func anyValue(_ value: AttributeValue, into w: inout JSONBytes) {
        switch value {
        case .string(let text):
            w.raw("{\"stringValue\":")
            w.string(text)
        case .bool(let flag):
            w.raw(flag ? "{\"boolValue\":true" : "{\"boolValue\":false")
        case .int(let number):
            w.raw("{\"intValue\":\"")
            w.signed(number)
            w.raw("\"")
        case .double(let number):
            w.raw("{\"doubleValue\":")
            w.double(number)
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
